"""The WiSE-FT trade-off of a study's interpolated models, from the computed table (ftgen.report.table).

An interpolated model θ(α) = (1 − α)·θ_base + α·θ_tuned is a row of the table (method `ft@0.5`); here each one is
put on the curve of the trained row it was built from: α = 0 is the base model (every change 0), α = 1 the
trained row itself. Per point and setting, each group (in-domain, out-of-domain, cross-task, the paper's groups
as in the tables) gets the mean score of its cells and the mean change vs the base with its 95% interval (the
table's group mean, blank unless every cell of the group is done).

    trade = tradeoff(table)     # None without interpolated models; else {"points", "best", "names", "reading"}

The best α of a curve is ftgen.analysis.interpolate.best_alphas's: the most in-domain gain for the least
cross-task loss, ΔID − max(0, −Δcross), ties to the smaller α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftgen import stats
from ftgen.report.table import GROUPS, Model, Setting, Table


@dataclass(frozen=True)
class Point:
    """One α of one trained row's curve in one setting."""

    parent: Model  # the trained row
    model: Model | None  # the interpolated row (the trained row at α = 1, None at α = 0: the base)
    alpha: float
    setting: Setting
    deltas: dict[str, stats.Estimate | None]  # group -> mean change vs base with its interval
    scores: dict[str, stats.Estimate | None]  # group -> mean score of its cells (None unless all are done)


def curves(t: Table) -> dict[Model, list[Model]]:
    """Trained row -> its interpolated rows, by α (only trained rows that have some)."""
    out: dict[Model, list[Model]] = {}
    for m in t.models:
        parent = t.parent(m)
        if parent is not None and not math.isnan(m.alpha):
            out.setdefault(parent, []).append(m)
    return {p: sorted(ms, key=lambda m: m.alpha) for p, ms in out.items()}


def _mean_score(t: Table, m: Model, sets: list, s: Setting) -> stats.Estimate | None:
    """m's mean score over `sets` with its interval (stats.group_score); None unless every cell is done."""
    cells = [t.cell(m, ts, s) for ts in sets]
    if not cells or not all(c is not None and c.done and c.score is not None for c in cells):
        return None
    return stats.group_score([c.records for c in cells])


def _zero(parent: Model, t: Table, s: Setting, g: str) -> stats.Estimate | None:
    """α = 0 is the base: a change of exactly 0 wherever the group has cells."""
    return stats.Estimate(0.0, 0.0, 0.0, 0, "the base model") if t.group_sets(parent, s, g) else None


def points(t: Table) -> list[Point]:
    """Every point of every curve (α = 0, the interpolated rows, α = 1), per setting."""
    out = []
    for parent, members in curves(t).items():
        base = t.base_of(parent)
        for s in t.settings:
            if not any(t.group_sets(parent, s, g) for g in GROUPS):
                continue
            base_scores = {
                g: None if base is None else _mean_score(t, base, t.group_sets(parent, s, g), s) for g in GROUPS
            }
            out.append(Point(parent, None, 0.0, s, {g: _zero(parent, t, s, g) for g in GROUPS}, base_scores))
            for m in [x for x in members if x.alpha not in (0.0, 1.0)] + [parent]:
                deltas = {g: t.group_means[(m, s, g)] for g in GROUPS}
                scores = {g: _mean_score(t, m, t.group_sets(m, s, g), s) for g in GROUPS}
                out.append(Point(parent, m, 1.0 if m is parent else m.alpha, s, deltas, scores))
    return out


def curve_name(t: Table, parent: Model) -> str:
    """The method of a curve (`ft`), or the row's label when its train task has several rows of that method."""
    same = [p for p in curves(t) if p.train_task == parent.train_task and p.method == parent.method]
    return parent.method if len(same) == 1 else t.label(parent, with_task=False)


