"""`ftgen analyze layers | attention | interpolate | tradeoff`: the analyses of trained runs beyond drift
(ftgen.analysis). ftgen.cli registers these functions on its `analyze` group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftgen import progress
from ftgen.cli_common import DataDirOpt, TaskDirOpt, print_table, with_default
from ftgen.cli_common import csv_values as _csv
from ftgen.errors import UserError


def _floats(option: str, values: str) -> list[float]:
    try:
        return [float(v) for v in _csv(values)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got '{values}'") from None


def analyze_layers_cmd(
    runs: Annotated[
        list[str],
        typer.Argument(metavar="RUN...", help="Training output dirs (holding model/ and train_summary.json)."),
    ],
    base: Annotated[
        str | None, typer.Option(help=with_default("Base model.", "the one in each run's summary"), show_default=False)
    ] = None,
    data_dir: DataDirOpt = None,
    probe_tasks: Annotated[
        str, typer.Option(help=with_default("Comma list of tasks to probe with.", "all"), show_default=False)
    ] = "",
    per_task: Annotated[int, typer.Option(help="Probe records per task.")] = 8,
    out: Annotated[Path, typer.Option(help="Where layers.json, layers.md, layers.png/.svg go.")] = Path("runs/layers"),
    task_dir: TaskDirOpt = None,
):
    """Weight drift and base-vs-tuned CKA per transformer layer; in which layers FT and FTICL differ most."""
    from ftgen.analysis import ModelCache, analyze_layers, probe_set, write_layers_report
    from ftgen.analysis.common import check_runs_exist, unique_labels
    from ftgen.files import ensure_writable_dir
    from ftgen.tasks import all_tasks, load_task

    check_runs_exist(runs)
    tasks = [load_task(n, task_dir) for n in _csv(probe_tasks) or sorted(all_tasks(task_dir))]
    if data_dir is not None:
        probe_set(data_dir, tasks, per_task)  # bad data or sizes: before any model loads
    ensure_writable_dir(out)
    models = ModelCache()
    profiles = []
    for run, label in zip(runs, unique_labels([Path(r).name for r in runs]), strict=True):
        progress.log(f"ftgen: analysing {run}")
        profile = analyze_layers(run, base, data_dir=data_dir, tasks=tasks, per_task=per_task, models=models)
        profiles.append({**profile, "label": label})
    reading = write_layers_report(profiles, out)
    rows = []
    for p in profiles:
        top = sorted(p["layers"], key=lambda e: -e["mean_abs_change"])[:3]
        cka = p.get("cka") or {}
        rows.append(
            {
                "run": p["label"],
                "method": (p["method"] or "?").upper(),
                "train task": p["train_task"] or "?",
                "mean |Δw|": f"{p['total']['mean_abs_change']:.3e}",
                "most-changed layers": ", ".join(str(e["layer"]) for e in top),
                "min CKA in-domain": f"{min(cka['in_domain']):.4f}" if cka.get("in_domain") else "-",
                "min CKA cross-task": f"{min(cka['cross_task']):.4f}" if cka.get("cross_task") else "-",
            }
        )
    print_table("Drift per layer", rows, list(rows[0]))
    print(reading["sentence"])
    print(f"wrote {out / 'layers.json'}, {out / 'layers.md'} and {out / 'layers.png'} (.svg)")


def analyze_attention_cmd(
    models: Annotated[
        list[str], typer.Argument(metavar="MODEL...", help="Models: run dirs, model dirs, default or HF ids.")
    ],
    task: Annotated[str, typer.Option(help="Task of the test set (name or task YAML).")],
    test_set: Annotated[str, typer.Option("--test-set", help="Test set whose records and pool are used.")],
    shots: Annotated[int, typer.Option(help="In-context examples per prompt (the first k of the pool).")] = 2,
    records: Annotated[int, typer.Option(help="Records analysed (the first N, or N sampled with --seed).")] = 12,
    seed: Annotated[int | None, typer.Option(help="Sample the records with this seed.")] = None,
    prompt_format: Annotated[int, typer.Option("--prompt-format", help="Prompt format.")] = 0,
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="Where attention.json and attention.png/.svg go.")] = Path("runs/attention"),
    task_dir: TaskDirOpt = None,
):
    """Share of the answer position's attention on the in-context examples, the query and the template."""
    from ftgen.analysis import analyze_attention, write_attention_report
    from ftgen.analysis.common import check_runs_exist, unique_labels
    from ftgen.files import ensure_writable_dir
    from ftgen.tasks import load_task

    check_runs_exist(models)
    task_def = load_task(task, task_dir)
    ensure_writable_dir(out)
    results = {}
    for model, label in zip(models, unique_labels([Path(m).name for m in models]), strict=True):
        progress.log(f"ftgen: attention of {model}")
        results[label] = analyze_attention(
            model,
            task=task_def,
            test_set=test_set,
            shots=shots,
            records=records,
            data_dir=data_dir,
            fmt=prompt_format,
            seed=seed,
        )
    write_attention_report(results, out)
    segments = ["sink", "examples", "query", "template", "examples_of_content"]
    rows = [
        {"model": label, "method": (r["method"] or "base").upper(), **{s: f"{r['mean'][s]:.3f}" for s in segments}}
        for label, r in results.items()
    ]
    first = next(iter(results.values()))
    rows.append({"model": "(token share)", "method": "", **{s: f"{v:.3f}" for s, v in first["token_share"].items()}})
    title = f"Attention of the answer position, mean over layers ({task}/{test_set}, {shots}-shot, {first['records']})"
    print_table(title, rows, ["model", "method", *segments])
    print(f"wrote {out / 'attention.json'} and {out / 'attention.png'} (.svg)")


