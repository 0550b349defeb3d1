"""The report against direct computations: a synthetic store (real rows, crafted per-record predictions) whose
every number is recomputed here with ftgen.stats; an unfinished study; flags; grouping by the stored task
definition; scores recomputed from predictions; CSV columns; markdown / LaTeX / HTML / terminal output. The
claims have their own file (test_report_claims.py); the report of a real study is in test_study.py (slow)."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_helpers import SyntheticStudy, generation_predictions, with_accuracy

from ftgen import stats
from ftgen.report import StudyView, Table, TestSet, write_report
from ftgen.report.table import Setting, max_delta
from ftgen.report.text import CELL_HEAD, est, num
from helpers import run_cli

SENT = ["positive", "negative"]
SETS = [("sentiment", "amazon", (0, 2)), ("sentiment", "amazonfood", (0, 2)), ("sentiment", "sst2", (0, 2))]
SETS += [("question", "socialqa", (0, 1))]
ACCURACY = {  # model -> correct records of 40 on (set, shots)
    "base": {"amazon": 20, "amazonfood": 24, "sst2": 22},
    "ft": {"amazon": 36, "amazonfood": 33, "sst2": 30},
    "fticl": {"amazon": 30, "amazonfood": 35, "sst2": 31},
}
WORDS = "what did the person want to do next after going to the store".split()


def _outputs(model: str, shots: int) -> tuple[list[str], list[str]]:
    """Generated questions: the gold with a few words dropped (more for the base), and empty outputs."""
    golds = [" ".join(WORDS[i % 5 : i % 5 + 7]) for i in range(40)]
    drop = {"base": 3, "ft": 1, "fticl": 2}[model] + shots
    outs = [" ".join(g.split()[: 7 - drop]) if i % 9 else "" for i, g in enumerate(golds)]
    return golds, outs


def predictions(model: str, test_set: str, shots: int, seed: int = 0) -> list[dict]:
    if test_set == "socialqa":
        return generation_predictions(*_outputs(model, shots))
    return with_accuracy(SENT, 40, ACCURACY[model][test_set] + (3 if shots else 0) - seed, hash((test_set, shots)) % 97)


def build(out, *, pending: set = frozenset(), extra=None, yaml: str = "name: synthetic\n") -> dict:
    """sentiment/amazon FT and FTICL (n=32), their cells and the base model's; `pending`: (model, set, shots)
    cells left unrun. Returns the runs."""
    s = SyntheticStudy()
    drift = {"mean_abs_change": 8e-5, "rel_change": 0.01, "kl_mean": 0.2}
    runs = {"base": None, "ft": s.run("rft", "sentiment", 32, "ft", drift=drift)}
    runs["fticl"] = s.run("rfticl", "sentiment", 32, "fticl", drift=drift | {"mean_abs_change": 7e-5})
    for name, run in runs.items():
        for task, test_set, shots in SETS:
            for k in shots:
                todo = (name, test_set, k) in pending
                s.cell(run, task, test_set, k, None if todo else predictions(name, test_set, k), dropped=2)
    if extra:
        extra(s, runs)
    s.write(out, yaml)
    return runs


def records(model: str, test_set: str, shots: int) -> stats.Records:
    p = predictions(model, test_set, shots)
    kind, metric = ("generation", "rouge_l") if test_set == "socialqa" else ("classification", "accuracy")
    return stats.cell_records(kind, metric, [r["id"] for r in p], [r["prediction"] for r in p], [r["gold"] for r in p])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    build(out)
    return out


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return folder, write_report(study, folder)


def _csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _cell_row(rows, method, test_set, shots):
    return next(r for r in rows if r["method"] == method and r["test_set"] == test_set and r["shots"] == str(shots))


# ---------------------------------------------------------------- numbers equal direct computations


def test_cells_csv_equals_stats_computed_directly(report):
    folder, _ = report
    rows = _csv(folder / "cells.csv")
    assert list(rows[0]) == CELL_HEAD
    assert len(rows) == 3 * 8  # base, ft, fticl x 4 sets x 2 settings
    for method in ("ft", "fticl"):
        for task, test_set, shots in SETS:
            for k in shots:
                row = _cell_row(rows, method, test_set, k)
                metric = "accuracy" if task == "sentiment" else "rouge_l"
                score = stats.score_interval(metric, records(method, test_set, k))
                delta = stats.paired_difference(records(method, test_set, k), records("base", test_set, k))
                got = [float(row[c]) for c in ("score", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high")]
                want = [score.estimate, score.low, score.high, delta.estimate, delta.low, delta.high]
                assert got == pytest.approx(want, abs=1e-4), (method, test_set, k)
                assert float(row["delta_p"]) == pytest.approx(delta.p_value, abs=1e-4)
                assert (row["n"], row["n_dropped"], row["status"]) == ("40", "2", "done")
    assert _cell_row(rows, "ft", "amazonfood", 0)["group"] == "ID"  # the paper's Table 1: amazonfood in-domain
    assert _cell_row(rows, "ft", "sst2", 0)["group"] == "OOD"
    assert _cell_row(rows, "ft", "socialqa", 0)["group"] == "cross"


def test_the_export_carries_the_reports_intervals(tmp_path):
    """(test_study_outputs.py validates a real study's export, these fields included, against its schema)"""
    from ftgen.export import build_export
    from ftgen.store import Store

    build(tmp_path / "out", pending={("fticl", "sst2", 0)})
    with Store.open_reader(tmp_path / "out") as store:
        results, _ = build_export(store)
    cells = {(c["method"], c["test_set"], c["shots"]): c for c in results["cells"]}
    for method in ("base", "ft", "fticl"):
        for task, test_set, shots in SETS:
            for k in shots:
                c = cells[(method, test_set, k)]
                got = [c[f] for f in ("ci_low", "ci_high", "delta_ci_low", "delta_ci_high")]
                if (method, test_set, k) == ("fticl", "sst2", 0):  # not run yet
                    assert got == [None] * 4
                    continue
                metric = "accuracy" if task == "sentiment" else "rouge_l"
                score = stats.score_interval(metric, records(method, test_set, k))
                want = [score.low, score.high]
                if method == "base":
                    want += [None, None]
                else:
                    delta = stats.paired_difference(records(method, test_set, k), records("base", test_set, k))
                    want += [delta.low, delta.high]
                assert got == pytest.approx(want, abs=1e-9), (method, test_set, k)


def test_group_means_headline_and_ft_vs_fticl_equal_stats_computed_directly(report):
    folder, r = report
    t: Table = r["table"]
    ft, fticl = (next(m for m in t.models if m.method == name) for name in ("ft", "fticl"))
    zero = Setting(0, 0)
    ids = [("amazon", 0), ("amazonfood", 0)]
    want = stats.group_difference([(records("ft", s, k), records("base", s, k)) for s, k in ids])
    assert t.group_means[(ft, zero, "ID")] == want
    pair = stats.group_difference([(records("fticl", s, k), records("ft", s, k)) for s, k in ids])
    assert t.pair_groups[(t.pairs[0], zero, "ID")] == pair
    headline = stats.headline("FTICL − FT", [(records("fticl", s, k), records("ft", s, k)) for s, k in ids])
    assert t.headlines[(zero, "ID")][0] == headline
    md = (folder / "main_table.md").read_text()
    assert f"| 0-shot | in-domain | {stats.format_interval(headline.difference)}: {headline.wins} W" in md
    ft_amazon = stats.format_cell(
        stats.score_interval("accuracy", records("ft", "amazon", 0)),
        stats.paired_difference(records("ft", "amazon", 0), records("base", "amazon", 0)),
    )
    assert f"| n=32 ft | {ft_amazon}" in md
    assert est(want) in md and f"{est(pair)} (p={pair.p_value:.2g})" in (folder / "ft_vs_fticl.md").read_text()
    main = _csv(folder / "main_table.csv")
    row = next(m for m in main if m["method"] == "ft" and m["setting"] == "0-shot")
    assert float(row["delta ID"]) == pytest.approx(want.estimate, abs=1e-4)
    assert float(row["delta ID ci_low"]) == pytest.approx(want.low, abs=1e-4)
    pairs = _csv(folder / "ft_vs_fticl.csv")
    mean_id = next(p for p in pairs if p["test_set"] == "mean ID" and p["setting"] == "0-shot")
    assert float(mean_id["delta"]) == pytest.approx(pair.estimate, abs=1e-4)


def test_a_rerun_writes_the_same_numbers(study, report, tmp_path):
    folder, _ = report
    write_report(study, tmp_path, figures=False)
    for name in ("cells.csv", "main_table.csv", "ft_vs_fticl.csv", "claims.md", "main_table.tex"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name


def test_generation_cells_are_scored_by_rouge_l_without_stemming_from_the_predictions(report):
    folder, r = report
    golds, outs = _outputs("ft", 0)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    want = sum(100 * scorer.score(g, o.strip()).get("rougeL").fmeasure for g, o in zip(golds, outs, strict=True)) / 40
    row = _cell_row(_csv(folder / "cells.csv"), "ft", "socialqa", 0)
    assert float(row["score"]) == pytest.approx(want, abs=1e-4)
    assert float(row["empty_share"]) == pytest.approx(100 * sum(not o for o in outs) / 40, abs=1e-4)
    assert "without stemming" in (folder / "main_table.md").read_text()


# ---------------------------------------------------------------- groups: the task definition stored with the run


TABLE_1 = {  # the paper's Table 1 (snli: out-of-domain, not in the table)
    "summary": {"ID": ["xsum", "xlsum"], "OOD": ["cnn", "pdfs"]},
    "question": {"ID": ["socialqa"], "OOD": ["sciqa", "tweetqa"]},
    "sentiment": {"ID": ["amazon", "amazonfood"], "OOD": ["sst2", "yelp"]},
    "detection": {"ID": ["paws"], "OOD": ["qqp", "stsb"]},
    "inference": {"ID": ["multinli", "multinli2"], "OOD": ["gptnli", "rte", "snli"]},
}


def test_groups_follow_the_papers_table_1_for_all_five_tasks(paper_data, tmp_path):
    """One run per paper task, one cell per test file of the paper data: in-domain / out-of-domain / cross-task."""
    from ftgen.data import scan_task_files
    from ftgen.tasks import load_task

    s = SyntheticStudy()
    files = {name: sorted(scan_task_files(paper_data, load_task(name)).test) for name in TABLE_1}
    runs = {name: s.run(f"r-{name}", name, 8, "ft") for name in TABLE_1}
    for name, sets in files.items():
        assert sorted(TABLE_1[name]["ID"] + TABLE_1[name]["OOD"]) == sets  # every test file is in the table
        for test_set in sets:
            for run in [None, *runs.values()]:
                s.cell(run, name, test_set, 0, None)
    s.write(tmp_path)
    t = Table(StudyView(tmp_path))
    for model in (m for m in t.models if not m.is_base):
        assert [runs[model.train_task]["train_set"]] == [TABLE_1[model.train_task]["ID"][0]]  # the default
        for test in t.test_sets:
            want = (
                "cross"
                if test.task != model.train_task
                else next(g for g, sets in TABLE_1[test.task].items() if test.name in sets)
            )
            assert t.group_of(model, test) == want, (model.train_task, test)
        ids = [ts.name for g, ts in t.columns(model.train_task) if g == "ID"]
        assert ids == TABLE_1[model.train_task]["ID"]  # in-domain columns first, in the task's order


def test_a_run_is_grouped_by_the_definition_stored_with_it(tmp_path):
    """An older store: its run's task definition named one in-domain set, as a string; it stays so."""

    def old(s, runs):
        old_run = s.run("rold", "sentiment", 16, "ft", in_domain="amazon")
        s.cell(old_run, "sentiment", "amazonfood", 0, predictions("ft", "amazonfood", 0))

    build(tmp_path, extra=old)
    t = Table(StudyView(tmp_path))
    by_size = {m.size: m for m in t.models if not m.is_base}
    food = TestSet("sentiment", "amazonfood")
    assert (t.group_of(by_size[32], food), t.group_of(by_size[16], food)) == ("ID", "OOD")


# ---------------------------------------------------------------- unfinished studies


def _unfinished(tmp_path):
    """FTICL's sst2 0-shot not run yet; a question FT run with no FTICL partner; a run not trained yet."""

    def more(s, runs):
        lone = s.run("rq", "question", 32, "ft")
        waiting = s.run("rwait", "sentiment", 64, "ft", done=False)
        for task, test_set, shots in SETS:
            for k in shots:
                s.cell(lone, task, test_set, k, predictions("ft", test_set, k))
                s.cell(waiting, task, test_set, k, None)

    runs = build(tmp_path / "out", pending={("fticl", "sst2", 0)}, extra=more)
    return runs, write_report(tmp_path / "out", tmp_path / "report", figures=False)


def test_an_unfinished_study_says_so_at_the_top_of_every_output(tmp_path):
    _, r = _unfinished(tmp_path)
    banner = "INCOMPLETE: 31 of 40 cells done (0 failed, 9 not run yet); 3 of 4 training runs done"
    folder = tmp_path / "report"
    assert (folder / "main_table.md").read_text().splitlines()[2].startswith(f"**{banner}")
    for name in ("ft_vs_fticl.md", "claims.md", "drift.md"):
        assert (folder / name).read_text().startswith(f"**{banner}"), name
    page = (folder / "report.html").read_text()
    assert page.index(banner) < page.index("id='headline'")
    assert banner in (folder / "main_table.tex").read_text().splitlines()[0]
    assert json.loads((folder / "provenance.json").read_text())["status"].startswith(banner)
    assert banner in " ".join(_render(r["terminal"], 120).split())
    assert all(c.evidence.endswith("(the study is not finished)") for c in r["claims"])
    statuses = {row["status"] for row in _csv(folder / "cells.csv")}
    assert statuses == {"done", "pending"}


def test_means_over_missing_cells_are_blank_and_unmatched_runs_stay_out(tmp_path):
    runs, r = _unfinished(tmp_path)
    t: Table = r["table"]
    zero = Setting(0, 0)
    fticl = next(m for m in t.models if m.method == "fticl")
    lone = next(m for m in t.models if m.train_task == "question")
    assert t.group_means[(fticl, zero, "OOD")] is None  # its sst2 0-shot cell is pending
    assert t.group_means[(fticl, Setting(1, 0), "OOD")] is not None
    assert len(t.pairs) == 1 and t.pairs[0].fticl == fticl and lone not in (t.pairs[0].ft, t.pairs[0].fticl)
    assert t.pair_groups[(t.pairs[0], zero, "OOD")] is None
    ft_vs_base = t.headlines[(zero, "cross")][1]  # over the matched FT run only: not the lone question run
    assert ft_vs_base.n_cells == 1
    assert t.headlines[(zero, "OOD")][0].difference is None  # no complete matched OOD group
    md = (tmp_path / "report" / "main_table.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| n=32 fticl | ") and "pending" in line)
    assert row.split(" | ")[-2] == ""  # Δ OOD blank
    assert "| 0-shot | out-of-domain | no complete cells |" in md


# ---------------------------------------------------------------- flags


def test_a_constant_predictor_is_flagged_in_every_table(tmp_path):
    def constant(s, runs):
        run = s.run("rconst", "sentiment", 16, "ft")
        for task, test_set, shots in SETS:
            for k in shots:
                p = predictions("ft", test_set, k)
                if test_set == "amazon":
                    p = [{**x, "prediction": "negative"} for x in p]
                s.cell(run, task, test_set, k, p)

    build(tmp_path / "out", extra=constant)
    r = write_report(tmp_path / "out", tmp_path / "report", figures=False)
    folder = tmp_path / "report"
    cell = r["table"].cell(
        next(m for m in r["table"].models if m.size == 16), TestSet("sentiment", "amazon"), Setting(0, 0)
    )
    assert cell.distrust == ["constant predictions ('negative')"]
    assert cell.parts[0].flags.majority_rate == 50.0 and cell.parts[0].flags.pred_share == {
        "positive": 0,
        "negative": 100,
    }
    md = (folder / "main_table.md").read_text()
    assert re.search(r"\| n=16 ft \| 50\.0 ±[\d.]+ \([+-][\d.]+ ±[\d.]+\)\*?† \|", md)
    distrust = md.split("## Cells to distrust")[1].split("##")[0]
    assert "| sentiment n=16 ft | sentiment/amazon | 0-shot |" in distrust and "50.0 (positive)" in distrust
    assert "positive 0%, negative 100%" in distrust
    row = next(x for x in _csv(folder / "cells.csv") if x["size"] == "16" and x["test_set"] == "amazon")
    assert row["flags"] == "constant predictions ('negative')" and float(row["majority_rate"]) == 50.0
    assert r"$^\dagger$" in (folder / "main_table.tex").read_text()
    page = (folder / "report.html").read_text()
    tip = "n 40; majority rate 50.0 (positive); predicted: positive 0%, negative 100%; distrust: constant predictions"
    assert f"title='{tip} (&#x27;negative&#x27;)'>50.0 ±" in page


def test_generation_outputs_that_are_bare_label_words_are_counted(tmp_path):
    def labels(s, runs):
        run = s.run("rlab", "sentiment", 8, "ft")
        golds, _ = _outputs("ft", 0)
        outs = ["Positive." if i % 2 else "negative" for i in range(40)]
        s.cell(run, "question", "socialqa", 0, generation_predictions(golds, outs))

    build(tmp_path / "out", extra=labels)
    write_report(tmp_path / "out", tmp_path / "report", figures=False)
    row = next(x for x in _csv(tmp_path / "report" / "cells.csv") if x["size"] == "8")
    assert float(row["label_word_share"]) == 100.0 and row["flags"] == "100% outputs are a bare label word"
    assert "| negative, positive |" in (tmp_path / "report" / "main_table.md").read_text()


# ---------------------------------------------------------------- seeds


def _accuracy_records(p: list[dict]) -> stats.Records:
    ids, preds, golds = ([r[k] for r in p] for k in ("id", "prediction", "gold"))
    return stats.cell_records("classification", "accuracy", ids, preds, golds)


def test_several_seeds_aggregate_as_mean_and_sd_with_a_hierarchical_interval(tmp_path):
    s = SyntheticStudy()
    seeds = [s.run(f"r{i}", "sentiment", 32, "ft", seed=i) for i in range(3)]
    per_seed = [with_accuracy(SENT, 40, 26 + 4 * i, i) for i in range(3)]
    base = with_accuracy(SENT, 40, 20, 9)
    s.cell(None, "sentiment", "amazon", 0, base)
    for run, p in zip(seeds, per_seed, strict=True):
        s.cell(run, "sentiment", "amazon", 0, p)
    s.write(tmp_path)
    t = Table(StudyView(tmp_path))
    [model] = [m for m in t.models if not m.is_base]
    assert model.seeds == (0, 1, 2) and t.label(model) == "sentiment n=32 ft (3 seeds)"
    as_records = [_accuracy_records(p) for p in [*per_seed, base]]
    cell = t.cell(model, TestSet("sentiment", "amazon"), Setting(0, 0))
    assert cell.score == stats.seeds_score(as_records[:3])
    assert cell.delta == stats.seeds_difference([(r, as_records[3]) for r in as_records[:3]])
    assert cell.score.sd == pytest.approx(4 / 40 * 100)  # 26, 30, 34 correct of 40: sd 10 points


# ---------------------------------------------------------------- scores recomputed, provenance


def test_scores_are_recomputed_from_the_predictions_of_an_older_store(tmp_path):
    from ftgen.store import Store

    build(tmp_path)
    with Store.open_writer(tmp_path) as st, st.transaction() as c:  # as if scored by an older rule
        c.execute("UPDATE cells SET score = 99.0 WHERE key = 'rft|sentiment/amazon|0|0'")
    t = Table(StudyView(tmp_path))
    cell = t.cell(next(m for m in t.models if m.method == "ft"), TestSet("sentiment", "amazon"), Setting(0, 0))
    assert cell.score.estimate == 100 * (36) / 40
    assert t.view.recomputed_differences() == 1


def test_provenance_names_the_model_versions_device_and_every_test_sets_rule(report, study):
    folder, _ = report
    p = json.loads((folder / "provenance.json").read_text())
    assert p["base_models"] == [
        {
            "name": "default",
            "resolved": "SmolLM2-135M-Instruct",
            "path": "/cache/SmolLM2-135M-Instruct",
            "sha256": "ab" * 32,
            "revision": None,
        }
    ]
    assert p["runtime"]["evaluation"] == [{"device": "cpu", "device_name": "test CPU", "dtype": "fp32", "host": "h"}]
    assert p["runtime"]["versions"] == [{"ftgen": "0.test", "torch": "2.x"}]
    assert p["training"]["lr"] == [1e-4] and p["training"]["epochs"] == [2] and p["training"]["batch_size"] == [8]
    sets = {f"{x['task']}/{x['set']}": x for x in p["test_sets"]}
    assert sets["sentiment/amazon"] | {"definition": None} == {
        "task": "sentiment",
        "set": "amazon",
        "metric": "accuracy",
        "definition": None,
        "scoring_rule": "sum",
        "limit": 40,
        "n_scored": [40],
        "n_dropped": [2],
        "cells_done": 6,
        "cells": 6,
    }
    assert sets["question/socialqa"]["scoring_rule"] == "greedy, at most 32 new tokens"
    assert "without stemming" in sets["question/socialqa"]["definition"]
    assert p["study_yaml"] == "name: synthetic\n" and p["status"] == "complete"
    assert [m["key"] for m in p["trained_models"]] == ["rft", "rfticl"] and p["trained_models"][0]["sha256"]
    page = (folder / "report.html").read_text()
    assert page.index("id='headline'") < page.index("id='provenance'") < page.index("<nav>")
    assert "SmolLM2-135M-Instruct at /cache/SmolLM2-135M-Instruct" in page


# ---------------------------------------------------------------- renderers


def test_html_has_a_contents_list_scrolling_tables_and_svg_figures(report):
    folder, r = report
    page = (folder / "report.html").read_text()
    nav = page[page.index("<nav>") : page.index("</nav>")]
    anchors = re.findall(r"href='#([^']+)'", nav)
    for a in anchors:
        assert f"id='{a}'" in page, a
    assert {"claims", "tables", "ft-vs-fticl", "distrust", "heatmaps", "drift", "loss", "definitions"} <= set(anchors)
    assert "table-sentiment-0" in anchors and "table-sentiment-1" in anchors
    svgs = re.findall(r"data:image/svg\+xml;base64,", page)
    figures = sorted(p.stem for p in folder.glob("*.svg"))
    assert len(svgs) == len(figures) and {p.stem for p in folder.glob("*.png")} == set(figures)
    assert {"heatmap_0-shot", "heatmap_k-shot", "ft_vs_fticl", "drift_vs_delta"} <= set(figures)
    assert page.count("<div class='scroll'><table>") >= 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page
    for svg in folder.glob("*.svg"):
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_heatmaps_share_one_colour_range(report, tmp_path, monkeypatch):
    from ftgen.report import figures

    _, r = report
    t = r["table"]
    shown = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: shown.append(fig.axes[0].images[0].norm) or stem)
    limit = max_delta(t)
    assert limit == max(abs(c.delta.estimate) for c in t.cells.values() if c.delta)
    for s in t.settings:
        figures.heatmap(t, s, tmp_path / "h", limit)
    assert [(n.vmin, n.vmax) for n in shown] == [(-limit, limit)] * len(t.settings) == [(-limit, limit)] * 2


