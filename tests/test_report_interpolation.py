"""The report of a study with interpolated models (WiSE-FT, method `ft@0.5`) and with per-run layer analyses, on
synthetic stores (real rows, crafted per-record predictions; report_helpers): the interpolated models change no
FT / FTICL comparison (headline, group means, pairs, claims are identical with and without them); the trade-off
section's numbers are the table's group means and its best α the criterion's argmax computed here; the
where-fine-tuning-acts section reads each run's drift.json (a real weight_drift of tiny models) and names the
layer where FT and FTICL differ most."""

from __future__ import annotations

import io
import json

import pytest
from analysis_helpers import perturbed, tiny_llama
from report_helpers import SyntheticStudy, generation_predictions, with_accuracy

from ftgen.analysis.drift import weight_drift
from ftgen.report import StudyView, Table, check_claims, write_report
from ftgen.report import interpolation as I
from ftgen.store import Store
from helpers import assert_user_error, run_cli_inprocess

SENT = ["positive", "negative"]
SENT_SETS = ("amazon", "amazonfood", "sst2")
ACCURACY = {  # model -> correct of 40 on each sentiment set, 0-shot (2-shot: +2)
    "base": (20, 22, 21),
    "ft": (36, 33, 28),
    "fticl": (32, 35, 31),
    "ft@0.25": (26, 27, 25),
    "ft@0.5": (38, 30, 24),
    "fticl@0.5": (10, 12, 9),  # far below both: counted as FTICL it would move every comparison
}
KEEP = {"base": 3, "ft": 6, "fticl": 5, "ft@0.25": 4, "ft@0.5": 1, "fticl@0.5": 7}  # question words kept of 8
GOLD = [f"what did person {i} want to do after work" for i in range(40)]


def _cells(s: SyntheticStudy, run: dict | None, name: str) -> None:
    for i, test_set in enumerate(SENT_SETS):
        for k in (0, 2):
            p = with_accuracy(SENT, 40, ACCURACY[name][i] + (2 if k else 0), seed=10 * i + k)
            s.cell(run, "sentiment", test_set, k, p)
    outs = [" ".join(g.split()[: KEEP[name]]) for g in GOLD]
    s.cell(run, "question", "socialqa", 0, generation_predictions(GOLD, outs))


def build(out, *, interpolations: bool, fticl: bool = True) -> None:
    """Base, FT (and FTICL) trained on sentiment; with `interpolations` also ft@0.25, ft@0.5 (and fticl@0.5)."""
    s = SyntheticStudy()
    runs = {"base": None, "ft": s.run("rft", "sentiment", 32, "ft", drift={"mean_abs_change": 8e-5})}
    if fticl:
        runs["fticl"] = s.run("rfticl", "sentiment", 32, "fticl", drift={"mean_abs_change": 7e-5})
    if interpolations:
        runs["ft@0.25"] = s.interpolated(runs["ft"], 0.25)
        runs["ft@0.5"] = s.interpolated(runs["ft"], 0.5)
        if fticl:
            runs["fticl@0.5"] = s.interpolated(runs["fticl"], 0.5)
    for name, run in runs.items():
        _cells(s, run, name)
    s.write(out)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = {}
    for name, interp, fticl in (("plain", False, True), ("interp", True, True), ("ft_plain", False, False)):
        out[name] = tmp_path_factory.mktemp(name)
        build(out[name], interpolations=interp, fticl=fticl)
    out["ft_interp"] = tmp_path_factory.mktemp("ft_interp")
    build(out["ft_interp"], interpolations=True, fticl=False)
    return out


def _headlines(t: Table) -> dict:
    return {
        (s, g): [
            (h.label, h.wins, h.losses, h.n_cells)
            + ((h.difference.estimate, h.difference.low, h.difference.high) if h.difference else ())
            for h in hs
        ]
        for (s, g), hs in t.headlines.items()
    }


def _means(t: Table) -> dict:
    return {
        (m.run_keys, s, g): (e.estimate, e.low, e.high) if e else None
        for (m, s, g), e in t.group_means.items()
        if m in t.trained
    }


