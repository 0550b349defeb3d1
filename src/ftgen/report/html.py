"""report.html: one self-contained page (figures embedded as SVG data URIs, PNG and SVG files beside it) that
formats the computed table. First the headline, then the provenance and a contents list; every table sits in
a box that scrolls sideways when it is wider than the page, so the paper grid (19 test sets) stays readable.
Table cells are shaded on one colour scale shared with the heatmaps.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ftgen import stats
from ftgen.report import text as T
from ftgen.report.claims import Claim
from ftgen.report.table import GROUP_NAMES, GROUPS, Table

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:26px}h2{font-size:21px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin:22px 0 6px}
.scroll{overflow-x:auto;max-width:100%;margin:6px 0 18px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
td.wrap{white-space:normal;min-width:240px;max-width:520px;text-align:left}
th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}
th.ID{background:#e4ecf7}th.OOD{background:#eef2e4}th.cross{background:#f6ece2}
figure{margin:10px 0 24px}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}
.note{color:#555;font-size:14px}.banner{background:#fdecea;border:1px solid #e0a0a0;padding:8px 12px;font-weight:600}
.headline td{font-size:14px}.verdict-confirmed{color:#1a6e1a}.verdict-refuted{color:#a11}
nav ol{columns:2;font-size:14px}code{background:#f3f3f3;padding:1px 4px}
details{margin:6px 0}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
"""

e = html.escape


