"""Text renderers of the computed table: markdown, LaTeX, CSV and the terminal summary. They format numbers the
table computed (ftgen.report.table, .claims, .provenance) and compute none.

A cell reads `92.5 ±4.1 (+7.5 ±5.0)*`: score ± the larger half of its 95% interval, then the paired change vs
the base model with its own; `*` when that change's interval excludes 0, `†` when the cell is one to distrust.
A mean over missing cells is blank. Signs are ASCII in CSV and LaTeX, and never `-0.0`.
"""

from __future__ import annotations

import csv
import io

from ftgen import stats
from ftgen.report.claims import Claim
from ftgen.report.table import GROUP_NAMES, GROUPS, INTERVALS, Cell, Model, Setting, Table
from ftgen.report.view import SCORING

DISTRUST = "†"
COORDS = ("model", "train_task", "train_set", "size", "method", "lr", "epochs")


def num(x: float | None, digits: int = 1, sign: bool = False) -> str:
    """7.5 / +7.5; blank for None; a value that rounds to zero never prints as -0.0."""
    if x is None:
        return ""
    text = f"{x:+.{digits}f}"
    if float(text) == 0:
        text = "+" + text[1:]
    return text if sign else text.removeprefix("+")


def est(e: stats.Estimate | None) -> str:
    """A change: `+7.5 ±5.0*` (`*`: its interval excludes 0; blank for None)."""
    if e is None:
        return ""
    return f"{num(e.estimate, sign=True)} ±{e.half_width:.1f}{stats.mark(e)}"


def score_text(e: stats.Estimate | None) -> str:
    """A score: `92.5 ±4.1` (blank for None)."""
    return "" if e is None else f"{num(e.estimate)} ±{e.half_width:.1f}"


def cell_text(cell: Cell | None) -> str:
    """A table cell: `92.5 ±4.1 (+7.5 ±5.0)*`, `†` appended when distrusted; its status when not done."""
    if cell is None:
        return ""
    if not cell.done:
        return cell.status
    text = stats.format_cell(cell.score, cell.delta) if cell.score else num(cell.parts[0].score)
    return text + (DISTRUST if cell.distrust else "")


def flags_text(cell: Cell) -> str:
    """What a cell's outputs look like: n, and the majority-class rate and predicted-label shares (classification)
    or the shares of empty outputs and bare label words (generation); then why to distrust it, if so."""
    parts = [f"n {cell.parts[0].records.n}" if cell.done else ""]
    seed = f"seed {cell.model.seeds[0]}: " if len(cell.parts) > 1 else ""  # the first seed's outputs, as an example
    f = cell.parts[0].flags
    if isinstance(f, stats.ClassificationFlags):
        shares = ", ".join(f"{k} {v:.0f}%" for k, v in f.pred_share.items())
        parts.append(f"majority rate {f.majority_rate:.1f} ({f.majority_label}); {seed}predicted: {shares}")
    elif isinstance(f, stats.GenerationFlags):
        parts.append(f"{seed}empty outputs {f.empty_share:.0f}%, bare label words {f.label_word_share:.0f}%")
    if cell.score is not None and cell.score.sd is not None:
        parts.append(f"sd over seeds {cell.score.sd:.1f}")
    return "; ".join(p for p in parts + [f"distrust: {r}" for r in cell.distrust] if p)


def with_banner(t: Table, text: str) -> str:
    """`text` with an unfinished study's banner on top."""
    banner = t.view.banner()
    return f"**{banner}**\n\n{text}" if banner else text


def headline_text(h: stats.Headline, minus: str = "−") -> str:
    """`+2.6 [−0.4, +5.6]: 7 W / 2 L of 9`, or `no matched cells`."""
    if h.difference is None:
        return "no complete cells"
    return f"{stats.format_interval(h.difference, minus=minus)}: {h.wins} W / {h.losses} L of {h.n_cells}"


def col_label(t: Table, test, setting: Setting, group: str | None = None) -> str:
    k = t.shots_of(test.task, setting)
    name = test.name if group not in (None, "cross") else test.label
    return name + (f" ({k})" if k else "")


def table_title(t: Table, task: str, s: Setting) -> str:
    return f"Fine-tuned on {task} ({t.runs_of(task)[0].train_set}), evaluated {t.setting_label(s)}"


