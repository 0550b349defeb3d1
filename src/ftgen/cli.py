"""The `ftgen` command line. Each command wraps a function of the Python API and prints its result.

Conventions shared by every command (ftgen.cli_common): `-h` / `--help`, `--version`, plain-text help with
`[default: X]`, `--x/--no-x` switches, `--batch-size` = records per forward pass, FTGEN_DATA_DIR as the
default of `--data-dir`. The study commands live in ftgen.cli_study, `ftgen train` in ftgen.cli_train, the
analyses beyond drift in ftgen.cli_analyze.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ftgen import __version__, cli_analyze, cli_study, progress
from ftgen.cli_common import DATA_DIR_ENV, DataDirOpt, TaskDirOpt, make_console, print_table, switch, with_default
from ftgen.cli_common import csv_values as _csv
from ftgen.cli_common import int_values as _ints
from ftgen.cli_train import train_command
from ftgen.errors import UserError, one_line

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
app = typer.Typer(
    help="Measure how fine-tuning a causal LM on one task changes it on its other domains and on other tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help is plain text: a bracket such as ftgen[gpu] prints as written
    context_settings=CONTEXT,
)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Speed benchmarks and the GPU device check (ftgen.bench).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        print(f"ftgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="No progress bars or status lines.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print ftgen's version and exit.")
    ] = False,
):
    if quiet:  # never un-quiet: FTGEN_QUIET=1 holds too
        progress.set_quiet(True)


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
    data_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="DATA_DIR",
            envvar=DATA_DIR_ENV,
            show_envvar=True,
            help="Data directory in the paper layout.",
            show_default=False,
        ),
    ] = None,
    task_dir: TaskDirOpt = None,
    strict: Annotated[bool, switch("--strict", "Fail on the first invalid record instead of counting.")] = False,
):
    """Validate every file of a data directory; print sets, sizes and label balance.

    Exit 0 when every problem found is one a study handles (an invalid record: skip_invalid drops and counts
    it), 1 when a file has no usable record, 2 when a file cannot be read at all."""
    if data_dir is None:
        raise UserError(f"give the data directory (DATA_DIR, or set {DATA_DIR_ENV})")
    raise typer.Exit(check_data(data_dir, task_dir, strict))


def check_data(data_dir: Path, task_dir: list[Path] | None, strict: bool = False) -> int:
    """`ftgen data check`: the table, every problem (stderr), a verdict; returns the exit code."""
    from ftgen.data import check_data_dir
    from ftgen.tasks import all_tasks

    tasks = [t for t, _ in all_tasks(task_dir).values()]
    rows = check_data_dir(data_dir, tasks, skip_invalid=not strict)
    print_table(f"Data in {data_dir}", rows, ["task", "set", "role", "records", "invalid", "ignored", "labels"])
    ignored = sum(r["ignored"] for r in rows)
    invalid = sum(r["invalid"] for r in rows)
    print(
        f"{len(rows)} files, {sum(r['records'] for r in rows)} usable records, {invalid} invalid, "
        f"{ignored} with an ignored label"
    )
    for r in rows:
        for p in r["problems"]:
            print(f"invalid: {p}", file=sys.stderr)
        if r["invalid"] > len(r["problems"]):
            print(f"invalid: {r['file']}: and {r['invalid'] - len(r['problems'])} more", file=sys.stderr)
    empty = [r for r in rows if r["records"] == 0]
    for r in empty:
        print(f"problem: {r['file']}: no usable record: no study can use it", file=sys.stderr)
    if empty:
        print(f"{len(empty)} files have no usable record: fix or remove them")
        return 1
    if invalid:
        print(
            f"ok for a study: it drops and counts the {invalid} invalid records (skip_invalid: true, the default of "
            "eval; train_args: {skip_invalid: true} for training; ftgen eval / train --skip-invalid)"
        )
    return 0


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
    """Build the default model's cached checkpoint and (with --data-dir) validate the data (as ftgen data check)."""
    from ftgen.models import default_model_dir

    print(f"default model: {default_model_dir()}")
    if data_dir is not None:
        raise typer.Exit(check_data(data_dir, task_dir))


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
        str,
        typer.Option(
            help="Label scoring: sum, mean (per token) or first-token (the paper; refused for labels that start "
            "with the same token)."
        ),
    ] = "sum",
    batch_size: Annotated[
        str,
        typer.Option(
            help="Records per forward pass, or auto: the largest that fits on a GPU (halving on out-of-memory), "
            "16 on a CPU. Results do not depend on it (bf16 rounding aside)."
        ),
    ] = "auto",
    shot_seed: Annotated[
        int | None, typer.Option(help="Sample the shots with this seed instead of the first k.")
    ] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Drop and count invalid records instead of failing.")] = False,
    dtype: Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32.")] = "auto",
    max_length: Annotated[int | None, typer.Option(help="Longest prompt in tokens (longer: truncated).")] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="hf, or vllm on a GPU (pip install 'ftgen[gpu]'). The vllm backend has NOT been run on a GPU by "
            "this project: only its contract with vLLM's documented API is tested."
        ),
    ] = "hf",
    task_dir: TaskDirOpt = None,
):
    """Evaluate one model on test sets of a task, 0-shot and k-shot; print a summary table."""
    from ftgen.eval_run import run_eval

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
        reasons = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r["dropped"].items() if v)
        r["dropped"] = f"{r['n_dropped']} ({reasons})" if reasons else "0"
        r["score [95% interval]"] = progress.score_text(r)
        if "pred_share" in r:
            r["predicted"] = " / ".join(f"{lab} {v:.0f}%" for lab, v in r["pred_share"].items())
    extra = ["predicted"] if "pred_share" in rows[0] else []  # macro-F1, BLEU (no interval here): in summary.json
    columns = ["test_set", "shots", "fmt", "score [95% interval]", *extra, "n_scored", "dropped", "truncated"]
    columns += ["seconds"]  # examples/s and the batch size: in summary.json
    wide = {"score [95% interval]": {"no_wrap": True}}
    print_table(f"{model} on {task}: {rows[0]['metric']}", rows, columns, **wide)  # one task: one metric
    print(f"wrote {Path(out) / 'summary.json'}")


