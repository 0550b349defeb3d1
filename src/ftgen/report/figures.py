"""Figures of the computed table, each saved as PNG and SVG (`stem`.png / `stem`.svg): heatmaps of the change vs
the base (one colour range shared by every heatmap), change vs train size and vs each swept parameter, FT vs
FTICL, drift vs generalization (each with 95% error bars), and the training loss of every run.

Error bars are the intervals the table computed; points that pool several rows (a sweep value over the other
parameters) use the pooled interval of all their cells (ftgen.report.table.Table.pooled). A heatmap cell whose
interval excludes 0 is marked `*`, one to distrust `†`, an in-domain one is boxed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ftgen.files import atomic_write_bytes, read_jsonl
from ftgen.report.table import GROUP_NAMES, GROUPS, Model, Table
from ftgen.report.text import DISTRUST, correlation_text, drift_correlations, drift_points, num

SWEEPABLE = {"size": "train size", "lr": "learning rate", "epochs": "epochs", "lora_r": "LoRA rank", "model": "model"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG: small, searchable, sharp
    plt.rcParams["svg.hashsalt"] = "ftgen"  # the same figure gives the same SVG bytes
    return plt


def save(fig, stem: Path) -> Path:
    """`stem`.png (110 dpi) and `stem`.svg, written atomically; returns the SVG's path."""
    plt = _plt()
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue())
    plt.close(fig)
    return stem.with_suffix(".svg")


def _errorbar(ax, xs: list, estimates: list, **kw) -> None:
    """Points with their asymmetric 95% intervals; None estimates are left out."""
    pts = [(x, e) for x, e in zip(xs, estimates, strict=True) if e is not None]
    if pts:
        xs, es = zip(*pts, strict=True)
        ys = [e.estimate for e in es]
        err = [[e.estimate - e.low for e in es], [e.high - e.estimate for e in es]]
        ax.errorbar(xs, ys, yerr=err, capsize=3, marker="o", **kw)


def heatmap(t: Table, setting, stem: Path, limit: float) -> Path | None:
    """Training run x test set, colour = change vs base on the shared scale, annotated with score and marks."""
    from matplotlib.colors import TwoSlopeNorm

    rows, cols = [m for m in t.models if not m.is_base], t.test_sets
    cells = [[t.cell(m, ts, setting) for ts in cols] for m in rows]
    if not rows or not any(c is not None and c.delta is not None for line in cells for c in line):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.95 * len(cols) + 3.2), max(3.0, 0.55 * len(rows) + 2.2)))
    grid = [[c.delta.estimate if c is not None and c.delta is not None else math.nan for c in line] for line in cells]
    im = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit), aspect="auto")
    for i, line in enumerate(cells):
        for j, c in enumerate(line):
            if c is None or c.delta is None:
                ax.text(j, i, "-" if c is None else c.status, ha="center", va="center", fontsize=7, color="grey")
                continue
            marks = ("*" if c.delta.excludes_zero else "") + (DISTRUST if c.distrust else "")
            text = f"{num(c.delta.estimate, sign=True)}{marks}\n({c.score.estimate:.0f})"
            color = "white" if abs(c.delta.estimate) > 0.6 * limit else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
            if c.group == "ID":
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="black"))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(
        [ts.label + (f" ({k})" if (k := t.shots_of(ts.task, setting)) else "") for ts in cols],
        rotation=40,
        ha="right",
        fontsize=9,
    )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([t.label(m) for m in rows], fontsize=9)
    for j in range(1, len(cols)):  # a line between test tasks
        if cols[j].task != cols[j - 1].task:
            ax.axvline(j - 0.5, color="black", lw=0.8)
    ax.set_title(
        f"Change vs base, {t.setting_label(setting)} (score in brackets; * interval excludes 0; "
        f"{DISTRUST} distrust; box = in-domain)",
        fontsize=9,
    )
    ax.set_xlabel("test set (shots)")
    fig.colorbar(im, ax=ax, label="score change vs base (points)", fraction=0.03, pad=0.02)
    return save(fig, stem)


