"""The report of a study, from its results store (read-only, safe while the study runs).

    view   = StudyView(out)        # the store read once; scores recomputed from the stored predictions (view.py)
    table  = Table(view)           # every number with its 95% interval, flags, group means, headline (table.py)
    claims = check_claims(table)   # the paper's claims: confirmed / refuted / inconclusive / not covered (claims.py)
    prov   = provenance(table)     # model, versions, device, dtype, per test set metric, rule and n (provenance.py)
    trade  = tradeoff(table)       # WiSE-FT: interpolated rows on their run's curve against α (interpolation.py)
    acts   = where_it_acts(out)    # layer profiles and attention shares the runs measured (layers.py)

then renderers that only format (text.py: markdown, LaTeX, CSV, terminal; html.py; figures.py). Written to
OUT/report/ (or --to):

    report.html                 headline, provenance, contents, claims, every table and figure (SVG embedded)
    main_table.md / .tex / .csv one table per train task and setting (rows: base and fine-tuned models; columns:
                                in-domain | out-of-domain | cross-task test sets; cells `92.5 ±4.1 (+7.5 ±5.0)*`)
    cells.csv                   every cell of the computed table: score, ci_low, ci_high, delta, delta_ci_low,
                                delta_ci_high, delta_p, n, n_dropped, flags, ...
    ft_vs_fticl.md / .csv       matched FTICL − FT per group and per test set, with intervals and p-values
    claims.md, drift.md         the claims section; drift vs generalization with correlations and their intervals
    tradeoff.md, tradeoff.*     weight interpolation (WiSE-FT), when the study has interpolated models: per α the
                                groups' mean score and change vs base with intervals, the best α (interpolation.py)
    layers.md, layers.*         where fine-tuning acts, when the runs measured it: layer drift and CKA per depth,
    attention.*                 attention on the in-context examples (layers.py reads the runs' analyses)
    provenance.json             where the numbers come from
    *.png + *.svg               heatmaps (one colour scale), size curve, sweeps, FT vs FTICL, drift, loss curves
"""

from __future__ import annotations

import re
from pathlib import Path

from ftgen.files import atomic_write_text, ensure_writable_dir
from ftgen.report import figures as F
from ftgen.report import text as T
from ftgen.report.claims import Claim, check_claims
from ftgen.report.html import page
from ftgen.report.interpolation import tradeoff
from ftgen.report.layers import where_it_acts
from ftgen.report.provenance import provenance, to_json
from ftgen.report.table import GROUP_NAMES, GROUPS, Cell, Model, Setting, Table, max_delta
from ftgen.report.view import Row, StudyView, TestSet, row_of

__all__ = [
    "GROUPS",
    "GROUP_NAMES",
    "Cell",
    "Claim",
    "Model",
    "Row",
    "Setting",
    "StudyView",
    "Table",
    "TestSet",
    "check_claims",
    "provenance",
    "row_of",
    "write_report",
]


def _figures(t: Table, folder: Path, trade: dict | None, acts: dict | None) -> dict:
    limit = max_delta(t)
    out: dict = {"limit": limit}
    for i, s in enumerate(t.settings):
        label = re.sub(r"[^A-Za-z0-9_-]+", "", t.setting_label(s).replace(", ", "_"))  # `k-shot #2` -> k-shot2
        out[f"heatmap-{i}"] = F.heatmap(t, s, folder / f"heatmap_{label}", limit)
    out["size_curve"] = F.size_curve(t, folder / "size_curve")
    out["ft_vs_fticl"] = F.method_chart(t, folder / "ft_vs_fticl")
    out["drift_vs_delta"] = F.drift_scatter(t, folder / "drift_vs_delta")
    out["sweeps"], out["swept"] = F.sweep_plot(t, folder / "sweeps")
    out["loss_curves"] = F.loss_curves(t, folder / "loss_curves")
    out["tradeoff"] = F.tradeoff_curve(t, trade, folder / "tradeoff")
    out |= F.layer_figures(acts, folder)
    return out


def write_report(out: str | Path, to: str | Path | None = None, *, figures: bool = True) -> dict:
    """Every table, figure and report.html of the study in `out`; returns the folder, the page, the computed
    table, the claims, and the terminal summary (a rich renderable). `figures=False`: tables and page only
    (figures take most of the time)."""
    table = Table(StudyView(out))
    folder = ensure_writable_dir(Path(to) if to is not None else Path(out) / "report", "report directory")
    claims = check_claims(table)
    prov = provenance(table)
    trade = tradeoff(table)
    acts = where_it_acts(out)
    acts = acts if acts["profiles"] or acts["attention"] else None
    atomic_write_text(folder / "main_table.md", T.markdown(table, claims, trade, acts))
    atomic_write_text(folder / "main_table.tex", T.latex(table))
    atomic_write_text(folder / "main_table.csv", T.main_table_csv(table))
    atomic_write_text(folder / "cells.csv", T.cells_csv(table))
    atomic_write_text(folder / "ft_vs_fticl.csv", T.pairs_csv(table))
    pairs = T.md_table(T.PAIR_HEAD, T.pair_rows(table)) if table.pairs else "No matched pair.\n"
    atomic_write_text(folder / "ft_vs_fticl.md", T.with_banner(table, pairs))
    atomic_write_text(folder / "claims.md", T.with_banner(table, T.md_table(T.CLAIM_HEAD, T.claim_rows(claims))))
    atomic_write_text(folder / "drift.md", T.with_banner(table, T.drift_md(table)))
    atomic_write_text(folder / "provenance.json", to_json(prov))
    if trade:
        atomic_write_text(folder / "tradeoff.md", T.with_banner(table, T.tradeoff_md(table, trade)))
    if acts:
        atomic_write_text(folder / "layers.md", T.with_banner(table, T.acts_md(acts)))
    figs = _figures(table, folder, trade, acts) if figures else {"limit": max_delta(table)}
    atomic_write_text(folder / "report.html", page(table, claims, prov, figs, figs["limit"], trade, acts))
    return {
        "folder": folder,
        "html": folder / "report.html",
        "table": table,
        "claims": claims,
        "tradeoff": trade,
        "acts": acts,
        "terminal": T.terminal(table, claims, trade, acts),
    }