def test_latex_and_markdown_cells_read_like_the_issue_asks(report):
    folder, _ = report
    md = (folder / "main_table.md").read_text()
    assert re.search(r"\| n=32 ft \| \d+\.\d ±\d+\.\d \([+-]\d+\.\d ±\d+\.\d\)\*? \|", md)
    tex = (folder / "main_table.tex").read_text()
    assert r"$\pm$" in tex and r"\begin{tabular}" in tex and "−" not in tex


def _render(renderable, width: int) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, soft_wrap=False).print(renderable)
    return buf.getvalue()


def test_terminal_summary_fits_120_columns_when_piped(study, report, tmp_path):
    proc = run_cli("report", str(study), "--to", str(tmp_path / "r"), env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    *lines, path = proc.stdout.splitlines()
    assert (
        max(len(line) for line in lines)
        <= 120
        < max(len(line) for line in _render(report[1]["terminal"], 200).splitlines())
    )
    assert path == f"report: {tmp_path / 'r' / 'report.html'}"  # a path is as long as it is
    for width in (100, 80):  # the summary wraps to any width
        assert max(len(line) for line in _render(report[1]["terminal"], width).splitlines()) <= width
    assert "-0.0" not in proc.stdout and "−0.0" not in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "0-shot, in-domain: FTICL − FT = " in text and "done cells to distrust" in text
    assert all(f" {c.number} {c.verdict} {c.text.split()[0]}" in text for c in report[1]["claims"])


def test_cli_refuses_a_missing_study_in_one_line(tmp_path):
    proc = run_cli("report", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "no study results here" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_superseded_rows_are_left_out(study, tmp_path):
    from ftgen.store import Store

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    with Store.open_writer(copy) as st:
        st.supersede("cells", ["rft|sentiment/amazon|0|0"])
    t = Table(StudyView(copy))
    assert t.cell(next(m for m in t.models if m.method == "ft"), TestSet("sentiment", "amazon"), Setting(0, 0)) is None
    assert t.view.counts["cells"]["superseded"] == 1


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(0, 3))
def test_numbers_never_print_as_negative_zero(x, digits):
    for sign in (False, True):
        text = num(x, digits, sign)
        assert float(text) == pytest.approx(round(x, digits), abs=10**-digits)
        assert not re.fullmatch(r"-0\.?0*", text)


def test_a_cell_whose_predictions_cannot_be_read_is_marked_and_the_report_goes_on(study, tmp_path):
    import sqlite3

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    conn = sqlite3.connect(copy / "results.sqlite")
    conn.execute("UPDATE predictions SET rows='[{\"id\": 1,' WHERE cell_key='rft|sentiment/amazon|0|0'")
    conn.commit()
    conn.close()
    r = write_report(copy, tmp_path / "report", figures=False)
    cell = r["table"].cell(
        next(m for m in r["table"].models if m.method == "ft"), TestSet("sentiment", "amazon"), Setting(0, 0)
    )
    assert cell.status == "done (not scorable)" and cell.score is None
    assert cell.distrust == [
        "its stored predictions are not readable (see ftgen status --check): no interval, no flags"
    ]
    assert "| n=32 ft | done (not scorable) |" in (tmp_path / "report" / "main_table.md").read_text()
    assert r["table"].group_means[(cell.model, Setting(0, 0), "ID")] is None  # a mean over a missing cell: blank


@settings(max_examples=12, deadline=None)
@given(
    correct=st.lists(st.integers(0, 40), min_size=3 * 6, max_size=3 * 6),
    pending=st.sets(
        st.tuples(
            st.sampled_from(["base", "ft", "fticl"]),
            st.sampled_from(["amazon", "sst2", "yelp"]),
            st.sampled_from([0, 2]),
        ),
        max_size=3,
    ),
)
def test_group_means_are_blank_exactly_when_a_cell_is_missing_and_else_equal_stats(tmp_path_factory, correct, pending):
    """Any accuracies, any cells left unrun: a group mean (and FTICL − FT) is blank iff one of its cells (the
    row's, the base's, the partner's) is missing; otherwise it equals stats.group_difference on the records."""
    out = tmp_path_factory.mktemp("prop")
    s = SyntheticStudy()
    runs = {"base": None, "ft": s.run("rft", "sentiment", 32, "ft"), "fticl": s.run("rfticl", "sentiment", 32, "fticl")}
    preds = {}
    for i, (name, test_set, k) in enumerate(
        (n, ts, k) for n in runs for ts in ("amazon", "sst2", "yelp") for k in (0, 2)
    ):
        preds[(name, test_set, k)] = with_accuracy(SENT, 40, correct[i], i)
        done = (name, test_set, k) not in pending
        s.cell(runs[name], "sentiment", test_set, k, preds[(name, test_set, k)] if done else None)
    s.write(out)
    t = Table(StudyView(out))
    rows = {m.method: m for m in t.models}
    for k, setting in ((0, Setting(0, 0)), (2, Setting(1, 0))):
        for g, sets in (("ID", ["amazon"]), ("OOD", ["sst2", "yelp"])):
            for name in ("ft", "fticl"):
                missing = any((who, ts, k) in pending for who in (name, "base") for ts in sets)
                want = (
                    None
                    if missing
                    else stats.group_difference(
                        [
                            (_accuracy_records(preds[(name, ts, k)]), _accuracy_records(preds[("base", ts, k)]))
                            for ts in sets
                        ]
                    )
                )
                assert t.group_means[(rows[name], setting, g)] == want
            missing = any((who, ts, k) in pending for who in ("ft", "fticl") for ts in sets)
            want = (
                None
                if missing
                else stats.group_difference(
                    [
                        (_accuracy_records(preds[("fticl", ts, k)]), _accuracy_records(preds[("ft", ts, k)]))
                        for ts in sets
                    ]
                )
            )
            assert t.pair_groups[(t.pairs[0], setting, g)] == want


def test_a_task_that_stems_is_scored_stemmed_by_the_report_and_the_export():
    """A user task with `rouge_stem: true`: the per-record scores behind the report's intervals and the export's
    are Rouge-L with stemming, as its cells were scored; a built-in task's without (the paper's)."""
    from ftgen import export, metrics

    preds = [{"id": i, "prediction": p, "gold": g} for i, (p, g) in enumerate([("running dogs", "the dog runs")] * 2)]
    cell = {"metric": "rouge_l"}
    for stem in (True, False):
        identity = {"task_def": {"kind": "generation", "rouge_stem": stem}}
        want = metrics.rouge_l_scores(["running dogs"] * 2, ["the dog runs"] * 2, stem)
        assert export._record_scores(cell, identity, preds) == want
        assert list(export._records(cell, identity, preds).values) == pytest.approx(want)
    assert metrics.rouge_l_scores(["running dogs"], ["the dog runs"], True) != metrics.rouge_l_scores(
        ["running dogs"], ["the dog runs"], False
    )  # the case tells the two apart
