"""The `ftgen` command line. Each command wraps a function of the Python API and prints its result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftgen import progress
from ftgen.cli_train import train_command
from ftgen.errors import UserError, one_line

app = typer.Typer(
    help="Measure how fine-tuning a causal LM on one task changes it on its other domains and on other tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Benchmarks (their code is in benchmarks/ of the source checkout).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console(width=None if sys.stdout.isatty() else 150)
TaskDirOpt = Annotated[list[Path] | None, typer.Option("--task-dir", help="Directory of user task YAML files.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory in the paper layout.")]


@app.callback()
def _root(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")] = False):
    if quiet:  # never un-quiet: FTGEN_QUIET=1 holds too
        progress.set_quiet(True)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    console.print(table)


@app.command("tasks")
def tasks_cmd(task_dir: TaskDirOpt = None):
    """List the built-in and user tasks."""
    from ftgen.tasks import all_tasks

    rows = [
        {
            "name": name,
            "kind": t.kind,
            "fields": ", ".join(t.fields),
            "labels": " / ".join(t.labels),
            "metric": t.metric,
            "formats": len(t.templates),
            "from": origin,
        }
        for name, (t, origin) in sorted(all_tasks(task_dir).items())
    ]
    print_table("Tasks", rows, ["name", "kind", "fields", "labels", "metric", "formats", "from"])


@data_app.command("check")
def data_check_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Data directory in the paper layout.")],
    task_dir: TaskDirOpt = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first invalid record instead of counting.")] = False,
):
    """Validate every file of a data directory; print sets, sizes and label balance."""
    from ftgen.data import check_data_dir
    from ftgen.tasks import all_tasks

    tasks = [t for t, _ in all_tasks(task_dir).values()]
    rows = check_data_dir(data_dir, tasks, skip_invalid=not strict)
    print_table(f"Data in {data_dir}", rows, ["task", "set", "role", "records", "invalid", "ignored", "labels"])
    bad = [r for r in rows if r["invalid"]]
    for r in bad:
        for p in r["problems"]:
            print(f"invalid: {p}", file=sys.stderr)
    ignored = sum(r["ignored"] for r in rows)
    print(
        f"{len(rows)} files, {sum(r['records'] for r in rows)} usable records, "
        f"{sum(r['invalid'] for r in rows)} invalid, {ignored} with an ignored label"
    )
    if bad:
        raise typer.Exit(1)


@app.command("models")
def models_cmd():
    """Show the default model, the cached models and the compute dtype chosen for this machine."""
    from ftgen.models import DEFAULT_MODEL, cache_dir, choose_dtype, default_device

    models = cache_dir() / "models"
    cached = sorted(p.name for p in models.iterdir() if (p / "config.json").exists()) if models.is_dir() else []
    device = default_device()
    print(f"default model: {DEFAULT_MODEL} ({'cached' if DEFAULT_MODEL in cached else 'built on first use'})")
    print(f"cache: {models}")
    for name in cached:
        print(f"  {name}")
    print(f"device: {device}, dtype: {str(choose_dtype('auto', device)).removeprefix('torch.')}")


@app.command("prepare")
def prepare_cmd(data_dir: DataDirOpt = None, task_dir: TaskDirOpt = None):
    """Build the default model's cached checkpoint and (with --data-dir) validate the data."""
    from ftgen.models import default_model_dir

    print(f"default model: {default_model_dir()}")
    if data_dir is not None:
        data_check_cmd(data_dir, task_dir)


def _csv(values: list[str] | str | None) -> list[str]:
    """Values of a repeatable and/or comma-separated option, flattened."""
    items = [values] if isinstance(values, str) else values or []
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