def best(t: Table, pts: list[Point]) -> dict[Setting, dict]:
    """Per setting: best_alphas over its curves ({"best": [...], "sentence": one reading})."""
    from ftgen.analysis.interpolate import best_alphas  # torch: only for studies with interpolations

    out = {}
    for s in t.settings:
        dicts = [
            {
                "train_task": p.parent.train_task,
                "method": curve_name(t, p.parent),
                "alpha": p.alpha,
                **{
                    k: p.deltas[g].estimate if p.deltas[g] else None
                    for k, g in zip(("id", "ood", "cross"), GROUPS, strict=True)
                },
            }
            for p in pts
            if p.setting == s
        ]
        # The criterion needs ΔID and Δcross: a curve without both at some interpolated α (a setting without
        # cross-task cells, interpolated cells not done yet) has no best α.
        dicts = [d for d in dicts if d["id"] is not None and d["cross"] is not None]
        curves_with = {(d["train_task"], d["method"]) for d in dicts if 0 < d["alpha"] < 1}
        dicts = [d for d in dicts if (d["train_task"], d["method"]) in curves_with]
        if dicts:
            out[s] = best_alphas(dicts)
    return out


def reading(t: Table, chosen: dict[Setting, dict]) -> str:
    """One sentence: the best α per setting and curve."""
    if not chosen:
        return "No interpolated model has complete cells yet."
    parts = [f"{t.setting_label(s)}: {b['sentence'].rstrip('.')}" for s, b in chosen.items()]
    return (
        "Best α (the most in-domain gain for the least cross-task loss, ΔID − max(0, −Δcross)) — "
        + "; ".join(parts)
        + ". Each change has its 95% interval in the table: α whose changes differ by less are not told apart."
    )


def terminal_line(t: Table, chosen: dict[Setting, dict]) -> str:
    """The best α per setting and curve in one short line: `0-shot: question ft α 0.75 (ID +41.1, cross -3.4;
    α 1: +40.6, -5.1)`."""

    def one(b: dict) -> str:
        text = f"{b['train_task']} {b['method']} α {b['alpha']:g} (ID {b['id']:+.1f}, cross {b['cross']:+.1f}"
        full = b["full"]
        if full and b["alpha"] != 1 and full["id"] is not None and full["cross"] is not None:
            text += f"; α 1: {full['id']:+.1f}, {full['cross']:+.1f}"
        return text + ")"

    parts = [f"{t.setting_label(s)}: " + ", ".join(one(b) for b in c["best"]) for s, c in chosen.items()]
    return "WiSE-FT best α: " + ("; ".join(parts) if parts else "no complete interpolated cells yet")


def tradeoff(t: Table) -> dict | None:
    """The trade-off section's numbers: the points, the best α per setting (best_alphas), each curve's name and
    the one-sentence reading; None when the study has no interpolated model."""
    if not curves(t):
        return None
    pts = points(t)
    chosen = best(t, pts)
    names = {p: curve_name(t, p) for p in curves(t)}
    return {
        "points": pts,
        "best": chosen,
        "names": names,
        "reading": reading(t, chosen),
        "line": terminal_line(t, chosen),
    }


def points_json(t: Table, trade: dict) -> dict:
    """The trade-off as plain data (tradeoff.json): per point its curve, α, setting, and per group the mean score
    and the change vs base with its interval (`Estimate.as_dict`, None where the group is blank); the best α."""
    points = [
        {
            "train_task": p.parent.train_task,
            "method": trade["names"][p.parent],
            "runs": list(p.parent.run_keys),
            "alpha": p.alpha,
            "model": None if p.model is None else list(p.model.run_keys),
            "setting": t.setting_label(p.setting),
            "scores": {g: None if e is None else e.as_dict() for g, e in p.scores.items()},
            "deltas": {g: None if e is None else e.as_dict() for g, e in p.deltas.items()},
        }
        for p in trade["points"]
    ]
    best = [{"setting": t.setting_label(s), **chosen} for s, chosen in trade["best"].items()]
    return {"points": points, "best": best, "reading": trade["reading"]}