# ---------------------------------------------------------------- markdown


def md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]]) + "\n"


def headline_rows(t: Table) -> list[list[str]]:
    rows = []
    for s in t.settings:
        for g in GROUPS:
            if t.holds(s, g) or not t.train_tasks:
                rows.append([t.setting_label(s), GROUP_NAMES[g], *[headline_text(h) for h in t.headlines[(s, g)]]])
    return rows


def headline_head(t: Table) -> list[str]:
    return ["setting", "group", *[h.label for h in t.headlines[(t.settings[0], "ID")]]] if t.settings else []


def main_table_md(t: Table, task: str, s: Setting) -> str:
    cols = t.columns(task, s)
    head = ["model"] + [f"{g}: {col_label(t, ts, s, g)}" for g, ts in cols] + ["Δ ID", "Δ OOD", "Δ cross"]
    rows = []
    for m in [b for b in t.models if b.is_base] + t.runs_of(task):
        means = ["" if m.is_base else est(t.group_means[(m, s, g)]) for g in GROUPS]
        rows.append([t.label(m, with_task=False)] + [cell_text(t.cell(m, ts, s)) for _, ts in cols] + means)
    return f"### {table_title(t, task, s)}\n\n" + md_table(head, rows)


def pair_rows(t: Table) -> list[list[str]]:
    """FT vs FTICL per matched pair and setting: FTICL − FT per group, with its p-value."""
    rows = []
    for p in t.pairs:
        for s in t.settings:
            vals = []
            for g in GROUPS:
                e = t.pair_groups[(p, s, g)]
                vals.append(f"{est(e)} (p={e.p_value:.2g})" if e is not None and e.p_value is not None else est(e))
            rows.append([t.label(p.fticl), t.label(p.ft), t.setting_label(s), *vals])
    return rows


PAIR_HEAD = ["FTICL run", "matched FT run", "setting", "Δ in-domain", "Δ out-of-domain", "Δ cross-task"]
DISTRUST_HEAD = ["model", "test set", "setting", "score", "majority rate", "predicted shares", "why"]
GENERATION_HEAD = ["model", "test set", "setting", "score", "empty outputs %", "bare label words %", "words"]
CLAIM_HEAD = ["#", "the paper's claim", "verdict", "this study's numbers", "rule"]


def distrust_rows(t: Table) -> list[list[str]]:
    rows = []
    for c in t.distrusted():
        flags = [p.flags for p in c.parts if isinstance(p.flags, stats.ClassificationFlags)]
        rate = f"{flags[0].majority_rate:.1f} ({flags[0].majority_label})" if flags else ""
        shares = ", ".join(f"{k} {v:.0f}%" for k, v in flags[0].pred_share.items()) if flags else ""
        score = score_text(c.score)
        rows.append(
            [t.label(c.model), c.test.label, t.setting_label(c.setting), score, rate, shares, "; ".join(c.distrust)]
        )
    return rows


def generation_rows(t: Table) -> list[list[str]]:
    """Generation cells with any empty output or bare label word (seeds: the mean share)."""
    rows = []
    for c in t.cells.values():
        flags = [p.flags for p in c.parts if isinstance(p.flags, stats.GenerationFlags)]
        if not flags or not any(f.empty_share or f.label_word_share for f in flags):
            continue
        empty = sum(f.empty_share for f in flags) / len(flags)
        bare = sum(f.label_word_share for f in flags) / len(flags)
        words = ", ".join(sorted({w for f in flags for w in f.label_words}))
        score = score_text(c.score)
        rows.append([t.label(c.model), c.test.label, t.setting_label(c.setting), score, num(empty), num(bare), words])
    return rows


def claim_rows(claims: list[Claim]) -> list[list[str]]:
    return [[c.number, c.text, c.verdict, c.evidence, c.rule] for c in claims]


def correlation_text(c: stats.Correlation) -> str:
    """`r = -0.45 [-0.91, +0.42], n=6 (interval includes 0)`: a finding only from 5 points, excluding 0."""
    if c.r is None:
        return f"undefined (n={c.n})"
    interval = f" [{num(c.low, 2, True)}, {num(c.high, 2, True)}]" if c.low is not None else ""
    if stats.is_finding(c):
        why = "a finding"
    else:
        why = "not a finding: " + ("fewer than 5 runs" if c.n < 5 else "interval includes 0")
    return f"r = {num(c.r, 2, True)}{interval}, n={c.n} ({why})"