def _bench_batch(value: str) -> int | str:
    from ftgen.memory import check_batch_size

    return check_batch_size(value, "--batch-size")


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
    batch_size: Annotated[
        str,
        typer.Option(
            help="Examples per forward pass of ftgen and lm-eval, or auto (lm-eval's own auto on a GPU; 16 on a CPU)."
        ),
    ] = "auto",
    dtype: Annotated[str, typer.Option(help="dtype of the classification benchmark (agreement needs fp32).")] = "fp32",
    lm_eval_tokenization: Annotated[
        str, typer.Option(help="ftgen: lm-eval gets ftgen's segment-wise token ids; native: stock HFLM.")
    ] = "ftgen",
    only: Annotated[str | None, typer.Option(help="Run one part only: classification or generation.")] = None,
    model: Annotated[str, typer.Option(help="Model: default, a HF id, a checkpoint, or random:CONFIG.")] = "default",
):
    """ftgen vs lm-evaluation-harness (k-shot classification) and batched vs one-by-one generate."""
    from ftgen.bench import eval as bench

    if only not in (None, "classification", "generation"):
        raise UserError(f"--only: use classification or generation, not '{only}'")
    bench.run(
        data_dir=data_dir,
        records=records,
        shots=shots,
        sets=_csv(sets),
        gen_set=gen_set,
        gen_records=gen_records,
        gen_shots=gen_shots,
        gen_dtype=gen_dtype,
        batch_size=_bench_batch(batch_size),
        dtype=dtype,
        lm_eval_tokenization=lm_eval_tokenization,
        parts=(only,) if only else ("classification", "generation"),
        model=model,
    )