def analyze_interpolate_cmd(
    run: Annotated[
        str, typer.Argument(metavar="RUN", help="A training output dir, or a fine-tuned model or LoRA adapter dir.")
    ],
    out: Annotated[Path, typer.Option(help="Output dir: one checkpoint dir alpha-<α>/ per α.")],
    alpha: Annotated[str, typer.Option(help="Comma list of α (0 = base, 1 = tuned).")] = "0.25,0.5,0.75",
    base: Annotated[
        str | None, typer.Option(help=with_default("Base model of a full run.", "from its summary"), show_default=False)
    ] = None,
):
    """WiSE-FT: save θ = (1-α)·θ_base + α·θ_tuned (LoRA: the adapter scaled by α) as standard checkpoints."""
    from ftgen.analysis import interpolate_model
    from ftgen.analysis.common import check_runs_exist, finite
    from ftgen.files import ensure_writable_dir

    alphas = [finite(a, "--alpha") for a in _floats("--alpha", alpha)]
    if not alphas or len(set(alphas)) != len(alphas):
        raise UserError(f"--alpha: give distinct values, got '{alpha}'")
    check_runs_exist([run])
    ensure_writable_dir(out)
    rows = []
    for a in alphas:
        progress.log(f"ftgen: interpolating {run} at alpha {a:g}")
        meta = interpolate_model(run, a, out / f"alpha-{a:g}", base=base)
        rows.append({"alpha": f"{a:g}", "kind": meta["kind"], "base": meta["base"], "model": meta["model_dir"]})
    print_table(f"Interpolations of {run}", rows, ["alpha", "kind", "base", "model"])


def analyze_tradeoff_cmd(
    study: Annotated[Path, typer.Argument(metavar="OUT", help="A study's output directory (its results store).")],
    out: Annotated[
        Path | None,
        typer.Option(
            help=with_default("Also write tradeoff.md, tradeoff.json and tradeoff.png/.svg here.", "print only")
        ),
    ] = None,
):
    """The WiSE-FT trade-off of a study's `interpolate` methods: per α each group's mean score and change vs the
    base with its 95% interval (the report's computed table), and the best α."""
    from ftgen.report import StudyView, Table
    from ftgen.report import text as T
    from ftgen.report.interpolation import points_json, tradeoff
    from ftgen.store import Store

    if out is not None:
        from ftgen.files import ensure_writable_dir

        ensure_writable_dir(out)
    with Store.open_reader(study) as store:
        store.require_sound()
    table = Table(StudyView(study))
    trade = tradeoff(table)
    if trade is None or not trade["points"]:
        raise UserError(f"{study}: no interpolated model evaluated (add {{name: interpolate, of: ft, alphas: [...]}})")
    if banner := table.view.banner():
        print(banner)
    head = T.TRADEOFF_COMPACT_HEAD[2:]
    tables: dict[tuple[str, str], list[dict]] = {}  # one table per (setting, train task): narrow enough for 120
    for setting, task, *row in T.tradeoff_rows(table, trade, compact=True):
        tables.setdefault((setting, task), []).append(dict(zip(head, row, strict=True)))
    for (setting, task), rows in tables.items():
        title = f"{setting}, trained on {task}: mean score ±95% interval (change vs base ±95% interval) per α"
        print_table(title, rows, head, **{h: {"no_wrap": True} for h in head[2:]})  # a cell reads as one unit
    print("*: the change's 95% interval excludes 0")
    print(trade["reading"])
    if out is not None:
        from ftgen.files import atomic_write_json, atomic_write_text
        from ftgen.report.figures import tradeoff_curve

        atomic_write_text(out / "tradeoff.md", T.with_banner(table, T.tradeoff_md(table, trade)))
        atomic_write_json(out / "tradeoff.json", points_json(table, trade))
        tradeoff_curve(table, trade, out / "tradeoff")
        print(f"wrote {out / 'tradeoff.md'}, tradeoff.json and tradeoff.png/.svg")