def drift_points(t: Table, s: Setting) -> list[tuple[Model, dict, dict]]:
    """(row, its drift, its group means) for rows with a drift measure."""
    out = []
    for m in t.trained:
        drift = t.drift(m)
        if drift:
            out.append((m, drift, {g: t.group_means[(m, s, g)] for g in GROUPS}))
    return out


def drift_correlations(t: Table, s: Setting) -> dict[str, stats.Correlation]:
    """Pearson r with its Fisher-z interval: drift measure vs a group's mean delta, over rows that have both."""
    out = {}
    pairs = (("mean_abs_change", "cross"), ("kl_mean", "cross"), ("kl_mean", "ID"))
    for measure, g in pairs:
        pts = [(d[measure], means[g].estimate) for _, d, means in drift_points(t, s) if measure in d and means[g]]
        if len(pts) >= 2:
            out[f"{measure} vs Δ {GROUP_NAMES[g]}"] = stats.correlation(*zip(*pts, strict=True))
    return out


def drift_md(t: Table) -> str:
    head = [
        "run",
        "setting",
        "mean |Δw|",
        "relative change",
        "mean KL",
        "Δ in-domain",
        "Δ out-of-domain",
        "Δ cross-task",
    ]
    rows, corr = [], []
    for s in t.settings:
        for m, d, means in drift_points(t, s):
            measures = [f"{d[k]:.3g}" if k in d else "" for k in ("mean_abs_change", "rel_change", "kl_mean")]
            rows.append([t.label(m), t.setting_label(s), *measures, *[est(means[g]) for g in GROUPS]])
        corr += [[t.setting_label(s), name, correlation_text(c)] for name, c in drift_correlations(t, s).items()]
    if not rows:
        return "No run has a drift measure.\n"
    return (
        md_table(head, rows)
        + "\n"
        + (md_table(["setting", "correlation", "Pearson r, 95% interval"], corr) if corr else "")
    )


TRADEOFF_HEAD = ["setting", "train task", "method", "α", "in-domain", "Δ in-domain", "out-of-domain"]
TRADEOFF_HEAD += ["Δ out-of-domain", "cross-task", "Δ cross-task"]


def tradeoff_rows(t: Table, trade: dict, *, compact: bool = False) -> list[list[str]]:
    """The WiSE-FT points (ftgen.report.interpolation): per α the groups' mean score and change vs base, each
    with its interval; α = 0 is the base, α = 1 the trained row, `(best)` the curve's best α. `compact`: one
    cell per group, `85.0 ±7.5 (+32.5 ±10.0)*` (TRADEOFF_COMPACT_HEAD, for the terminal)."""
    best = {
        (s, b["train_task"], b["method"]): b["alpha"] for s, chosen in trade["best"].items() for b in chosen["best"]
    }
    rows = []
    for p in trade["points"]:
        method = trade["names"][p.parent]
        mark = " (best)" if best.get((p.setting, p.parent.train_task, method)) == p.alpha else ""
        alpha = f"{p.alpha:g}" + (" base" if p.model is None else " trained" if p.alpha == 1 else "") + mark
        if compact:
            values = [stats.format_cell(p.scores[g], None if p.model is None else p.deltas[g]) for g in GROUPS]
        else:
            values = [v for g in GROUPS for v in (score_text(p.scores[g]), _tradeoff_delta(p, g))]
        rows.append([t.setting_label(p.setting), p.parent.train_task, method, alpha, *values])
    return rows


TRADEOFF_COMPACT_HEAD = ["setting", "train task", "method", "α", "in-domain (Δ)", "out-of-domain (Δ)", "cross-task (Δ)"]


def _tradeoff_delta(p, g: str) -> str:
    if p.model is None and p.deltas[g] is not None:
        return num(0, sign=True)  # the base itself: exactly 0, no interval
    return est(p.deltas[g])


def tradeoff_md(t: Table, trade: dict) -> str:
    return trade["reading"] + "\n\n" + md_table(TRADEOFF_HEAD, tradeoff_rows(t, trade))