@pytest.mark.parametrize("pair", [("plain", "interp"), ("ft_plain", "ft_interp")])
def test_interpolated_models_change_no_ft_or_fticl_comparison(studies, pair):
    without, with_ = (Table(StudyView(studies[name])) for name in pair)
    assert {m.alpha for m in with_.models if m.interpolated} == {0.25, 0.5}
    assert all(not m.interpolated for m in without.models)
    assert [m.run_keys for m in with_.trained] == [m.run_keys for m in without.trained]
    assert [(p.ft.run_keys, p.fticl.run_keys) for p in with_.pairs] == [
        (p.ft.run_keys, p.fticl.run_keys) for p in without.pairs
    ]
    assert len(with_.pairs) == (1 if pair[0] == "plain" else 0)
    assert _headlines(with_) == _headlines(without)
    assert any(h[0][4:] or h[1][4:] for h in _headlines(with_).values())  # the headline has numbers to compare
    assert _means(with_) == _means(without)
    claims = [[(c.number, c.verdict, c.evidence) for c in check_claims(t)] for t in (with_, without)]
    assert claims[0] == claims[1]


def test_an_interpolated_row_has_its_own_group_means_on_its_runs_groups(studies):
    t = Table(StudyView(studies["interp"]))
    half = next(m for m in t.models if m.method == "ft@0.5")
    assert t.parent(half).run_keys == ("rft",) and not half.fticl
    assert t.parent(next(m for m in t.models if m.method == "fticl@0.5")).run_keys == ("rfticl",)
    s0 = t.settings[0]
    assert [ts.name for ts in t.group_sets(half, s0, "ID")] == ["amazon", "amazonfood"]  # the paper's Table 1
    id_mean = t.group_means[(half, s0, "ID")].estimate  # mean of the per-set deltas vs base
    expected = ((38 - 20) + (30 - 22)) / 2 / 40 * 100
    assert id_mean == pytest.approx(expected)


def _criterion(p: I.Point) -> float:
    return p.deltas["ID"].estimate - max(0.0, -p.deltas["cross"].estimate)


def test_tradeoff_points_are_the_tables_group_means_and_the_best_alpha_its_argmax(studies):
    t = Table(StudyView(studies["interp"]))
    trade = I.tradeoff(t)
    for p in trade["points"]:
        if p.model is not None:
            assert all(p.deltas[g] is t.group_means[(p.model, p.setting, g)] for g in ("ID", "OOD", "cross"))
    ft_curve = [p for p in trade["points"] if p.parent.method == "ft" and p.setting == t.settings[0]]
    assert [p.alpha for p in ft_curve] == [0.0, 0.25, 0.5, 1.0]
    # α = 0: the base model's mean score
    assert ft_curve[0].scores["ID"].estimate == pytest.approx((20 + 22) / 80 * 100)
    assert ft_curve[2].scores["ID"].estimate == pytest.approx((38 + 30) / 80 * 100)
    assert ft_curve[2].scores["ID"].low < ft_curve[2].scores["ID"].estimate < ft_curve[2].scores["ID"].high
    assert list(trade["best"]) == [t.settings[0]]  # 2-shot has no cross-task cell: no criterion, no best α
    for s in trade["best"]:
        for parent in I.curves(t):
            curve = [p for p in trade["points"] if p.setting == s and p.parent == parent]
            top = max(curve, key=lambda p: (_criterion(p), -p.alpha))
            chosen = next(
                b
                for b in trade["best"][s]["best"]
                if b["train_task"] == parent.train_task and b["method"] == parent.method
            )
            assert chosen["alpha"] == top.alpha
            assert f"{parent.method.upper()}: α = {top.alpha:g}" in trade["reading"] or top.alpha == 0


def test_the_report_has_a_wise_ft_section_only_with_interpolations(studies, tmp_path):
    with_ = write_report(studies["interp"], tmp_path / "with")
    without = write_report(studies["plain"], tmp_path / "without")
    html = with_["html"].read_text(encoding="utf-8")
    assert "Weight interpolation (WiSE-FT)" in html and with_["tradeoff"]["reading"] in html.replace("&#x27;", "'")
    assert (tmp_path / "with" / "tradeoff.png").stat().st_size > 0
    assert (tmp_path / "with" / "tradeoff.svg").read_text().startswith("<?xml")
    md = (tmp_path / "with" / "main_table.md").read_text(encoding="utf-8")
    assert "## Weight interpolation (WiSE-FT)" in md
    table = (tmp_path / "with" / "tradeoff.md").read_text(encoding="utf-8")
    t = with_["table"]
    half = next(m for m in t.models if m.method == "ft@0.5")
    e = t.group_means[(half, t.settings[0], "ID")]
    assert "| 0-shot | sentiment | ft | 0.5" in table and f"+{e.estimate:.1f} ±{e.half_width:.1f}" in table
    assert "WiSE-FT best α: 0-shot: sentiment ft α" in _render(with_["terminal"], 200)
    assert "WiSE-FT" not in _render(without["terminal"], 200)
    plain = without["html"].read_text(encoding="utf-8")
    assert "WiSE-FT" not in plain and not (tmp_path / "without" / "tradeoff.png").exists()
    assert "Where fine-tuning acts" not in plain  # no run measured its layers


