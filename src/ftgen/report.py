"""The report of a study, from its results store (read-only): tables, heatmaps, plots, one HTML page.

    OUT/report/main_table.md / .tex   one table per train task and shots setting, shaped like the paper's:
                                      rows = train task x size x method (+ hyper-parameters when swept),
                                      columns = in-domain | out-of-domain | cross-task test sets,
                                      each cell "score (delta vs the base model at the same shots and format)"
    OUT/report/main_table.csv         the same numbers, one row per table row (score and delta columns)
    OUT/report/cells.csv              every finished cell, tidy (one row per cell) with base score and delta
    OUT/report/heatmap_*.png          train run x test set, coloured by delta vs base (0 = white)
    OUT/report/size_curve.png         delta vs train size (when the study has more than one size)
    OUT/report/ft_vs_fticl.png/.md    mean delta in-domain / out-of-domain / cross-task per method
    OUT/report/report.html            all of it in one self-contained page (images as data URIs)

In-domain = the test set named like the train set; out-of-domain = the train task's other test sets;
cross-task = every other task's test sets (the paper's definitions). A shots setting is the rank of the
shot count within its test task (0-shot, then the first k-shot, ...), so tasks with different k
(sentiment 2, question 1) share the "k-shot" tables.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ftgen.files import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from ftgen.store import RUN_COORDS, Store

GROUPS = ("ID", "OOD", "cross")
GROUP_NAMES = {"ID": "in-domain", "OOD": "out-of-domain", "cross": "cross-task"}


@dataclass(frozen=True)
class Row:
    """A table row: one model (a base model or a training run)."""

    model: str
    run_key: str | None
    train_task: str | None
    train_set: str | None
    size: int | None
    method: str
    lr: float | None
    epochs: float | None
    seed: int | None


def group_of(row: Row, test_task: str, test_set: str) -> str:
    if test_task != row.train_task:
        return "cross"
    return "ID" if test_set == row.train_set else "OOD"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


class StudyData:
    """The live, finished cells of a study, indexed for the tables."""

    def __init__(self, out: str | Path):
        with Store.open_reader(out) as store:
            self.meta = store.meta()
            self.cells = store.rows("cells", "status='done'")
            self.runs = {r["key"]: r for r in store.rows("runs", "status != 'superseded'")}
            self.counts = store.counts()
        self.out = Path(out)
        self.name = self.meta.get("study", self.out.name)
        self.test_sets: list[tuple[str, str]] = list(dict.fromkeys((c["test_task"], c["test_set"]) for c in self.cells))
        # test sets in task order; a task's in-domain set (named like a train set) first
        train_sets = {(r["train_task"], r["train_set"]) for r in self.runs.values()}
        order = list(dict.fromkeys(t for t, _ in self.test_sets))
        self.test_sets.sort(key=lambda ts: (order.index(ts[0]), ts not in train_sets, ts[1]))
        shots_by_task: dict[str, set[int]] = defaultdict(set)
        for c in self.cells:
            shots_by_task[c["test_task"]].add(c["shots"])
        self.shot_rank = {t: {k: i for i, k in enumerate(sorted(s))} for t, s in shots_by_task.items()}
        self.fmts = sorted({c["fmt"] for c in self.cells})
        ranks = sorted({r for t in self.shot_rank.values() for r in t.values()})
        self.settings = [(r, f) for r in ranks for f in self.fmts]
        self.score: dict[tuple, dict] = {}  # (row, test_task, test_set, setting) -> cell
        rows = []
        for c in self.cells:
            row = row_of(c)
            rows.append(row)
            setting = (self.shot_rank[c["test_task"]][c["shots"]], c["fmt"])
            self.score[(row, c["test_task"], c["test_set"], setting)] = c
        self.base_rows = sorted({r for r in rows if r.run_key is None}, key=lambda r: r.model)
        self.run_rows = sorted({r for r in rows if r.run_key is not None}, key=self._row_order)
        self.models = sorted({r.model for r in rows})
        self.swept = [f for f in ("lr", "epochs", "seed") if len({getattr(r, f) for r in self.run_rows}) > 1]
        trained = {r.train_task for r in self.run_rows}  # in the config's order (the runs table's row order)
        self.train_tasks = [t for t in dict.fromkeys(r["train_task"] for r in self.runs.values()) if t in trained]
        self.methods = list(dict.fromkeys(r.method for r in self.run_rows))

    def _row_order(self, r: Row):
        order = list(dict.fromkeys(x["train_task"] for x in self.runs.values()))
        methods = list(dict.fromkeys(x["method"] for x in self.runs.values()))
        task = order.index(r.train_task) if r.train_task in order else len(order)
        method = methods.index(r.method) if r.method in methods else len(methods)
        return (r.model, task, r.size or 0, method, r.lr or 0, r.epochs or 0, r.seed or 0)

    def setting_label(self, setting: tuple[int, int]) -> str:
        rank, fmt = setting
        shots = sorted({k for t in self.shot_rank.values() for k, r in t.items() if r == rank})
        if shots == [0]:
            label = "0-shot"
        elif len(shots) == 1:
            label = f"{shots[0]}-shot"
        else:  # k differs between test tasks (sentiment 2, question 1): shown beside each test set
            label = "k-shot" if max(r for r, _ in self.settings) == 1 else f"k-shot #{rank}"
        return label + (f", format {fmt}" if len(self.fmts) > 1 else "")

    def shots_of(self, test_task: str, setting: tuple[int, int]) -> int | None:
        return next((k for k, r in self.shot_rank.get(test_task, {}).items() if r == setting[0]), None)

    def cell(self, row: Row, test_task: str, test_set: str, setting) -> dict | None:
        return self.score.get((row, test_task, test_set, setting))

    def base_row(self, model: str) -> Row | None:
        return next((r for r in self.base_rows if r.model == model), None)

    def value(self, row: Row, test_task: str, test_set: str, setting) -> tuple[float | None, float | None]:
        """(score, delta vs the same model's base at the same shots and format)."""
        c = self.cell(row, test_task, test_set, setting)
        if c is None:
            return None, None
        base = self.base_row(row.model)
        b = self.cell(base, test_task, test_set, setting) if base and row.run_key else None
        return c["score"], (c["score"] - b["score"]) if b else None

    def row_label(self, r: Row, with_task: bool = True) -> str:
        if r.run_key is None:
            return f"base ({r.model})" if len(self.models) > 1 else "base"
        parts = ([r.train_task] if with_task else []) + [f"n={r.size}", r.method]
        parts += [f"{f}={getattr(r, f):g}" for f in self.swept]
        if len(self.models) > 1:
            parts.insert(0, r.model)
        return " ".join(parts)

    def columns_for(self, train_task: str, train_set: str) -> list[tuple[str, str, str]]:
        """(group, test task, test set) in the order ID, OOD, cross."""
        probe = Row("", "x", train_task, train_set, None, "", None, None, None)
        cols = [(group_of(probe, t, s), t, s) for t, s in self.test_sets]
        return sorted(cols, key=lambda c: GROUPS.index(c[0]))

    def group_means(self, row: Row, setting) -> dict[str, float | None]:
        """Mean delta over the test sets of each group (metrics are all on a 0-100 scale)."""
        deltas: dict[str, list[float]] = defaultdict(list)
        for t, s in self.test_sets:
            _, d = self.value(row, t, s, setting)
            if d is not None:
                deltas[group_of(row, t, s)].append(d)
        return {g: _mean(deltas[g]) for g in GROUPS}


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    train_task: str
    setting: tuple[int, int]
    columns: list[tuple[str, str, str]]  # (group, task, set)
    rows: list[Row]
    with_means: bool = True


def main_tables(d: StudyData) -> list[Table]:
    tables = []
    for task in d.train_tasks:
        rows = [r for r in d.run_rows if r.train_task == task]
        train_set = rows[0].train_set
        for setting in d.settings:
            title = f"Fine-tuned on {task} ({train_set}), evaluated {d.setting_label(setting)}"
            tables.append(Table(title, task, setting, d.columns_for(task, train_set), d.base_rows + rows))
    return tables


def _col_label(d: StudyData, col: tuple[str, str, str], setting, short: bool = False) -> str:
    group, task, s = col
    k = d.shots_of(task, setting)
    name = s if group != "cross" or short else f"{task}/{s}"
    return name + (f" ({k})" if k else "")


def _cell_text(d: StudyData, row: Row, col, setting) -> str:
    score, delta = d.value(row, col[1], col[2], setting)
    if score is None:
        return "-"
    return _fmt(score) + (f" ({_fmt(delta, True)})" if delta is not None else "")


def table_markdown(d: StudyData, t: Table) -> str:
    head = ["model"] + [f"{c[0]}: {_col_label(d, c, t.setting)}" for c in t.columns]
    head += ["Δ ID", "Δ OOD", "Δ cross"] if t.with_means else []
    lines = [f"### {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        cells = [d.row_label(r, with_task=False)] + [_cell_text(d, r, c, t.setting) for c in t.columns]
        if t.with_means:
            m = d.group_means(r, t.setting)
            cells += [_fmt(m[g], True) if r.run_key else "" for g in GROUPS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def table_latex(d: StudyData, t: Table) -> str:
    """booktabs, the three column groups under one header row each."""
    spans = [(g, sum(1 for c in t.columns if c[0] == g)) for g in GROUPS]
    spans = [(g, n) for g, n in spans if n]
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
        r"\toprule",
    ]
    out.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{GROUP_NAMES[g]}}}" for g, n in spans) + r" \\")
    start = 2
    rules = []
    for _, n in spans:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.append(" ".join(rules))
    out.append("model & " + " & ".join(_tex(_col_label(d, c, t.setting, short=True)) for c in t.columns) + r" \\")
    out.append(r"\midrule")
    for r in t.rows:
        vals = []
        for c in t.columns:
            score, delta = d.value(r, c[1], c[2], t.setting)
            vals.append(
                "-" if score is None else _fmt(score) + (f" ({_fmt(delta, True)})" if delta is not None else "")
            )
        out.append(_tex(d.row_label(r, with_task=False)) + " & " + " & ".join(vals) + r" \\")
    out += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex(t.title)}: score (change vs the base model).}}",
        r"\end{table}",
        "",
    ]
    return "\n".join(out)