LAYERS_HEAD = ["run", "method", "train task", "mean |ΔW|", "most-changed layers", "lowest cross-task CKA (layer)"]
ATTENTION_HEAD = ["model", "method", "test set, shots", "records", "examples", "examples of non-sink", "query"]


def layers_rows(acts: dict) -> list[list[str]]:
    rows = []
    for p in acts["profiles"]:
        top = sorted(p["layers"], key=lambda e: -e["mean_abs_change"])[:3]
        cross = (p.get("cka") or {}).get("cross_task")
        low = f"{min(cross):.3f} ({cross.index(min(cross))})" if cross else ""
        rows.append(
            [p["label"], (p["method"] or "").upper(), p["train_task"] or "", f"{p['total']['mean_abs_change']:.3g}"]
            + [", ".join(str(e["layer"]) for e in top), low]
        )
    return rows


def attention_rows(acts: dict) -> list[list[str]]:
    """Mean over layers of the answer position's attention shares, per model (base first)."""
    rows = []
    for label, r in acts["attention"].items():
        mean = r["mean"]
        where = f"{r['task']}/{r['test_set']}, {r['shots']}"
        rows.append([label, (r["method"] or "base").upper(), where, str(r["records"])])
        rows[-1] += [f"{mean[k]:.3f}" for k in ("examples", "examples_of_content", "query")]
    return rows


def acts_md(acts: dict) -> str:
    out = []
    if acts["profiles"]:
        out += [acts["layers"], "", md_table(LAYERS_HEAD, layers_rows(acts))]
    if acts["attention"]:
        out += [acts["attention_reading"] + ".", "", md_table(ATTENTION_HEAD, attention_rows(acts))]
    return "\n".join(out)


def definitions_md(t: Table) -> str:
    metrics = sorted({c.metric for c in t.view.cells if c.metric})
    lines = [
        "Groups (the paper's): in-domain = the test sets the train task's definition lists as `in_domain`; "
        "out-of-domain = the task's other test sets; cross-task = every other task's test sets.",
        "Scores recomputed from the stored predictions: " + "; ".join(SCORING.get(m, m) for m in metrics) + ".",
        INTERVALS,
        f"{DISTRUST} = a cell to distrust: a classifier whose predictions are constant or whose score lies within "
        "its interval of the majority-class rate; a generation cell with half its outputs empty or bare label "
        "words; a cell without per-record predictions.",
        "Group means and FT vs FTICL use complete, matched runs only; a mean over missing cells is blank.",
    ]
    return "".join(f"- {line}\n" for line in lines)


def markdown(t: Table, claims: list[Claim], trade: dict | None = None, acts: dict | None = None) -> str:
    """main_table.md: headline, tables, FT vs FTICL, cells to distrust, claims, drift, weight interpolation
    (`trade`, when the study has interpolated models), where fine-tuning acts (`acts`, when measured),
    definitions."""
    out = [f"# Study {t.view.name}: results", ""]
    if banner := t.view.banner():
        out += [f"**{banner}**", ""]
    out += [
        "## Headline",
        "",
        md_table(headline_head(t), headline_rows(t)) if t.settings else "No cells yet.\n",
        "## Tables",
        "",
    ]
    out += [main_table_md(t, task, s) for task in t.train_tasks for s in t.settings] or ["No training run yet.\n"]
    out += ["## FT vs FTICL (matched runs)", "", md_table(PAIR_HEAD, pair_rows(t)) if t.pairs else "No matched pair.\n"]
    rows = distrust_rows(t)
    out += ["## Cells to distrust", "", md_table(DISTRUST_HEAD, rows) if rows else "None.\n"]
    rows = generation_rows(t)
    out += [
        "## Generation outputs: empty, or a bare label word",
        "",
        md_table(GENERATION_HEAD, rows) if rows else "None.\n",
    ]
    out += ["## The paper's claims", "", md_table(CLAIM_HEAD, claim_rows(claims))]
    out += ["## Drift from the base vs generalization", "", drift_md(t)]
    if trade:
        out += ["## Weight interpolation (WiSE-FT)", "", tradeoff_md(t, trade)]
    if acts:
        out += ["## Where fine-tuning acts", "", acts_md(acts)]
    out += ["## Definitions", "", definitions_md(t)]
    return "\n".join(out)


# ---------------------------------------------------------------- LaTeX