def _table(head: list[str], rows: list[list[str]], wrap: tuple[int, ...] = (), left: int = 1, styles=None) -> str:
    """An HTML table in a sideways-scrolling box; columns in `wrap` wrap their text, the first `left` align left."""
    out = ["<div class='scroll'><table><tr>" + "".join(f"<th class='l'>{e(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            cls = "wrap" if j in wrap else "l" if j < left else ""
            style = styles[i][j] if styles else ""
            cells.append(f"<td class='{cls}'{style}>{e(str(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table></div>"


def _shade(delta: stats.Estimate | None, limit: float) -> str:
    """Background on the heatmaps' colour scale: blue for a gain, red for a loss, white at 0."""
    if delta is None:
        return ""
    a = min(abs(delta.estimate) / limit, 1.0) * 0.55
    rgb = "33,102,172" if delta.estimate > 0 else "178,24,43"
    return f" style='background:rgba({rgb},{a:.2f})'"


def main_table(t: Table, task: str, s, limit: float, anchor: str) -> str:
    cols = t.columns(task, s)
    spans = [(g, sum(1 for c in cols if c[0] == g)) for g in GROUPS]
    out = [f"<h3 id='{anchor}'>{e(T.table_title(t, task, s))}</h3>", "<div class='scroll'><table>"]
    out.append("<tr><th class='l' rowspan='2'>model</th>")
    out += [f"<th class='{g}' colspan='{n}'>{GROUP_NAMES[g]}</th>" for g, n in spans if n]
    out.append("<th colspan='3'>mean change vs base</th></tr><tr>")
    out += [f"<th class='{g}'>{e(T.col_label(t, ts, s, g))}</th>" for g, ts in cols]
    out += [f"<th>Δ {g}</th>" for g in GROUPS] + ["</tr>"]
    for m in [b for b in t.models if b.is_base] + t.runs_of(task):
        out.append(f"<tr><td class='l'>{e(t.label(m, with_task=False))}</td>")
        for _, ts in cols:
            c = t.cell(m, ts, s)
            tip = f" title='{e(T.flags_text(c))}'" if c is not None and c.done else ""
            out.append(f"<td{_shade(c.delta if c else None, limit)}{tip}>{e(T.cell_text(c))}</td>")
        for g in GROUPS:
            mean = None if m.is_base else t.group_means[(m, s, g)]
            out.append(f"<td{_shade(mean, limit)}>{e(T.est(mean))}</td>")
        out.append("</tr>")
    return "\n".join(out) + "</table></div>"


def figure(svg: Path | None, title: str, none: str = "") -> str:
    """An embedded SVG figure with links to its PNG and SVG files beside the page."""
    if svg is None:
        return f"<p class='note'>{e(none)}</p>" if none else ""
    data = base64.b64encode(svg.read_bytes()).decode()
    png = svg.with_suffix(".png").name
    return (
        f"<figure><img alt='{e(title)}' src='data:image/svg+xml;base64,{data}'><figcaption>{e(title)} "
        f"(<a href='{e(png)}'>PNG</a>, <a href='{e(svg.name)}'>SVG</a>)</figcaption></figure>"
    )


def provenance_html(p: dict) -> str:
    models = "; ".join(
        f"{m.get('name')} = {m.get('resolved')}"
        + (f" at {m['path']}" if m.get("path") else "")
        + (f", sha256 {m['sha256'][:16]}…" if m.get("sha256") else "")
        + (f", revision {m['revision']}" if m.get("revision") else "")
        for m in p["base_models"]
    )
    rt = p["runtime"]
    rows = [
        ["model", models],
        [
            "study ran",
            f"{p['study_ran']['first_start']} to {p['study_ran']['last_finish']}; report {p['report_written']}",
        ],
        ["evaluation device, dtype", _facts(rt["evaluation"])],
        ["training device, dtype", _facts(rt["training"])],
        ["versions", _facts(rt["versions"])],
        ["training", "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in p["training"].items())],
        [
            "evaluation",
            f"first {', '.join(map(str, p['evaluation']['limit']))} records of each test file; prompt formats "
            f"{p['evaluation']['prompt_formats']}; data {p['evaluation']['data_dir']}",
        ],
        ["scores", p["scores"]],
        ["intervals", p["intervals"]],
    ]
    sets = [
        [
            f"{s['task']}/{s['set']}",
            s["metric"] or "",
            s["scoring_rule"] or "",
            str(s["limit"]),
            " / ".join(map(str, s["n_scored"])),
            " / ".join(map(str, s["n_dropped"])),
            f"{s['cells_done']} of {s['cells']}",
        ]
        for s in p["test_sets"]
    ]
    yaml = f"<details><summary>study YAML</summary><pre>{e(p['study_yaml'])}</pre></details>" if p["study_yaml"] else ""
    return (
        _table(["", ""], rows, wrap=(1,))
        + _table(["test set", "metric", "scoring rule", "limit", "n scored", "n dropped", "cells done"], sets)
        + yaml
        + "<p class='note'>All of it, machine-readable: <a href='provenance.json'>provenance.json</a>.</p>"
    )


def _facts(value) -> str:
    if isinstance(value, str):
        return value
    return " | ".join(", ".join(f"{k} {v}" for k, v in d.items() if v is not None) for d in value)


def runs_html(t: Table) -> str:
    head = ["run", "seed", "key", "status", "records", "steps", "loss first epoch", "loss last epoch", "tokens/s"]
    head += ["train time (s)", "mean |Δw|", "relative change", "mean KL"]
    rows = []
    for m in t.models:
        for key, seed in zip(m.run_keys, m.seeds, strict=True):
            run = t.view.runs[key]
            s, d = run.summary, run.summary.get("drift") or {}
            vals = [s.get("records"), s.get("steps"), s.get("loss_first_epoch"), s.get("loss_last_epoch")]
            vals += [
                s.get("tokens_per_s"),
                run.seconds,
                d.get("mean_abs_change"),
                d.get("rel_change"),
                d.get("kl_mean"),
            ]
            rows.append([t.label(m), seed, key, run.status, *["-" if v is None else f"{v:.4g}" for v in vals]])
    return _table(head, rows)


def base_html(t: Table) -> str:
    head = ["model", "setting", *[ts.label for ts in t.test_sets]]
    rows = [
        [m.model, t.setting_label(s), *[T.cell_text(t.cell(m, ts, s)) for ts in t.test_sets]]
        for m in t.models
        if m.is_base
        for s in t.settings
    ]
    return _table(head, rows, left=2)


def tradeoff_html(t: Table, trade: dict, figs: dict) -> str:
    """The WiSE-FT section: its reading, the trade-off figure and table."""
    note = (
        "<p class='note'>θ(α) = (1 − α)·θ_base + α·θ_tuned of a trained run; α = 0 is the base model, α = 1 the "
        "trained run. Per group: mean score of its test sets, and mean change vs the base ± 95% interval (* "
        "excludes 0). Interpolated models enter no FT / FTICL comparison, headline or claim.</p>"
    )
    table = _table(T.TRADEOFF_HEAD, T.tradeoff_rows(t, trade), left=4)
    return f"<p>{e(trade['reading'])}</p>" + figure(figs.get("tradeoff"), "change vs base against α") + note + table


def acts_html(acts: dict, figs: dict) -> str:
    """Where fine-tuning acts: layer drift and CKA per depth, attention on the in-context examples."""
    out = []
    if acts["profiles"]:
        out += [f"<h3>Layer drift and CKA against depth</h3><p>{e(acts['layers'])}</p>"]
        out += [figure(figs.get("layers"), "drift and CKA to the base per layer, one line per run")]
        out += [_table(T.LAYERS_HEAD, T.layers_rows(acts), left=3)]
    if acts["attention"]:
        out += [f"<h3>Attention on the in-context examples</h3><p>{e(acts['attention_reading'])}.</p>"]
        out += [figure(figs.get("attention"), "the answer position's attention shares per layer")]
        out += [_table(T.ATTENTION_HEAD, T.attention_rows(acts), left=3)]
    return "".join(out)


def page(
    t: Table,
    claims: list[Claim],
    prov: dict,
    figs: dict[str, object],
    limit: float,
    trade: dict | None = None,
    acts: dict | None = None,
) -> str:
    """The whole page; `figs`: name -> SVG path (or None) from ftgen.report.figures; `trade` and `acts` add the
    weight-interpolation and where-fine-tuning-acts sections when the study has them."""
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    tables = []
    for task in t.train_tasks:
        for i, s in enumerate(t.settings):
            anchor = f"table-{task}-{i}"
            tables.append((anchor, T.table_title(t, task, s), main_table(t, task, s, limit, anchor)))
    sections.append(("claims", "The paper's claims, checked", _claims_html(claims)))
    body = "".join(b for _, _, b in tables) or "<p>No training run has finished cells yet.</p>"
    sections.append(("tables", "Main tables", body))
    pairs = _table(T.PAIR_HEAD, T.pair_rows(t), left=3) if t.pairs else "<p>No matched FT / FTICL pair.</p>"
    sections.append(
        ("ft-vs-fticl", "FT vs FTICL (matched runs)", figure(figs.get("ft_vs_fticl"), "FT vs FTICL") + pairs)
    )
    rows = T.distrust_rows(t)
    sections.append(
        ("distrust", "Cells to distrust", _table(T.DISTRUST_HEAD, rows, wrap=(6,), left=3) if rows else "<p>None.</p>")
    )
    rows = T.generation_rows(t)
    body = _table(T.GENERATION_HEAD, rows, left=3) if rows else "<p>None.</p>"
    sections.append(("generation", "Generation outputs: empty, or a bare label word", body))
    heat = "".join(
        figure(figs.get(f"heatmap-{i}"), f"Change vs base, {t.setting_label(s)}") for i, s in enumerate(t.settings)
    )
    sections.append(("heatmaps", "Heatmaps (one colour scale for all)", heat or "<p>No deltas yet.</p>"))
    sections.append(("size", "Change vs train size", figure(figs.get("size_curve"), "size curve", "One train size.")))
    drift = figure(figs.get("drift_vs_delta"), "drift vs cross-task change") + _md_tables(T.drift_md(t))
    sections.append(("drift", "Drift from the base vs generalization", drift))
    if trade:
        sections.append(("interpolation", "Weight interpolation (WiSE-FT)", tradeoff_html(t, trade, figs)))
    if acts and (acts["profiles"] or acts["attention"]):
        sections.append(("layers", "Where fine-tuning acts", acts_html(acts, figs)))
    swept = ", ".join(figs.get("swept") or [])
    sweeps = figure(
        figs.get("sweeps"), f"sweeps over {swept}", "No parameter is swept (lr, epochs, size, LoRA rank, model)."
    )
    sections.append(("sweeps", "Sweeps", sweeps))
    sections.append(("loss", "Training loss per run", figure(figs.get("loss_curves"), "training loss", "No loss log.")))
    sections.append(("base", "Base model", base_html(t)))
    sections.append(("runs", "Training runs", runs_html(t)))
    sections.append(("definitions", "Definitions", _md_list(T.definitions_md(t))))
    return _assemble(t, prov, sections, tables)


def _assemble(t: Table, prov: dict, sections: list, tables: list) -> str:
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>ftgen study {e(t.view.name)}</title>"
    out = [head + f"<style>{CSS}</style></head><body>", f"<h1>Study <code>{e(t.view.name)}</code></h1>"]
    if banner := t.view.banner():
        out.append(f"<p class='banner'>{e(banner)}</p>")
    out.append("<h2 id='headline'>Headline</h2>")
    out.append(
        "<p class='note'>Mean change in points [95% interval] over complete matched cells; W / L = cells "
        "whose own interval lies above / below 0. Hover a table cell for its n, majority-class rate and "
        "predicted-label shares (classification) or empty and bare-label-word shares (generation).</p>"
    )
    out.append(_table(T.headline_head(t), T.headline_rows(t), left=2) if t.settings else "<p>No cells yet.</p>")
    out += ["<h2 id='provenance'>Provenance</h2>", provenance_html(prov), "<nav><h2>Contents</h2><ol>"]
    for anchor, title, _ in sections:
        out.append(f"<li><a href='#{anchor}'>{e(title)}</a></li>")
        if anchor == "tables":
            out.append("<ol>" + "".join(f"<li><a href='#{a}'>{e(tt)}</a></li>" for a, tt, _ in tables) + "</ol>")
    out.append("</ol></nav>")
    out += [f"<h2 id='{anchor}'>{e(title)}</h2>{body}" for anchor, title, body in sections]
    return "\n".join(out + ["</body></html>"])


def _claims_html(claims: list[Claim]) -> str:
    rows = "".join(
        f"<tr><td>{e(c.number)}</td><td class='wrap'>{e(c.text)}</td><td class='l verdict-{c.verdict.split()[0]}'>"
        f"<b>{e(c.verdict)}</b></td><td class='wrap'>{e(c.evidence)}</td><td class='wrap'>{e(c.rule)}</td></tr>"
        for c in claims
    )
    head = "".join(f"<th class='l'>{e(h)}</th>" for h in T.CLAIM_HEAD)
    return f"<div class='scroll'><table><tr>{head}</tr>{rows}</table></div>"


def _md_tables(markdown: str) -> str:
    """The markdown pipe tables of text.drift_md as HTML tables."""
    blocks, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")])
        elif current:
            blocks.append(_table(current[0], [r for r in current[2:]], wrap=(2,) if len(current[0]) == 3 else ()))
            current = []
        elif line.strip():
            blocks.append(f"<p>{e(line)}</p>")
    return "".join(blocks)


def _md_list(markdown: str) -> str:
    items = [line.removeprefix("- ") for line in markdown.splitlines() if line.startswith("- ")]
    return "<ul>" + "".join(f"<li>{e(i).replace('`', '')}</li>" for i in items) + "</ul>"