def test_cli_analyze_tradeoff_prints_the_tables_numbers_with_intervals(studies, tmp_path, capsys):
    """`ftgen analyze tradeoff OUT` prints the report's trade-off (same numbers, same intervals) and writes
    tradeoff.md, tradeoff.json and the figure."""
    r = run_cli_inprocess(capsys, "analyze", "tradeoff", str(studies["interp"]), "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    t = Table(StudyView(studies["interp"]))
    trade = I.tradeoff(t)
    half = next(p for p in trade["points"] if p.alpha == 0.5 and p.parent.method == "ft" and p.setting.rank == 0)
    delta, score = half.deltas["ID"], half.scores["ID"]
    cell = f"{score.estimate:.1f} ±{score.half_width:.1f} (+{delta.estimate:.1f} ±{delta.half_width:.1f})*"
    assert cell in r.stdout
    assert trade["reading"][:60] in r.stdout.replace("\n", " ") and "INCOMPLETE" not in r.stdout
    saved = json.loads((tmp_path / "t" / "tradeoff.json").read_text())
    assert len(saved["points"]) == len(trade["points"])
    got = next(p for p in saved["points"] if p["alpha"] == 0.5 and p["method"] == "ft" and p["setting"] == "0-shot")
    assert (got["deltas"]["ID"]["low"], got["deltas"]["ID"]["high"]) == (delta.low, delta.high)
    assert got["scores"]["ID"]["estimate"] == pytest.approx(score.estimate)
    assert saved["best"][0]["setting"] == "0-shot" and saved["reading"] == trade["reading"]
    assert (tmp_path / "t" / "tradeoff.png").stat().st_size > 1000
    assert "| 0-shot | sentiment | ft | 0.5" in (tmp_path / "t" / "tradeoff.md").read_text(encoding="utf-8")


def test_cli_analyze_tradeoff_says_incomplete_and_blanks_an_unfinished_group(tmp_path, capsys):
    s = SyntheticStudy()
    ft = s.run("rft", "sentiment", 32, "ft")
    half = s.interpolated(ft, 0.5)
    for name, run in (("base", None), ("ft", ft), ("ft@0.5", half)):
        for i, test_set in enumerate(SENT_SETS):
            done = not (name == "ft@0.5" and test_set == "amazonfood")
            p = with_accuracy(SENT, 40, ACCURACY[name][i], seed=i) if done else None
            s.cell(run, "sentiment", test_set, 0, p)
    s.write(tmp_path / "study")
    r = run_cli_inprocess(capsys, "analyze", "tradeoff", str(tmp_path / "study"), "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("INCOMPLETE: 8 of 9 cells done")
    saved = json.loads((tmp_path / "t" / "tradeoff.json").read_text())
    point = next(p for p in saved["points"] if p["alpha"] == 0.5)
    assert point["deltas"]["ID"] is None and point["scores"]["ID"] is None  # amazonfood is in-domain: blank
    assert point["deltas"]["OOD"]["low"] <= point["deltas"]["OOD"]["estimate"] <= point["deltas"]["OOD"]["high"]
    assert "INCOMPLETE" in (tmp_path / "t" / "tradeoff.md").read_text(encoding="utf-8")


def test_cli_analyze_tradeoff_without_interpolations_is_one_line(studies, tmp_path, capsys):
    assert_user_error(run_cli_inprocess(capsys, "analyze", "tradeoff", str(studies["plain"])), "no interpolated")
    assert_user_error(run_cli_inprocess(capsys, "analyze", "tradeoff", str(tmp_path / "none")), "no study results")


def _render(renderable, width: int) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, soft_wrap=False).print(renderable)
    return buf.getvalue()


# ---------------------------------------------------------------- where fine-tuning acts


def _write_drift(out, key: str, drift: dict) -> None:
    with Store.open_reader(out) as store:
        row = next(r for r in store.rows("runs") if r["key"] == key)
        folder = store.run_dir(row)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drift.json").write_text(json.dumps(drift), encoding="utf-8")


def test_the_report_says_where_ft_and_fticl_differ_most_from_the_runs_drift(studies, tmp_path):
    out = tmp_path / "study"
    build(out, interpolations=True)
    base, _ = tiny_llama(layers=3)
    ft = perturbed(base, 1, 0.01, lambda n: ".1.mlp." in n)  # FT moves layer 1's MLP far more than FTICL
    ft = perturbed(ft, 2, 1e-3)
    fticl = perturbed(base, 3, 1e-3)
    for key, model in (("rft", ft), ("rfticl", fticl)):
        _write_drift(out, key, {"run": key, "base": "tiny", "weights": weight_drift(base, model)})
    r = write_report(out, tmp_path / "report")
    acts = r["acts"]
    assert [p["run_key"] for p in acts["profiles"]] == ["rft", "rfticl"]  # interpolated models are not trained runs
    assert acts["comparison"]["weights"][0]["layer"] == 1
    assert acts["layers"].startswith("FT changes the weights more than FTICL") and "layers 1 (" in acts["layers"]
    html = r["html"].read_text(encoding="utf-8")
    assert "Where fine-tuning acts" in html and "layers.svg" in html
    assert (tmp_path / "report" / "layers.png").stat().st_size > 0
    md = (tmp_path / "report" / "layers.md").read_text(encoding="utf-8")
    total = weight_drift(base, ft)["total"]["mean_abs_change"]
    assert f"| {total:.3g} | 1, " in md


def test_a_damaged_or_missing_drift_file_leaves_that_run_out(studies, tmp_path):
    out = tmp_path / "study"
    build(out, interpolations=False)
    base, _ = tiny_llama(layers=2)
    _write_drift(out, "rft", {"run": "rft", "base": "tiny", "weights": weight_drift(base, perturbed(base, 1, 1e-3))})
    _write_drift(out, "rfticl", {})
    r = write_report(out, tmp_path / "report", figures=False)
    assert [p["run_key"] for p in r["acts"]["profiles"]] == ["rft"]
    assert r["acts"]["layers"].startswith("FT (1 run, 2 layers) changes the weights most in layers")
    assert "no FT / FTICL comparison" in r["acts"]["layers"]


def test_attention_shares_the_runs_measured_are_reported_with_the_bases(paper_data, tmp_path):
    from ftgen.analysis.attention import attention_shares, select_shots
    from ftgen.data import load_pool, load_test_set
    from ftgen.tasks import load_task

    out = tmp_path / "study"
    build(out, interpolations=True)
    base, tok = tiny_llama(layers=2)
    task = load_task("sentiment")
    records = load_test_set(paper_data, task, "amazon").records[:2]
    shots = select_shots(load_pool(paper_data, task, "amazon").records, 2)

    def shares(model) -> dict:
        return attention_shares(model, tok, task, records, shots=shots) | {"test_set": "amazon"}

    measured = {"rft": shares(perturbed(base, 1, 0.05)), "rfticl": shares(perturbed(base, 2, 0.01))}
    base_shares = shares(base)
    for key, tuned in measured.items():
        with Store.open_reader(out) as store:
            folder = store.run_dir(next(r for r in store.rows("runs") if r["key"] == key))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "attention.json").write_text(json.dumps({"base": base_shares, "tuned": tuned}), encoding="utf-8")
    r = write_report(out, tmp_path / "report")
    acts = r["acts"]
    assert acts["profiles"] == [] and acts["layers"] is None  # no drift.json: attention only
    assert len(acts["attention"]) == 3  # the base once, FT, FTICL
    mean = {m: measured[k]["mean"]["examples"] for m, k in (("FT", "rft"), ("FTICL", "rfticl"))}
    expected = f"BASE {base_shares['mean']['examples']:.3f}, FT {mean['FT']:.3f}, FTICL {mean['FTICL']:.3f}"
    assert acts["attention_reading"].endswith(expected)
    html = r["html"].read_text(encoding="utf-8")
    assert "Attention on the in-context examples" in html and "attention.svg" in html
    assert "Layer drift" not in html
    assert (tmp_path / "report" / "attention.png").stat().st_size > 0


def test_an_unfinished_interpolation_reads_blank_and_names_no_best_alpha(tmp_path):
    s = SyntheticStudy()
    ft = s.run("rft", "sentiment", 32, "ft")
    half = s.interpolated(ft, 0.5)
    for name, run in (("base", None), ("ft", ft)):
        _cells(s, run, name)
    s.cell(half, "sentiment", "amazon", 0, None)  # not run yet
    s.write(tmp_path / "study")
    r = write_report(tmp_path / "study", tmp_path / "report", figures=False)
    trade = r["tradeoff"]
    assert trade["best"] == {} and trade["reading"] == "No interpolated model has complete cells yet."
    assert [p.alpha for p in trade["points"]] == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    assert all(p.deltas["ID"] is None for p in trade["points"] if p.alpha == 0.5)
    assert "INCOMPLETE" in (tmp_path / "report" / "tradeoff.md").read_text(encoding="utf-8")