def _tex(s: str) -> str:
    s = s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")
    s = s.replace("#", r"\#").replace("±", r"$\pm$").replace(DISTRUST, r"$^\dagger$").replace("Δ", r"$\Delta$")
    return s.replace(")*", r")$^*$").replace("−", "-")


def latex(t: Table) -> str:
    """One booktabs table per train task and setting, the three column groups under one header each."""
    out = [f"% INCOMPLETE study: {t.view.banner()}" if t.view.banner() else "% study complete"]
    for task in t.train_tasks:
        for s in t.settings:
            cols = t.columns(task, s)
            spans = [(g, sum(1 for c in cols if c[0] == g)) for g in GROUPS]
            spans = [(g, n) for g, n in spans if n]
            out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * len(cols) + "}"]
            out.append(r"\toprule")
            out.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{GROUP_NAMES[g]}}}" for g, n in spans) + r" \\")
            start, rules = 2, []
            for _, n in spans:
                rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
                start += n
            out.append(" ".join(rules))
            out.append("model & " + " & ".join(_tex(col_label(t, ts, s)) for _, ts in cols) + r" \\")
            out.append(r"\midrule")
            for m in [b for b in t.models if b.is_base] + t.runs_of(task):
                vals = [_tex(cell_text(t.cell(m, ts, s)) or "-") for _, ts in cols]
                out.append(_tex(t.label(m, with_task=False)) + " & " + " & ".join(vals) + r" \\")
            caption = _tex(f"{table_title(t, task, s)}: score ± 95% interval (change vs the base model).")
            out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}"]
            out += [r"\end{table}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- CSV


def _csv(head: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    writer.writerows(rows)
    return buf.getvalue()


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _coords(m: Model) -> list:
    return ["" if getattr(m, f) is None else getattr(m, f) for f in COORDS] + [" ".join(map(str, m.seeds))]


CELL_HEAD = [*COORDS, "seeds", "test_task", "test_set", "group", "shots", "format", "status", "metric", "n"]
CELL_HEAD += ["n_dropped", "score", "ci_low", "ci_high", "sd", "base_score", "delta", "delta_ci_low", "delta_ci_high"]
CELL_HEAD += ["delta_p", "delta_sd", "majority_rate", "pred_share", "empty_share", "label_word_share", "flags", "keys"]


def _flag_columns(c: Cell) -> list:
    cf = [p.flags for p in c.parts if isinstance(p.flags, stats.ClassificationFlags)]
    gf = [p.flags for p in c.parts if isinstance(p.flags, stats.GenerationFlags)]
    shares = " ".join(f"{k}={v:.1f}" for k, v in cf[0].pred_share.items()) if cf else ""
    empty = _f(sum(f.empty_share for f in gf) / len(gf)) if gf else ""
    bare = _f(sum(f.label_word_share for f in gf) / len(gf)) if gf else ""
    return [_f(cf[0].majority_rate) if cf else "", shares, empty, bare, "; ".join(c.distrust)]


def cells_csv(t: Table) -> str:
    """Every cell of the computed table (a row on a test set in a setting; several seeds: one cell)."""
    rows = []
    for c in t.cells.values():
        base = t.base_cell(c)
        s, d = c.score, c.delta
        rows.append(
            [*_coords(c.model), c.test.task, c.test.name, c.group or "", c.shots, c.setting.fmt, c.status]
            + [c.metric or "", s.n if s else "", c.parts[0].n_dropped if c.done else ""]
            + [_f(s and s.estimate), _f(s and s.low), _f(s and s.high), _f(s and s.sd)]
            + [_f(base.score.estimate) if base and base.score else ""]
            + [_f(d and d.estimate), _f(d and d.low), _f(d and d.high), _f(d and d.p_value), _f(d and d.sd)]
            + _flag_columns(c)
            + [" ".join(p.key for p in c.parts)]
        )
    return _csv(CELL_HEAD, rows)


def main_table_csv(t: Table) -> str:
    """One row per table row and setting: score and delta per test set, group means with their intervals."""
    sets = [ts.label for ts in t.test_sets]
    head = [*COORDS, "seeds", "setting", *sets, *[f"delta {x}" for x in sets]]
    head += [f"delta {g}{part}" for g in GROUPS for part in ("", " ci_low", " ci_high")]
    rows = []
    for m in t.models:
        for s in t.settings:
            cells = [t.cell(m, ts, s) for ts in t.test_sets]
            means = [None if m.is_base else t.group_means[(m, s, g)] for g in GROUPS]
            rows.append(
                [*_coords(m), t.setting_label(s)]
                + [_f(c.score.estimate) if c and c.score else "" for c in cells]
                + [_f(c.delta.estimate) if c and c.delta else "" for c in cells]
                + [_f(x) for e in means for x in ((e.estimate, e.low, e.high) if e else (None, None, None))]
            )
    return _csv(head, rows)


def pairs_csv(t: Table) -> str:
    """FTICL − FT per matched pair, test set (or group mean) and setting, with interval and p-value."""
    head = [*COORDS, "seeds", "fticl_method", "setting", "test_set", "group", "delta", "ci_low", "ci_high", "p_value"]
    rows = []
    for p in t.pairs:
        for s in t.settings:
            items = [(ts.label, t.group_of(p.ft, ts), t.pair_cells[(p, ts, s)]) for ts in t.test_sets]
            items += [(f"mean {g}", g, t.pair_groups[(p, s, g)]) for g in GROUPS]
            for name, g, e in items:
                vals = (e.estimate, e.low, e.high, e.p_value) if e else (None,) * 4
                rows.append([*_coords(p.ft), p.fticl.method, t.setting_label(s), name, g, *map(_f, vals)])
    return _csv(head, rows)


# ---------------------------------------------------------------- the terminal


def _terminal_headline(t: Table) -> list:
    """The headline's lines per setting and group; the settings and groups of the grid with no complete
    comparison yet in one line (those the grid does not hold: none)."""
    from rich.text import Text

    lines, empty = [], []
    for s in t.settings:
        for g in GROUPS:
            if not any(h.difference is not None for h in t.headlines[(s, g)]):
                if t.holds(s, g):
                    empty.append(f"{t.setting_label(s)} {GROUP_NAMES[g]}")
                continue
            first, *rest = [stats.format_headline(h) for h in t.headlines[(s, g)]]
            lines.append(Text(f"  {t.setting_label(s)}, {GROUP_NAMES[g]}: {first}"))
            lines += [Text("      " + line) for line in rest]
    if empty:
        lines.append(Text("  no complete cells to compare yet" + (f": {', '.join(empty)}" if lines else "")))
    return lines


def terminal(t: Table, claims: list[Claim], trade: dict | None = None, acts: dict | None = None):
    """The compact summary `ftgen report` prints: banner, headline, group means per row and setting, flags count,
    claims (the tables and figures are in report.html). Fits the console's width."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    items: list = [Text(f"Study {t.view.name}", style="bold")]
    if banner := t.view.banner():
        items.append(Text(banner, style="bold red"))
    items.append(
        Text(
            "Headline: mean change in points [95% interval]; wins / losses = cells whose interval lies above / below 0",
            style="bold",
        )
    )
    items += _terminal_headline(t)
    rt = RichTable(
        title="Mean change vs base per group (± 95% interval, * excludes 0)", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in ("run", "setting", "Δ in-domain", "Δ out-of-domain", "Δ cross-task"):
        rt.add_column(col, overflow="fold", justify="left" if col in ("run", "setting") else "right")
    for m in t.models:
        for s in t.settings if not m.is_base else []:
            rt.add_row(t.label(m), t.setting_label(s), *[est(t.group_means[(m, s, g)]) for g in GROUPS])
    items.append(rt)
    counts = t.counts()
    items.append(Text(f"{counts['distrusted']} of {counts['done']} done cells to distrust ({DISTRUST} in the tables)."))
    if trade:
        items.append(Text(trade["line"]))
    if acts and acts.get("layers"):
        items.append(Text("Where fine-tuning acts: " + acts["layers"]))
    so_far = "" if t.view.complete else " so far (the study is not finished)"
    ct = RichTable(
        title=f"The paper's claims{so_far}: rules and evidence in report.html", title_justify="left", box=box.SIMPLE
    )
    for col in ("claim", "verdict", "the paper says"):
        ct.add_column(col, justify="right" if col == "claim" else "left", overflow="fold")
    for c in claims:
        ct.add_row(c.number, c.verdict, c.text)
    items.append(ct)
    return Group(*items)