COORDS = list(RUN_COORDS)


def row_of(r: dict) -> Row:
    """The Row of a `cells` or `runs` record (a base-model cell has run_key None)."""
    return Row(run_key=r["run_key"] if "run_key" in r else r["key"], **{c: r[c] for c in RUN_COORDS})


def _coords(r: Row, fields: list[str] = COORDS) -> list:
    return ["" if getattr(r, f) is None else getattr(r, f) for f in fields]


def _csv_text(head: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def write_csvs(d: StudyData, tables: list[Table], folder: Path) -> None:
    """main_table.csv: one row per table row; cells.csv: one row per finished cell, with base score and delta."""
    cols = [f"{t}/{s}" for t, s in d.test_sets]
    coords = [f for f in COORDS if f != "train_task"]  # the table's train task comes first
    head = ["train_task", "setting", *coords, *cols, *[f"delta {c}" for c in cols]]
    head += ["delta ID", "delta OOD", "delta cross"]
    rows = []
    for t in tables:
        for r in t.rows:
            vals = [d.value(r, ts[0], ts[1], t.setting) for ts in d.test_sets]
            means = d.group_means(r, t.setting) if r.run_key else dict.fromkeys(GROUPS)
            rows.append(
                [t.train_task, d.setting_label(t.setting), *_coords(r, coords)]
                + [_num(v[0]) for v in vals]
                + [_num(v[1]) for v in vals]
                + [_num(means[g]) for g in GROUPS]
            )
    atomic_write_text(folder / "main_table.csv", _csv_text(head, rows))

    head = [*COORDS, "test_task", "test_set", "group", "shots", "format", "metric", "score", "base_score", "delta"]
    head += ["n", "key"]
    base_by = {
        (c["model"], c["test_task"], c["test_set"], c["shots"], c["fmt"]): c["score"]
        for c in d.cells
        if c["run_key"] is None
    }
    rows = []
    for c in d.cells:
        row = row_of(c)
        base = base_by.get((c["model"], c["test_task"], c["test_set"], c["shots"], c["fmt"])) if c["run_key"] else None
        rows.append(
            [*_coords(row), c["test_task"], c["test_set"]]
            + [group_of(row, c["test_task"], c["test_set"]) if c["run_key"] else "", c["shots"], c["fmt"]]
            + [c["metric"], _num(c["score"]), _num(base), _num(c["score"] - base) if base is not None else ""]
            + [c["n"], c["key"]]
        )
    atomic_write_text(folder / "cells.csv", _csv_text(head, rows))


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------- FT vs FTICL


def method_summary(d: StudyData) -> list[dict]:
    """Mean delta per method, setting and group, over every run of the method."""
    out = []
    for setting in d.settings:
        for m in d.methods:
            rows = [r for r in d.run_rows if r.method == m]
            means = [d.group_means(r, setting) for r in rows]
            entry = {"setting": d.setting_label(setting), "method": m, "runs": len(rows)}
            for g in GROUPS:
                vals = [x[g] for x in means if x[g] is not None]
                entry[g] = _mean(vals)
            out.append(entry)
    return out


def method_markdown(summary: list[dict]) -> str:
    lines = ["| setting | method | runs | Δ in-domain | Δ out-of-domain | Δ cross-task |", "|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(
            f"| {e['setting']} | {e['method']} | {e['runs']} | " + " | ".join(_fmt(e[g], True) for g in GROUPS) + " |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def heatmap(d: StudyData, setting, path: Path) -> bool:
    """Train run x test set, colour = delta vs base (diverging, centred at 0), annotated; ID cells outlined."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    rows = d.run_rows
    cols = d.test_sets
    if not rows or not cols:
        return False
    grid = [[d.value(r, t, s, setting)[1] for t, s in cols] for r in rows]
    scores = [[d.value(r, t, s, setting)[0] for t, s in cols] for r in rows]
    vals = [abs(v) for line in grid for v in line if v is not None]
    if not vals:
        return False
    lim = max(max(vals), 1.0)
    width = max(7.0, 0.95 * len(cols) + 3.2)
    height = max(3.0, 0.55 * len(rows) + 2.2)
    fig, ax = plt.subplots(figsize=(width, height))
    masked = [[math.nan if v is None else v for v in line] for line in grid]
    im = ax.imshow(masked, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim), aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            if v is None:
                ax.text(j, i, "-", ha="center", va="center", fontsize=9, color="grey")
                continue
            dark = abs(v) > 0.6 * lim
            ax.text(
                j,
                i,
                f"{v:+.1f}\n({scores[i][j]:.0f})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
            if group_of(rows[i], *cols[j]) == "ID":
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(
        [f"{t}/{s}" + (f" ({k})" if (k := d.shots_of(t, setting)) else "") for t, s in cols],
        rotation=40,
        ha="right",
        fontsize=9,
    )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([d.row_label(r) for r in rows], fontsize=9)
    prev = None
    for j, (t, _) in enumerate(cols):  # a line between test tasks
        if prev is not None and t != prev:
            ax.axvline(j - 0.5, color="black", lw=0.8)
        prev = t
    ax.set_title(f"Change vs base model, {d.setting_label(setting)} (score in brackets; box = in-domain)", fontsize=10)
    ax.set_xlabel("test set (shots)")
    ax.set_ylabel("fine-tuned model")
    fig.colorbar(im, ax=ax, label="score change vs base (points)", fraction=0.03, pad=0.02)
    _save(fig, path)
    return True


def size_curve(d: StudyData, path: Path) -> bool:
    """Mean delta (in-domain / out-of-domain / cross-task) vs train size, per train task and method."""
    sizes = {r.size for r in d.run_rows}
    if len(sizes) < 2:
        return False
    plt = _plt()
    tasks = d.train_tasks
    fig, axes = plt.subplots(
        len(d.settings), len(tasks), figsize=(max(7.5, 4.6 * len(tasks)), 3.6 * len(d.settings)), squeeze=False
    )
    styles = {"ID": "-", "OOD": "--", "cross": ":"}
    for si, setting in enumerate(d.settings):
        for ti, task in enumerate(tasks):
            ax = axes[si][ti]
            for mi, m in enumerate(d.methods):
                rows = sorted((r for r in d.run_rows if r.train_task == task and r.method == m), key=lambda r: r.size)
                for g in GROUPS:
                    pts = defaultdict(list)
                    for r in rows:
                        v = d.group_means(r, setting)[g]
                        if v is not None:
                            pts[r.size].append(v)
                    if pts:
                        xs = sorted(pts)
                        ax.plot(
                            xs,
                            [_mean(pts[x]) for x in xs],
                            styles[g],
                            marker="o",
                            color=f"C{mi}",
                            label=f"{m} {GROUP_NAMES[g]}",
                        )
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(sorted({r.size for r in d.run_rows if r.train_task == task}))
            ax.set_title(f"{task}, {d.setting_label(setting)}", fontsize=10)
            ax.set_xlabel("train size")
            ax.set_ylabel("mean change vs base (points)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    fig.suptitle(
        "Change vs base by train size (solid: in-domain, dashed: out-of-domain, dotted: cross-task)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 3), 1, 0.96))
    _save(fig, path)
    return True


def method_chart(d: StudyData, summary: list[dict], path: Path) -> bool:
    if len(d.methods) < 1 or not summary:
        return False
    plt = _plt()
    settings = list(dict.fromkeys(e["setting"] for e in summary))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.8), squeeze=False, sharey=True)
    width = 0.8 / max(len(d.methods), 1)
    for si, s in enumerate(settings):
        ax = axes[0][si]
        for mi, m in enumerate(d.methods):
            e = next(x for x in summary if x["setting"] == s and x["method"] == m)
            ys = [e[g] if e[g] is not None else 0.0 for g in GROUPS]
            xs = [gi + (mi - (len(d.methods) - 1) / 2) * width for gi in range(len(GROUPS))]
            bars = ax.bar(xs, ys, width, label=m, color=f"C{mi}")
            for b, y in zip(bars, ys, strict=True):
                ax.annotate(
                    f"{y:+.1f}",
                    (b.get_x() + b.get_width() / 2, y),
                    ha="center",
                    va="bottom" if y >= 0 else "top",
                    fontsize=8,
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(GROUPS)))
        ax.set_xticklabels([GROUP_NAMES[g] for g in GROUPS])
        ax.set_title(f"evaluated {s}", fontsize=10)
        if si == 0:
            ax.set_ylabel("mean change vs base (points)")
        ax.legend(fontsize=8)
    fig.suptitle("FT vs FTICL: mean change vs the base model", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------- drift vs generalization; sweeps


def run_drift(d: StudyData, row: Row) -> dict | None:
    """The run's drift from its base (weight change, KL on the probe set), measured after training."""
    r = d.runs.get(row.run_key)
    return (json.loads(r["summary"]) if r and r["summary"] else {}).get("drift")


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r; None for fewer than 3 points or no spread (2 points always give +-1)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def drift_rows(d: StudyData) -> list[dict]:
    """One entry per fine-tuned run with a drift measure and per setting: drift and the mean delta per group."""
    out = []
    for row in d.run_rows:
        drift = run_drift(d, row)
        if not drift or drift.get("kl_mean") is None:
            continue
        for setting in d.settings:
            out.append(
                {
                    "row": row,
                    "setting": d.setting_label(setting),
                    "rel_change": drift["rel_change"],
                    "kl_mean": drift["kl_mean"],
                    **d.group_means(row, setting),
                }
            )
    return out


def drift_correlations(rows: list[dict]) -> list[dict]:
    """Per setting: r(mean KL, cross-task delta), r(mean KL, in-domain delta), r(weight change, cross delta)."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        pts = [r for r in rows if r["setting"] == setting and r["cross"] is not None]
        ids = [r for r in rows if r["setting"] == setting and r["ID"] is not None]
        out.append(
            {
                "setting": setting,
                "runs": len(pts),
                "r_kl_cross": pearson([r["kl_mean"] for r in pts], [r["cross"] for r in pts]),
                "r_weights_cross": pearson([r["rel_change"] for r in pts], [r["cross"] for r in pts]),
                "r_kl_id": pearson([r["kl_mean"] for r in ids], [r["ID"] for r in ids]),
            }
        )
    return out


def _r(x: float | None) -> str:
    return "n/a (< 3 runs)" if x is None else f"{x:+.2f}"


def drift_markdown(d: StudyData, rows: list[dict], corr: list[dict]) -> str:
    lines = [
        "| run | setting | weight change | mean KL | Δ in-domain | Δ out-of-domain | Δ cross-task |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {d.row_label(r['row'])} | {r['setting']} | {_sci(r['rel_change'])} | {_sci(r['kl_mean'])} | "
            + " | ".join(_fmt(r[g], True) for g in GROUPS)
            + " |"
        )
    lines += ["", "| setting | runs | r(KL, Δ cross-task) | r(weight change, Δ cross-task) | r(KL, Δ in-domain) |"]
    lines.append("|---|---|---|---|---|")
    for c in corr:
        rs = " | ".join(_r(c[k]) for k in ("r_kl_cross", "r_weights_cross", "r_kl_id"))
        lines.append(f"| {c['setting']} | {c['runs']} | {rs} |")
    return "\n".join(lines) + "\n"


def drift_scatter(d: StudyData, rows: list[dict], corr: list[dict], path: Path) -> bool:
    """Mean KL vs the base (x) against the cross-task delta (y), one panel per setting; colour = method."""
    settings = [c["setting"] for c in corr if c["runs"] >= 2]
    if not settings:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.2), squeeze=False)
    markers = "osD^v<>P*X"
    tasks = d.train_tasks
    for ax, setting in zip(axes[0], settings, strict=True):
        pts = [r for r in rows if r["setting"] == setting and r["cross"] is not None]
        for mi, m in enumerate(d.methods):
            for ti, t in enumerate(tasks):
                sel = [r for r in pts if r["row"].method == m and r["row"].train_task == t]
                if sel:
                    ax.scatter(
                        [r["kl_mean"] for r in sel],
                        [r["cross"] for r in sel],
                        color=f"C{mi}",
                        marker=markers[ti % len(markers)],
                        s=46,
                        label=f"{m}, trained on {t}",
                    )
        if len(pts) <= 12:
            for r in pts:
                ax.annotate(
                    d.row_label(r["row"], with_task=False),
                    (r["kl_mean"], r["cross"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
        kls = [r["kl_mean"] for r in pts if r["kl_mean"] > 0]
        if kls and max(kls) / min(kls) > 30:
            ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.8)
        c = next(c for c in corr if c["setting"] == setting)
        ax.set_title(f"evaluated {setting}: Pearson r = {_r(c['r_kl_cross'])} (n={c['runs']})", fontsize=10)
        ax.set_xlabel("mean KL(fine-tuned || base) on the probe set")
        ax.set_ylabel("mean cross-task change vs base (points)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle("Drift from the base model vs cross-task generalization (one point per training run)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05 + 0.03 * math.ceil(len(labels) / 4), 1, 0.95))
    _save(fig, path)
    return True


SWEEPABLE = {"size": "train size", "lr": "learning rate", "epochs": "epochs", "lora_r": "LoRA rank", "model": "model"}


def run_params(d: StudyData, row: Row) -> dict:
    """The sweepable parameters of a run (LoRA rank 0 = full fine-tuning)."""
    r = d.runs.get(row.run_key)
    train = json.loads(r["config"]).get("train", {}) if r else {}
    fticl = "fticl" if train.get("fticl_shots") else "ft"
    return {
        "size": row.size,
        "lr": row.lr,
        "epochs": row.epochs,
        "lora_r": train.get("lora_r") or 0,
        "model": row.model,
        "kind": fticl,
    }


def _series(row: Row, params: dict, param: str) -> tuple[str | None, str]:
    """The line a run belongs to in a sweep plot of `param`: its train task and method (for a LoRA rank
    sweep ft / fticl: each rank has its own method label)."""
    return row.train_task, params["kind"] if param == "lora_r" else row.method


def swept_params(d: StudyData, params: dict[Row, dict] | None = None) -> list[str]:
    """Parameters with at least two values on one line (same train task and method)."""
    params = params or {r: run_params(d, r) for r in d.run_rows}
    swept = []
    for p in SWEEPABLE:
        values: dict[tuple, set] = defaultdict(set)
        for r in d.run_rows:
            values[_series(r, params[r], p)].add(params[r][p])
        if any(len(v) > 1 for v in values.values()):
            swept.append(p)
    return swept


def sweep_plot(d: StudyData, path: Path) -> list[str]:
    """Mean cross-task (solid) and in-domain (dashed) delta vs each swept parameter, per train task and
    method, averaged over the other parameters and seeds; one row of panels per setting. Returns the
    swept parameters (none: no plot)."""
    params = {r: run_params(d, r) for r in d.run_rows}  # parsed once: each run's config is JSON
    swept = swept_params(d, params)
    if not swept:
        return []
    plt = _plt()
    fig, axes = plt.subplots(
        len(d.settings), len(swept), figsize=(max(6.0, 4.8 * len(swept)), 3.6 * len(d.settings)), squeeze=False
    )
    for si, setting in enumerate(d.settings):
        means = {r: d.group_means(r, setting) for r in d.run_rows}
        for pi, p in enumerate(swept):
            ax = axes[si][pi]
            series: dict[tuple, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
            for r in d.run_rows:
                for g in ("cross", "ID"):
                    if means[r][g] is not None:
                        series[_series(r, params[r], p)][g][params[r][p]].append(means[r][g])
            values = sorted({params[r][p] for r in d.run_rows}, key=lambda v: (isinstance(v, str), v))
            pos = {v: i for i, v in enumerate(values)} if p == "model" else {v: v for v in values}
            for i, (name, by_group) in enumerate(series.items()):
                for g, style in (("cross", "-"), ("ID", "--")):
                    xs = sorted(by_group[g], key=lambda v: values.index(v))
                    if xs:
                        ax.plot(
                            [pos[x] for x in xs],
                            [_mean(by_group[g][x]) for x in xs],
                            style,
                            marker="o",
                            color=f"C{i}",
                            label=f"{name[1]} on {name[0]}, {GROUP_NAMES[g]}",
                        )
            if p == "lr":
                ax.set_xscale("log")
            if p == "model":
                ax.set_xticks(range(len(values)))
                ax.set_xticklabels(values, rotation=20, ha="right", fontsize=8)
            elif p in ("size", "lora_r", "epochs"):
                ax.set_xticks(values)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{SWEEPABLE[p]}, evaluated {d.setting_label(setting)}", fontsize=10)
            ax.set_xlabel(SWEEPABLE[p])
            ax.set_ylabel("mean change vs base (points)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Sweeps: change vs base (solid: cross-task, dashed: in-domain)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return swept


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1300px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:26px}h2{font-size:21px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin:22px 0 6px}
table{border-collapse:collapse;font-size:14px;margin:6px 0 18px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}
th.ID{background:#e4ecf7}th.OOD{background:#eef2e4}th.cross{background:#f6ece2}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
.note{color:#555;font-size:14px}
code{background:#f3f3f3;padding:1px 4px}
"""


def _delta_style(delta: float | None) -> str:
    if delta is None:
        return ""
    a = min(abs(delta) / 20.0, 1.0) * 0.55
    rgb = "33,102,172" if delta > 0 else "178,24,43"
    return f' style="background:rgba({rgb},{a:.2f})"'


def table_html(d: StudyData, t: Table) -> str:
    e = html.escape
    spans = [(g, sum(1 for c in t.columns if c[0] == g)) for g in GROUPS]
    out = [f"<h3>{e(t.title)}</h3>", "<table>", "<tr><th class='l' rowspan='2'>model</th>"]
    out += [f"<th class='{g}' colspan='{n}'>{GROUP_NAMES[g]}</th>" for g, n in spans if n]
    if t.with_means:
        out.append("<th colspan='3'>mean change</th>")
    out.append("</tr><tr>")
    out += [f"<th class='{c[0]}'>{e(_col_label(d, c, t.setting))}</th>" for c in t.columns]
    if t.with_means:
        out += [f"<th>Δ {g}</th>" for g in GROUPS]
    out.append("</tr>")
    for r in t.rows:
        out.append(f"<tr><td class='l'>{e(d.row_label(r, with_task=False))}</td>")
        for c in t.columns:
            score, delta = d.value(r, c[1], c[2], t.setting)
            text = "-" if score is None else _fmt(score) + (f" ({_fmt(delta, True)})" if delta is not None else "")
            out.append(f"<td{_delta_style(delta)}>{e(text)}</td>")
        if t.with_means:
            m = d.group_means(r, t.setting)
            out += [
                f"<td{_delta_style(m[g]) if r.run_key else ''}>{_fmt(m[g], True) if r.run_key else ''}</td>"
                for g in GROUPS
            ]
        out.append("</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def runs_html(d: StudyData) -> str:
    e = html.escape
    out = [
        "<table><tr><th class='l'>run</th><th>key</th><th>records</th><th>steps</th><th>loss first epoch</th>"
        "<th>loss last epoch</th><th>tokens/s</th><th>train time</th><th>weight change</th><th>KL vs base</th></tr>"
    ]
    for key, r in d.runs.items():
        s = json.loads(r["summary"]) if r["summary"] else {}
        drift = s.get("drift") or {}
        out.append(
            f"<tr><td class='l'>{e(d.row_label(row_of(r)))}</td><td>{key}</td><td>{s.get('records', '-')}</td>"
            f"<td>{s.get('steps', '-')}</td><td>{_fmt_loss(s.get('loss_first_epoch'))}</td>"
            f"<td>{_fmt_loss(s.get('loss_last_epoch'))}</td><td>{s.get('tokens_per_s', '-')}</td>"
            f"<td>{_fmt(r['seconds'])} s</td><td>{_sci(drift.get('rel_change'))}</td>"
            f"<td>{_sci(drift.get('kl_mean'))}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _fmt_loss(x) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------- the whole report


def write_report(out: str | Path, to: str | Path | None = None) -> dict:
    """Write every table and figure, and report.html; returns paths and a rich renderable for the terminal."""
    d = StudyData(out)
    folder = Path(to) if to is not None else Path(out) / "report"
    ensure_writable_dir(folder, "report directory")
    tables = main_tables(d)
    summary = method_summary(d)

    md = [
        f"# Study {d.name}: results",
        "",
        "Score (change vs the base model at the same shots and prompt format). ID = in-domain, OOD = "
        "out-of-domain, cross = cross-task test sets; Δ columns = mean change per group (0-100 scale).",
        "",
    ]
    md += [table_markdown(d, t) for t in tables]
    if not tables:
        md.append("No fine-tuned model has finished cells yet.\n")
    md += ["## Base model", "", grid_markdown(*base_grid(d)), "## FT vs FTICL", "", method_markdown(summary)]
    drifts = drift_rows(d)
    corr = drift_correlations(drifts)
    if drifts:
        md += ["## Drift from the base vs generalization", "", drift_markdown(d, drifts, corr)]
        atomic_write_text(folder / "drift.md", drift_markdown(d, drifts, corr))
    atomic_write_text(folder / "main_table.md", "\n".join(md))
    atomic_write_text(folder / "main_table.tex", "\n".join(table_latex(d, t) for t in tables))
    atomic_write_text(folder / "ft_vs_fticl.md", method_markdown(summary))
    write_csvs(d, tables, folder)

    figures: list[tuple[str, Path]] = []
    for setting in d.settings:
        name = f"heatmap_{d.setting_label(setting).replace('/', '-').replace(', ', '_').replace(' ', '')}.png"
        if heatmap(d, setting, folder / name):
            figures.append((f"Heatmap: change vs base, {d.setting_label(setting)}", folder / name))
    has_size = size_curve(d, folder / "size_curve.png")
    has_methods = method_chart(d, summary, folder / "ft_vs_fticl.png")
    has_scatter = drift_scatter(d, drifts, corr, folder / "drift_vs_delta.png")
    swept = sweep_plot(d, folder / "sweeps.png")

    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ftgen study {e(d.name)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Study <code>{e(d.name)}</code></h1>",
    ]
    c = d.counts
    parts.append(
        f"<p class='note'>Models: {e(', '.join(d.models))}. Training runs done: {c['runs']['done']} "
        f"(failed {c['runs']['failed']}, pending {c['runs']['pending'] + c['runs']['running']}); evaluation cells "
        f"done: {c['cells']['done']} (failed {c['cells']['failed']}, pending "
        f"{c['cells']['pending'] + c['cells']['running']}). Data: {e(d.meta.get('data_dir', '?'))}. Each cell: score "
        "(accuracy or Rouge-L, 0-100) and, in brackets, its change vs the base model at the same shots and prompt "
        "format. In-domain = the test set of the train set; out-of-domain = the train task's other test sets; "
        "cross-task = the other tasks' test sets. Shots at test time are in brackets after a test set's name.</p>"
    )
    parts.append("<h2>Main tables</h2>")
    parts += [table_html(d, t) for t in tables] or ["<p>No fine-tuned model has finished cells yet.</p>"]
    parts.append("<h2>FT vs FTICL</h2>")
    if has_methods:
        parts.append(_img(folder / "ft_vs_fticl.png", "FT vs FTICL"))
    parts.append(_md_table_html(summary))
    parts.append("<h2>Heatmaps</h2>")
    parts += [f"<h3>{e(title)}</h3>{_img(p, title)}" for title, p in figures] or ["<p>No deltas to show yet.</p>"]
    parts.append("<h2>Score vs train size</h2>")
    parts.append(
        _img(folder / "size_curve.png", "size curve")
        if has_size
        else "<p class='note'>The study has a single train size: no size curve.</p>"
    )
    parts.append("<h2>Drift from the base vs generalization</h2>")
    parts.append(
        "<p class='note'>After each training run: the relative weight change ||W_ft - W_base|| / ||W_base|| and the "
        "mean KL divergence of the next-token distributions (fine-tuned vs base) on the answer tokens of a probe "
        "set of every evaluated task. The paper explains FTICL's better generalization by a smaller drift; "
        "a negative r means: less drift, better cross-task scores in this study.</p>"
    )
    if has_scatter:
        parts.append(_img(folder / "drift_vs_delta.png", "drift vs cross-task change"))
    parts.append(_md_html(drift_markdown(d, drifts, corr)) if drifts else "<p>No run has a drift measure.</p>")
    parts.append("<h2>Sweeps</h2>")
    parts.append(
        _img(folder / "sweeps.png", "sweeps")
        + f"<p class='note'>Swept: {e(', '.join(SWEEPABLE[p] for p in swept))}; each point averages the runs "
        "with that value (over the other parameters and seeds).</p>"
        if swept
        else "<p class='note'>No parameter is swept (lr, epochs, size, LoRA rank, model).</p>"
    )
    parts.append("<h2>Base model</h2>")
    parts.append(grid_html(*base_grid(d)))
    parts.append("<h2>Training runs</h2>")
    parts.append(runs_html(d))
    parts.append("</body></html>")
    atomic_write_text(folder / "report.html", "\n".join(parts))
    return {"folder": folder, "html": folder / "report.html", "terminal": _terminal(d, tables, summary)}


def base_grid(d: StudyData) -> tuple[list[str], list[list[str]]]:
    """The base model's scores: one row per model and setting, one column per test set."""
    head = ["model", "setting"] + [f"{t}/{s}" for t, s in d.test_sets]
    rows = []
    for r in d.base_rows:
        for setting in d.settings:
            vals = []
            for t, s in d.test_sets:
                c = d.cell(r, t, s, setting)
                k = d.shots_of(t, setting)
                vals.append("-" if c is None else f"{c['score']:.1f}" + (f" ({k})" if k else ""))
            rows.append([r.model, d.setting_label(setting), *vals])
    return head, rows


def grid_markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def grid_html(head: list[str], rows: list[list[str]], left: int = 2) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th{' class=l' if i < left else ''}>{e(h)}</th>" for i, h in enumerate(head))]
    for r in rows:
        out.append("<tr>" + "".join(f"<td{' class=l' if i < left else ''}>{e(v)}</td>" for i, v in enumerate(r)))
    return "\n".join(out) + "</table>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def _md_html(markdown: str) -> str:
    """Markdown pipe tables (as written by this module) as HTML tables."""
    e = html.escape
    out, in_table = [], False
    for line in markdown.splitlines():
        if not line.startswith("|"):
            out.append("</table>" if in_table else "")
            in_table = False
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set("".join(cells)) <= set("-"):
            continue
        tag = "td" if in_table else "th"
        out.append(
            ("" if in_table else "<table>")
            + "<tr>"
            + "".join(f"<{tag}{'' if _is_number(c) else ' class=l'}>{e(c)}</{tag}>" for c in cells)
        )
        in_table = True
    return "\n".join(out + (["</table>"] if in_table else []))


def _md_table_html(summary: list[dict]) -> str:
    e = html.escape
    out = [
        "<table><tr><th class='l'>setting</th><th class='l'>method</th><th>runs</th>"
        + "".join(f"<th class='{g}'>Δ {GROUP_NAMES[g]}</th>" for g in GROUPS)
        + "</tr>"
    ]
    for s in summary:
        out.append(
            f"<tr><td class='l'>{e(s['setting'])}</td><td class='l'>{e(s['method'])}</td><td>{s['runs']}</td>"
            + "".join(f"<td{_delta_style(s[g])}>{_fmt(s[g], True)}</td>" for g in GROUPS)
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _terminal(d: StudyData, tables: list[Table], summary: list[dict]):
    from rich.console import Group
    from rich.table import Table as RichTable

    items = []
    for t in tables:
        rt = RichTable(title=t.title, title_justify="left")
        rt.add_column("model")
        for c in t.columns:
            rt.add_column(f"{c[0]}\n{_col_label(d, c, t.setting)}", justify="right")
        for g in GROUPS:
            rt.add_column(f"Δ {g}", justify="right")
        for r in t.rows:
            m = d.group_means(r, t.setting)
            rt.add_row(
                d.row_label(r, with_task=False),
                *[_cell_text(d, r, c, t.setting) for c in t.columns],
                *[_fmt(m[g], True) if r.run_key else "" for g in GROUPS],
            )
        items.append(rt)
    rt = RichTable(title="FT vs FTICL: mean change vs base", title_justify="left")
    for col in ("setting", "method", "runs", "Δ in-domain", "Δ out-of-domain", "Δ cross-task"):
        rt.add_column(col)
    for e in summary:
        rt.add_row(e["setting"], e["method"], str(e["runs"]), *[_fmt(e[g], True) for g in GROUPS])
    items.append(rt)
    return Group(*items)