@bench_app.command("train")
def bench_train_cmd(
    data_dir: DataDirOpt = None,
    task: Annotated[str, typer.Option(help="Task whose in-domain train set is used.")] = "sentiment",
    records: Annotated[int, typer.Option(help="Training records (one epoch).")] = 128,
    max_length: Annotated[int, typer.Option(help="Longest training sequence in tokens.")] = 512,
    effective_batch_size: Annotated[int, typer.Option(help="Examples per optimizer step of every trainer.")] = 16,
    baseline: Annotated[
        str, typer.Option(help="Baselines, comma list: trainer (transformers.Trainer), trl (TRL's SFTTrainer).")
    ] = "trainer",
    baseline_micro_batch_size: Annotated[int, typer.Option(help="Examples per forward pass of the baselines.")] = 4,
    baseline_order: Annotated[
        str, typer.Option(help="ftgen: the baselines get ftgen's batches in its order; random: their own shuffle.")
    ] = "ftgen",
    trl_gradient_checkpointing: Annotated[
        bool, typer.Option(help="TRL's gradient checkpointing (on: TRL's default; off: the same work as ftgen).")
    ] = True,
    micro_batch_size: Annotated[
        int | None, typer.Option(help="ftgen's cap on examples per forward pass (its default).")
    ] = None,
    micro_batch_tokens: Annotated[int | None, typer.Option(help="ftgen's token cap (its default).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of every trainer.")] = 2e-5,
    model: Annotated[str, typer.Option(help="Model to fine-tune (random:CONFIG too).")] = "default",
    dtype: Annotated[str, typer.Option(help="Compute dtype: auto, bf16, fp16, fp32.")] = "auto",
    repeat: Annotated[int, typer.Option(help="Rounds, rotating which trainer goes first; best time.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Also write the numbers to this JSON file.")] = None,
):
    """ftgen's trainer vs transformers.Trainer / TRL's SFTTrainer on the same batches: tokens/s, losses, MFU."""
    from ftgen.bench import train as bench

    bench.run(
        data_dir=data_dir,
        task=task,
        records=records,
        max_length=max_length,
        batch_size=effective_batch_size,
        baseline_micro_batch_size=baseline_micro_batch_size,
        micro_batch_size=micro_batch_size,
        micro_batch_tokens=micro_batch_tokens,
        lr=lr,
        model=model,
        repeat=repeat,
        baselines=tuple(_csv(baseline)),
        dtype=dtype,
        out=out,
        baseline_order=baseline_order,
        trl_checkpointing=trl_gradient_checkpointing,
    )


@bench_app.command("gpu")
def bench_gpu_cmd(
    out: Annotated[Path, typer.Option(help="Where the check writes its files and summary.json.")] = Path(
        "runs/bench-gpu"
    ),
    data_dir: DataDirOpt = None,
    quick: Annotated[bool, typer.Option("--quick/--no-quick", help="Tiny sizes (a CPU, a smoke test).")] = False,
    steps: Annotated[str, typer.Option(help="Comma list of steps.")] = "models,eval,train,estimate,study",
    paper_config: Annotated[Path, typer.Option(help="The study config to estimate.")] = Path("configs/paper.yaml"),
):
    """The device check, ~10 minutes on one GPU: models, eval at auto vs 16, bench train, a calibrated estimate.

    Also: the paper grid's estimate from rates measured with a random-weight 7B model, and a timed small study;
    one summary at the end. --quick: tiny sizes, for a CPU."""
    from ftgen.bench import gpu

    gpu.run(out, data_dir, quick=quick, steps=tuple(_csv(steps)), paper_config=paper_config)


analyze_app = typer.Typer(help="How far fine-tuning moved a model from its base.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("drift")
def analyze_drift_cmd(
    runs: Annotated[
        list[str], typer.Argument(metavar="RUN...", help="Training output dirs (holding model/) or model dirs.")
    ],
    base: Annotated[str, typer.Option(help="The base model the runs started from.")] = "default",
    data_dir: DataDirOpt = None,
    probe_tasks: Annotated[
        str, typer.Option(help=with_default("Comma list of tasks to probe with.", "all"), show_default=False)
    ] = "",
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


app.command("train")(train_command())
app.command("study")(cli_study.study_cmd)
app.command("status")(cli_study.status_cmd)
app.command("export")(cli_study.export_cmd)
analyze_app.command("layers")(cli_analyze.analyze_layers_cmd)
analyze_app.command("attention")(cli_analyze.analyze_attention_cmd)
analyze_app.command("interpolate")(cli_analyze.analyze_interpolate_cmd)
analyze_app.command("tradeoff")(cli_analyze.analyze_tradeoff_cmd)


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="A study's output dir.")],
    to: Annotated[
        Path | None, typer.Option(help=with_default("Where the report goes.", "OUT/report"), show_default=False)
    ] = None,
):
    """A study's headline, intervals, flags, the paper's claims checked and provenance: tables (markdown, CSV,
    LaTeX), figures (PNG, SVG) and one self-contained report.html; a compact summary here."""
    from ftgen.report import write_report
    from ftgen.store import Store

    with Store.open_reader(out) as store:
        store.require_sound()  # a damaged store: refused in one line, not a traceback halfway through
    r = write_report(out, to)
    make_console().print(r["terminal"])  # $COLUMNS when set (also piped: tee, SLURM logs), else 120 piped
    print("every table, figure, the claims and the provenance are in:")
    print(f"report: {r['html']}")


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