def size_curve(t: Table, stem: Path) -> Path | None:
    """Mean change per group vs train size, per train task and method, with 95% error bars."""
    runs = t.trained
    if len({m.size for m in runs}) < 2:
        return None
    plt = _plt()
    tasks = t.train_tasks
    fig, axes = plt.subplots(
        len(t.settings), len(tasks), figsize=(max(7.5, 4.6 * len(tasks)), 3.6 * len(t.settings)), squeeze=False
    )
    methods = list(dict.fromkeys(m.method for m in runs))
    styles = {"ID": "-", "OOD": "--", "cross": ":"}
    for si, s in enumerate(t.settings):
        for ti, task in enumerate(tasks):
            ax = axes[si][ti]
            for mi, method in enumerate(methods):
                sizes = sorted({m.size for m in runs if m.train_task == task and m.method == method})
                for g in GROUPS:
                    ests = [
                        t.pooled([m for m in runs if (m.train_task, m.method, m.size) == (task, method, n)], s, g)
                        for n in sizes
                    ]
                    _errorbar(ax, sizes, ests, ls=styles[g], color=f"C{mi}", label=f"{method} {GROUP_NAMES[g]}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{task}, {t.setting_label(s)}", fontsize=10)
            ax.set_xlabel("train size")
            ax.set_ylabel("mean change vs base (points)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3) or 1, fontsize=9, frameon=False)
    fig.suptitle(
        "Change vs base by train size (solid: in-domain, dashed: out-of-domain, dotted: cross-task)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 3), 1, 0.96))
    return save(fig, stem)


def method_chart(t: Table, stem: Path) -> Path | None:
    """The headline as bars: FT − base, FTICL − base and FTICL − FT per group and setting, 95% error bars."""
    if not t.settings or not any(h.difference for hs in t.headlines.values() for h in hs):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(t.settings), figsize=(5.4 * len(t.settings), 3.9), squeeze=False, sharey=True)
    labels = [h.label for h in t.headlines[(t.settings[0], "ID")]]
    order = [1, 2, 0]  # FT − base, FTICL − base, FTICL − FT
    width = 0.8 / len(order)
    for ax, s in zip(axes[0], t.settings, strict=True):
        for bi, hi in enumerate(order):
            ests = [t.headlines[(s, g)][hi].difference for g in GROUPS]
            xs = [gi + (bi - (len(order) - 1) / 2) * width for gi in range(len(GROUPS))]
            ys = [e.estimate if e else 0.0 for e in ests]
            err = [[e.estimate - e.low if e else 0 for e in ests], [e.high - e.estimate if e else 0 for e in ests]]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=labels[hi], color=f"C{bi}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(GROUPS)))
        ax.set_xticklabels([GROUP_NAMES[g] for g in GROUPS])
        ax.set_title(f"evaluated {t.setting_label(s)}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("mean change (points), 95% interval")
    fig.suptitle("FT vs FTICL over matched runs (the headline)", fontsize=11)
    fig.tight_layout()
    return save(fig, stem)


def drift_scatter(t: Table, stem: Path) -> Path | None:
    """Each row's drift (mean |Δw|, else mean KL) against its cross-task change with its interval, per setting."""
    panels = [(s, drift_points(t, s)) for s in t.settings]
    panels = [(s, [p for p in pts if p[2]["cross"] is not None]) for s, pts in panels]
    panels = [(s, pts) for s, pts in panels if len(pts) >= 2]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (s, pts) in zip(axes[0], panels, strict=True):
        measure = "mean_abs_change" if all("mean_abs_change" in d for _, d, _ in pts) else "kl_mean"
        for fticl in (False, True):
            sel = [(m, d, means) for m, d, means in pts if m.fticl == fticl and measure in d]
            _errorbar(
                ax,
                [d[measure] for _, d, _ in sel],
                [means["cross"] for _, _, means in sel],
                ls="none",
                color="C1" if fticl else "C0",
                label="FTICL" if fticl else "FT",
            )
            for m, d, means in sel if len(pts) <= 12 else []:
                ax.annotate(
                    t.label(m),
                    (d[measure], means["cross"].estimate),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
        corr = drift_correlations(t, s).get(f"{measure} vs Δ cross-task")
        ax.set_title(
            f"evaluated {t.setting_label(s)}:\n{correlation_text(corr) if corr else 'r undefined'}", fontsize=9
        )
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.set_xlabel("mean |Δw| (the paper's drift)" if measure == "mean_abs_change" else "mean KL vs base")
        ax.set_ylabel("mean cross-task change vs base (points)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.legend(fontsize=8)
    fig.suptitle("Drift from the base vs cross-task generalization (one point per row)", fontsize=11)
    fig.tight_layout()
    return save(fig, stem)


def run_params(t: Table, m: Model) -> dict:
    """The sweepable parameters of a row (LoRA rank 0 = full fine-tuning)."""
    train = t.view.runs[m.run_keys[0]].train
    return {"size": m.size, "lr": m.lr, "epochs": m.epochs, "lora_r": train.get("lora_r") or 0, "model": m.model}


def _line(m: Model, param: str) -> tuple:
    """The line a row belongs to in a sweep of `param`: its train task and method (a LoRA-rank sweep: ft / fticl,
    since each rank has its own method label)."""
    return m.train_task, ("fticl" if m.fticl else "ft") if param == "lora_r" else m.method


def swept_params(t: Table) -> list[str]:
    """Parameters with at least two values on one line (same train task and method)."""
    runs = t.trained
    params = {m: run_params(t, m) for m in runs}
    return [
        p
        for p in SWEEPABLE
        if any(len({params[m][p] for m in runs if _line(m, p) == line}) > 1 for line in {_line(m, p) for m in runs})
    ]


def sweep_plot(t: Table, stem: Path) -> tuple[Path | None, list[str]]:
    """Cross-task (solid) and in-domain (dashed) change vs each swept parameter, per train task and method,
    pooled over the other parameters, with 95% error bars; one row of panels per setting."""
    swept = swept_params(t)
    if not swept:
        return None, []
    runs = t.trained
    params = {m: run_params(t, m) for m in runs}
    plt = _plt()
    fig, axes = plt.subplots(
        len(t.settings), len(swept), figsize=(max(6.0, 4.8 * len(swept)), 3.6 * len(t.settings)), squeeze=False
    )
    for si, s in enumerate(t.settings):
        for pi, p in enumerate(swept):
            ax = axes[si][pi]
            values = sorted({params[m][p] for m in runs}, key=lambda v: (isinstance(v, str), v))
            pos = {v: i for i, v in enumerate(values)} if p == "model" else {v: v for v in values}
            for i, line in enumerate(dict.fromkeys(_line(m, p) for m in runs)):
                for g, style in (("cross", "-"), ("ID", "--")):
                    members = {v: [m for m in runs if _line(m, p) == line and params[m][p] == v] for v in values}
                    xs = [v for v in values if members[v]]
                    _errorbar(
                        ax,
                        [pos[v] for v in xs],
                        [t.pooled(members[v], s, g) for v in xs],
                        ls=style,
                        color=f"C{i}",
                        label=f"{line[1]} on {line[0]}, {GROUP_NAMES[g]}",
                    )
            if p == "lr":
                ax.set_xscale("log")
            if p == "model":
                ax.set_xticks(range(len(values)))
                ax.set_xticklabels(values, rotation=20, ha="right", fontsize=8)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{SWEEPABLE[p]}, evaluated {t.setting_label(s)}", fontsize=10)
            ax.set_xlabel(SWEEPABLE[p])
            ax.set_ylabel("mean change vs base (points)")
            ax.legend(fontsize=7)
    fig.suptitle("Sweeps: change vs base (solid: cross-task, dashed: in-domain), 95% intervals", fontsize=11)
    fig.tight_layout()
    return save(fig, stem), swept


def loss_curves(t: Table, stem: Path) -> Path | None:
    """Training loss per optimizer step of every run (OUT/runs/<run>/loss.jsonl), one panel per train task."""
    curves: dict[str, list[tuple[str, list, list]]] = {}
    for m in t.models:
        for key, seed in zip(m.run_keys, m.seeds, strict=True):
            path = t.view.runs[key].run_dir / "loss.jsonl" if t.view.runs[key].run_dir else None
            if path is None or not path.is_file():
                continue
            rows = [r for r in read_jsonl(path) if isinstance(r, dict) and "step" in r and "loss" in r]
            label = t.label(m, with_task=False) + (f" seed {seed}" if len(m.seeds) > 1 else "")
            if rows:
                curves.setdefault(m.train_task, []).append(
                    (label, [r["step"] for r in rows], [r["loss"] for r in rows])
                )
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.4 * len(curves), 3.8), squeeze=False)
    for ax, (task, lines) in zip(axes[0], curves.items(), strict=True):
        for i, (label, steps, losses) in enumerate(lines):
            ax.plot(steps, losses, marker="." if len(steps) < 40 else None, color=f"C{i % 10}", label=label)
        ax.set_title(f"trained on {task}", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (response tokens)")
        ax.legend(fontsize=7)
    fig.suptitle("Training loss per run", fontsize=11)
    fig.tight_layout()
    return save(fig, stem)


def tradeoff_curve(t: Table, trade: dict | None, stem: Path) -> Path | None:
    """WiSE-FT: mean change vs base per group against α (0 = base, 1 = the trained row), 95% error bars; one
    panel per setting and train task, one line style per curve, the best α dotted."""
    if not trade or not trade["points"]:
        return None
    pts = trade["points"]
    settings = list(dict.fromkeys(p.setting for p in pts))
    tasks = list(dict.fromkeys(p.parent.train_task for p in pts))
    plt = _plt()
    fig, axes = plt.subplots(
        len(settings), len(tasks), figsize=(max(6.0, 5.0 * len(tasks)), 3.8 * len(settings)), squeeze=False
    )
    colors = {"ID": "C0", "OOD": "C2", "cross": "C3"}
    for si, s in enumerate(settings):
        for ti, task in enumerate(tasks):
            ax = axes[si][ti]
            parents = list(dict.fromkeys(p.parent for p in pts if p.setting == s and p.parent.train_task == task))
            for ci, parent in enumerate(parents):
                curve = [p for p in pts if p.setting == s and p.parent == parent]
                name = trade["names"][parent]
                for gi, g in enumerate(GROUPS):
                    _errorbar(
                        ax,
                        [p.alpha + (gi - 1) * 0.008 for p in curve],  # the groups' bars side by side, not on top
                        [p.deltas[g] for p in curve],
                        ls=("-", "--", ":", "-.")[ci % 4],
                        color=colors[g],
                        label=f"{name} {GROUP_NAMES[g]}",
                    )
                chosen = trade["best"].get(s, {}).get("best", [])
                best = next((b["alpha"] for b in chosen if (b["train_task"], b["method"]) == (task, name)), None)
                if best is not None:
                    ax.axvline(best, color="black", ls=":", lw=1, label=f"{name} best α = {best:g}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"trained on {task}, evaluated {t.setting_label(s)}", fontsize=10)
            ax.set_xlabel("α (0 = base, 1 = fine-tuned)")
            ax.set_ylabel("mean change vs base (points)")
            ax.legend(fontsize=7)
    fig.suptitle("Weight interpolation (WiSE-FT): change vs base against α, 95% intervals", fontsize=11)
    fig.tight_layout()
    return save(fig, stem)


def layer_figures(acts: dict | None, folder: Path) -> dict[str, Path | None]:
    """The layer profile (drift and CKA against depth, one line per run) and the attention shares per layer, each
    as PNG and SVG (ftgen.analysis.layers / .attention draw them); None where not measured."""
    out: dict[str, Path | None] = {"layers": None, "attention": None}
    if acts and acts["profiles"]:
        from ftgen.analysis.layers import plot_layers

        out["layers"] = plot_layers(acts["profiles"], folder / "layers")[-1]
    if acts and acts["attention"]:
        from ftgen.analysis.attention import plot_attention

        out["attention"] = plot_attention(acts["attention"], folder / "attention")[-1]
    return out