def _ints(option: str, values: list[str] | str | None) -> list[int]:
    try:
        return [int(v) for v in _csv(values)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated integers, got '{values}'") from None


@app.command("eval")
def eval_cmd(
    task: Annotated[str, typer.Option(help="Task of the test sets (name or task YAML).")],
    out: Annotated[Path, typer.Option(help="Output dir: TEST_SET/shots<k>_fmt<f>/{metrics.json,predictions.jsonl}.")],
    model: Annotated[
        str, typer.Option(help="default, a HF model id, a checkpoint dir or a PEFT adapter dir.")
    ] = "default",
    test_set: Annotated[
        list[str] | None,
        typer.Option(
            "--test-set", help="Test set names in --data-dir or files; repeatable or comma list. [default: all]"
        ),
    ] = None,
    shots: Annotated[str, typer.Option(help="In-context examples per prompt (first k of the pool), comma list.")] = "0",
    prompt_format: Annotated[str, typer.Option("--prompt-format", help="Prompt formats, comma list.")] = "0",
    limit: Annotated[int | None, typer.Option(help="First N raw records of each test set (the paper: 250).")] = None,
    data_dir: DataDirOpt = None,
    scoring: Annotated[
        str, typer.Option(help="Label scoring: sum, mean (per token) or first-token (the paper).")
    ] = "sum",
    batch_size: Annotated[int, typer.Option(help="Records per forward pass.")] = 16,
    shot_seed: Annotated[
        int | None, typer.Option(help="Sample the shots with this seed instead of the first k.")
    ] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Drop and count invalid records instead of failing.")] = False,
    dtype: Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32.")] = "auto",
    max_length: Annotated[int | None, typer.Option(help="Longest prompt in tokens (longer: truncated).")] = None,
    backend: Annotated[str, typer.Option(help="hf, or vllm on a GPU (pip install 'ftgen[gpu]').")] = "hf",
    task_dir: TaskDirOpt = None,
):
    """Evaluate one model on test sets of a task, 0-shot and k-shot; print a summary table."""
    from ftgen.evaluate import run_eval

    rows = run_eval(
        model,
        task,
        out,
        data_dir=data_dir,
        test_sets=_csv(test_set) or None,
        shots=_ints("--shots", shots),
        fmts=_ints("--prompt-format", prompt_format),
        limit=limit,
        scoring=scoring,
        batch_size=batch_size,
        shot_seed=shot_seed,
        skip_invalid=skip_invalid,
        dtype=dtype,
        max_length=max_length,
        backend=backend,
        task_dirs=task_dir,
    )
    for r in rows:
        if "pred_share" in r:
            r["predicted"] = " / ".join(f"{lab} {v:.0f}%" for lab, v in r["pred_share"].items())
    extra = ["macro_f1", "predicted"] if "pred_share" in rows[0] else ["bleu"]
    columns = ["test_set", "shots", "fmt", "metric", "score", *extra, "n", "truncated", "seconds", "ex_s"]
    print_table(f"{model} on {task}", rows, columns)
    print(f"wrote {Path(out) / 'summary.json'}")


def _benchmark(name: str):
    """Import benchmarks/NAME.py of the source checkout this ftgen runs from."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    if not path.exists():
        raise UserError(f"{path}: benchmarks run from ftgen's source checkout (pip install -e .)")
    module_name = f"ftgen_benchmarks_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@bench_app.command("eval")
def bench_eval_cmd(
    data_dir: DataDirOpt = None,
    records: Annotated[int, typer.Option(help="Records per classification test set.")] = 100,
    shots: Annotated[int, typer.Option(help="In-context examples (classification).")] = 4,
    sets: Annotated[str, typer.Option(help="Classification test sets, TASK:SET comma list.")] = (
        "sentiment:sst2,inference:multinli,detection:qqp"
    ),
    gen_set: Annotated[str, typer.Option(help="Generation test set, TASK:SET.")] = "question:socialqa",
    gen_records: Annotated[int, typer.Option(help="Records of the generation benchmark.")] = 24,
    gen_shots: Annotated[int, typer.Option(help="In-context examples (generation).")] = 1,
    gen_dtype: Annotated[str, typer.Option(help="dtype of the generation benchmark (identity needs fp32).")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="Batch size of ftgen and lm-eval.")] = 16,
    dtype: Annotated[str, typer.Option(help="dtype of the classification benchmark (agreement needs fp32).")] = "fp32",
    lm_eval_tokenization: Annotated[
        str, typer.Option(help="ftgen: lm-eval gets ftgen's segment-wise token ids; native: stock HFLM.")
    ] = "ftgen",
    only: Annotated[str | None, typer.Option(help="Run one part only: classification or generation.")] = None,
):
    """ftgen vs lm-evaluation-harness (k-shot classification) and batched vs one-by-one generate."""
    bench = _benchmark("bench_eval")
    if only not in (None, "classification", "generation"):
        raise UserError(f"--only: use classification or generation, not '{only}'")
    bench.run(
        data_dir=data_dir or bench.DEFAULT_DATA,
        records=records,
        shots=shots,
        sets=_csv(sets),
        gen_set=gen_set,
        gen_records=gen_records,
        gen_shots=gen_shots,
        gen_dtype=gen_dtype,
        batch_size=batch_size,
        dtype=dtype,
        lm_eval_tokenization=lm_eval_tokenization,
        parts=(only,) if only else ("classification", "generation"),
    )


@bench_app.command("train")
def bench_train_cmd(
    data_dir: DataDirOpt = None,
    task: Annotated[str, typer.Option(help="Task whose in-domain train set is used.")] = "sentiment",
    records: Annotated[int, typer.Option(help="Training records (one epoch).")] = 128,
    max_length: Annotated[int, typer.Option(help="Longest training sequence in tokens.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Effective batch of both trainers.")] = 16,
    baseline_micro_batch_size: Annotated[int, typer.Option(help="Micro-batch of the Trainer baseline.")] = 4,
    micro_batch_size: Annotated[int | None, typer.Option(help="ftgen's micro-batch cap (its default).")] = None,
    micro_batch_tokens: Annotated[int | None, typer.Option(help="ftgen's token cap (its default).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of both trainers.")] = 2e-5,
    model: Annotated[str, typer.Option(help="Model to fine-tune.")] = "default",
    repeat: Annotated[int, typer.Option(help="Rounds, alternating which trainer goes first; best time.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Also write the numbers to this JSON file.")] = None,
):
    """ftgen's trainer vs a plain transformers.Trainer on the same epoch: tokens/s, losses, MFU."""
    bench = _benchmark("bench_train")
    bench.run(
        data_dir=data_dir or bench.DEFAULT_DATA,
        task=task,
        records=records,
        max_length=max_length,
        batch_size=batch_size,
        baseline_micro_batch_size=baseline_micro_batch_size,
        micro_batch_size=micro_batch_size,
        micro_batch_tokens=micro_batch_tokens,
        lr=lr,
        model=model,
        repeat=repeat,
        out=out,
    )


analyze_app = typer.Typer(help="How far fine-tuning moved a model from its base.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("drift")
def analyze_drift_cmd(
    runs: Annotated[list[str], typer.Argument(help="Training output dirs (holding model/) or model dirs.")],
    base: Annotated[str, typer.Option(help="The base model the runs started from.")] = "default",
    data_dir: DataDirOpt = None,
    probe_tasks: Annotated[str, typer.Option(help="Comma list of tasks to probe with (default: all).")] = "",
    per_task: Annotated[int, typer.Option(help="Probe records per task.")] = 8,
    out: Annotated[Path, typer.Option(help="Where drift.json and drift.png go.")] = Path("runs/drift"),
    task_dir: TaskDirOpt = None,
):
    """Weight drift per layer / module, KL to the base on a probe set, and per-layer CKA."""
    from ftgen.analysis import analyze_drift, write_drift_report
    from ftgen.files import ensure_writable_dir
    from ftgen.models import load_model
    from ftgen.tasks import all_tasks, load_task

    for run in runs:
        if not Path(run).exists():
            raise UserError(f"{run}: no such run or model directory")
    names = [n for n in probe_tasks.split(",") if n] or sorted(all_tasks(task_dir))
    tasks = [load_task(n, task_dir) for n in names]
    ensure_writable_dir(out)
    base_model = load_model(base, dtype="fp32")  # fp32: bf16 rounding would hide small fine-tuning updates
    results = {}
    for run in runs:
        progress.log(f"ftgen: analysing {run}")
        results[Path(run).name] = analyze_drift(
            run, base, data_dir=data_dir, tasks=tasks, per_task=per_task, base_model=base_model
        )
    write_drift_report(results, out)
    rows = [
        {
            "run": name,
            "mean |Δw|": f"{r['weights']['total']['mean_abs_change']:.3e}",
            "rel. weight change": f"{r['weights']['total']['rel_change']:.2e}",
            "cosine": f"{r['weights']['total']['cosine']:.6f}",
            "mean KL": f"{r['outputs']['kl_mean']:.4f}" if "outputs" in r else "-",
            "min CKA": f"{min(r['outputs']['cka_per_layer']):.4f}" if "outputs" in r else "-",
        }
        for name, r in results.items()
    ]
    print_table("Drift from the base model", rows, list(rows[0]))
    print(f"wrote {out / 'drift.json'} and {out / 'drift.png'} (.svg)")


def _flag(flag: str, help: str):
    """An on/off flag: just the flag, no --no-X twin."""
    return typer.Option(flag, help=help)


app.command("train")(train_command())


# ---------------------------------------------------------------- studies


@app.command("study")
def study_cmd(
    config: Annotated[Path, typer.Argument(help="Study YAML: models, train tasks and sizes, methods, evaluation.")],
    out: Annotated[
        Path | None, typer.Option(help="Output dir: results.sqlite, runs/, report/. (default: runs/NAME)")
    ] = None,
    data_dir: DataDirOpt = None,
    dry_run: Annotated[bool, _flag("--dry-run", "Print the grid and a time estimate; run nothing.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Records per test set (overrides eval.limit).")] = None,
    executor: Annotated[str | None, typer.Option(help="local or ray (overrides executor:).")] = None,
    rerun_changed: Annotated[
        bool, typer.Option(help="Recompute finished results whose config changed (the old ones are kept, superseded).")
    ] = False,
):
    """Run a whole study: every training run and evaluation cell of the grid, resumable after any kill."""
    from ftgen.config import check_out_dir
    from ftgen.plan import load_plan
    from ftgen.study import run_study

    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor: unknown executor '{executor}' (use local or ray)")
    plan = load_plan(config, data_dir, limit=limit, executor=executor)
    out = out or Path("runs") / plan.cfg.name
    check_out_dir(out, plan.resolved.data_dir)
    if dry_run:
        print_dry_run(plan, out)
        return
    s = run_study(config, out, data_dir=data_dir, limit=limit, executor=executor, rerun_changed=rerun_changed)
    runs, cells = s["runs"], s["cells"]
    print(
        f"study {s['name']}: {runs['done']} training runs and {cells['done']} evaluation cells done, "
        f"{runs['failed']} + {cells['failed']} failed, in {progress.fmt_seconds(s['seconds'])}; "
        f"results in {out / 'results.sqlite'}"
    )
    print(f"next: ftgen report {out}")
    if runs["failed"] or cells["failed"]:
        print(
            f"ftgen: some units failed: see ftgen status {out}; rerun the same command to retry them", file=sys.stderr
        )
        raise typer.Exit(1)


def _num(x: float) -> str:
    return f"{x:g}"


def print_dry_run(plan, out: Path) -> None:
    """The grid, the counts and the time estimate (stdout)."""
    from ftgen.costs import estimate
    from ftgen.store import Store

    done: set[str] = set()
    if (out / "results.sqlite").exists():
        with Store.open_reader(out) as store, store.readable():
            done = {r["key"] for t in ("runs", "cells") for r in store.rows(t, "status='done'")}
    cfg = plan.cfg
    console.print(
        f"study [bold]{cfg.name}[/]: models {', '.join(cfg.models)}; data {plan.resolved.data_dir}; "
        f"executor {cfg.executor}"
    )
    if plan.runs:
        columns = ["key", "model", "task/set", "size", "method", "k", "lr", "epochs", "seed", "state"]
        rows = [
            [r.key, r.model, f"{r.train_task}/{r.train_set}", r.size, r.method, r.fticl_k or "-"]
            + [_num(r.lr), _num(r.epochs), r.seed, "done" if r.key in done else "to do"]
            for r in plan.runs
        ]
        print_table("Training runs", [dict(zip(columns, row, strict=True)) for row in rows], columns)
    rows = []
    for tname, sets in plan.resolved.test_sets.items():
        for s in sets:
            cells = [c for c in plan.cells if c.test_task == tname and c.test_set == s]
            rows.append(
                {
                    "test set": f"{tname}/{s}",
                    "shots": ", ".join(map(str, sorted({c.shots for c in cells}))),
                    "formats": ", ".join(map(str, sorted({c.fmt for c in cells}))),
                    "models": len({c.run.key if c.run else c.model for c in cells}),
                    "cells": len(cells),
                }
            )
    print_table("Evaluation cells", rows, ["test set", "shots", "formats", "models", "cells"])
    for note in plan.notes:
        console.print(f"note: {note}")
    _print_estimate(plan, done, out, estimate(plan, done))


def _print_estimate(plan, done: set[str], out: Path, est: dict) -> None:
    n_done = len([r for r in plan.runs if r.key in done]), len([c for c in plan.cells if c.key in done])
    print(f"{len(plan.runs)} training runs, {len(plan.cells)} evaluation cells")
    if any(n_done):
        print(f"already done in {out}: {n_done[0]} training runs, {n_done[1]} evaluation cells")
    how = (
        f"calibrated by the study '{est['calibration'].get('study')}' measured on this machine"
        if est["calibrated"]
        else "throughput constants of the default model on a shared 2-core CPU"
    )
    at_once = f", {est['at_once']} units at once" if est["at_once"] > 1 else ""
    fmt = progress.fmt_seconds
    print(
        f"estimate: ~{fmt(est['total_s'])} on this machine's CPU (compute: training ~{fmt(est['train_s'])}, "
        f"evaluation ~{fmt(est['eval_s'])}{at_once}); a cost model from character counts, {how}, scaled by "
        "parameter count (GPUs not modelled)"
    )


@app.command("status")
def status_cmd(
    out: Annotated[Path, typer.Argument(help="A study's output dir.")],
    check: Annotated[
        bool, _flag("--check", "Also check the store's integrity and every saved model (exit 1 on a problem).")
    ] = False,
):
    """Done / running / failed / pending training runs and evaluation cells of a study (safe while it runs)."""
    from ftgen.store import Store, db_path

    try:
        store = Store.open_reader(out)
    except UserError as e:
        if not (check and db_path(out).exists()):
            raise
        return _print_check({"problems": [str(e)], "notes": []})  # a store that does not open: one problem
    with store:
        if not check:
            return _print_status(store.status(), out)
        try:
            _print_status(store.status(), out)
        except UserError as e:  # a damaged store: the check below names each problem
            print(f"status: {e}")
        _print_check(store.check())


def _print_status(s: dict, out: Path) -> None:
    rows = [{"": table, **{k: v for k, v in c.items() if k != "superseded" or v}} for table, c in s["counts"].items()]
    print_table(f"Study {s['name']} in {out}", rows, list(dict.fromkeys(k for r in rows for k in r)))
    print(f"compute time of the done units: {progress.fmt_seconds(s['compute_s'])}")
    print(f"study process: {s['writer'] or 'none (not running)'}")
    for slot in s["running"]:
        print(f"running: {slot}" if s["writer"] else f"stale (its process died; redone on the next run): {slot}")
    for slot, error in s["failed"]:
        print(f"failed: {slot}: {one_line(error or '')}")


def _print_check(c: dict) -> None:
    for note in c["notes"]:
        print(f"check: note: {note}")
    for problem in c["problems"]:
        print(f"check: PROBLEM: {problem}")
    if c["problems"]:
        raise typer.Exit(1)
    print(f"check: ok (store integrity, {c['runs_checked']} saved models match their manifests)")


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Argument(help="A study's output dir.")],
    to: Annotated[Path | None, typer.Option(help="Where the report goes. (default: OUT/report)")] = None,
):
    """A study's headline, intervals, flags, the paper's claims checked and provenance: tables (markdown, CSV,
    LaTeX), figures (PNG, SVG) and one self-contained report.html; a compact summary here."""
    from ftgen.report import write_report
    from ftgen.store import Store

    with Store.open_reader(out) as store:
        store.require_sound()  # a damaged store: refused in one line, not a traceback halfway through
    r = write_report(out, to)
    Console(width=report_width(), soft_wrap=False).print(r["terminal"])
    print("every table, figure, the claims and the provenance are in:")
    print(f"report: {r['html']}")


def report_width() -> int | None:
    """The summary's width: $COLUMNS when set (also when piped: tee, SLURM logs), the terminal's, else 120."""
    import os

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 40:
        return int(columns)
    return None if sys.stdout.isatty() else 120


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        print(f"ftgen: error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ftgen: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        from ftgen.files import write_error_line

        if line := write_error_line(e):  # a full disk or a read-only place, met after the up-front checks
            print(f"ftgen: error: {line}", file=sys.stderr)
            sys.exit(2)
        # click's usage errors (typer may vendor its own click, so match by shape, not by class)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"ftgen: error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        if type(e).__name__ == "Abort":
            print("ftgen: interrupted", file=sys.stderr)
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------- analyses: layers, attention, interpolation


def _floats(option: str, values: str) -> list[float]:
    try:
        return [float(v) for v in _csv(values)]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got '{values}'") from None


@analyze_app.command("layers")
def analyze_layers_cmd(
    runs: Annotated[list[str], typer.Argument(help="Training output dirs (holding model/ and train_summary.json).")],
    base: Annotated[str | None, typer.Option(help="Base model. (default: the one in each run's summary)")] = None,
    data_dir: DataDirOpt = None,
    probe_tasks: Annotated[str, typer.Option(help="Comma list of tasks to probe with (default: all).")] = "",
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


@analyze_app.command("attention")
def analyze_attention_cmd(
    models: Annotated[list[str], typer.Argument(help="Models: run dirs, model dirs, default or HF ids.")],
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


@analyze_app.command("interpolate")
def analyze_interpolate_cmd(
    run: Annotated[str, typer.Argument(help="A training output dir, or a fine-tuned model or LoRA adapter dir.")],
    out: Annotated[Path, typer.Option(help="Output dir: one checkpoint dir alpha-<α>/ per α.")],
    alpha: Annotated[str, typer.Option(help="Comma list of α (0 = base, 1 = tuned).")] = "0.25,0.5,0.75",
    base: Annotated[str | None, typer.Option(help="Base model of a full run. (default: from its summary)")] = None,
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
