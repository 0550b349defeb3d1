"""The `ftgen` command line. Each command wraps a function of the Python API and prints its result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftgen import progress
from ftgen.errors import UserError, one_line

app = typer.Typer(
    help="Measure how fine-tuning a causal LM on one task changes it on its other domains and on other tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Speed benchmarks and the GPU device check (ftgen.bench).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

out = Console(width=None if sys.stdout.isatty() else 150)
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
    out.print(table)


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
            help="hf, or vllm on a GPU (pip install 'ftgen\\[gpu]'). The vllm backend has NOT been run on a GPU by "
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
        if "pred_share" in r:
            r["predicted"] = " / ".join(f"{lab} {v:.0f}%" for lab, v in r["pred_share"].items())
    extra = ["macro_f1", "predicted"] if "pred_share" in rows[0] else ["bleu"]
    columns = ["test_set", "shots", "fmt", "metric", "score", *extra, "n", "truncated", "seconds", "ex_s", "batch"]
    print_table(f"{model} on {task}", rows, columns)
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
        str, typer.Option(help="Batch size of ftgen and lm-eval, or auto (lm-eval's own auto on a GPU; 16 on a CPU).")
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
    batch_size: Annotated[int, typer.Option(help="Effective batch of every trainer.")] = 16,
    baseline: Annotated[
        str, typer.Option(help="Baselines, comma list: trainer (transformers.Trainer), trl (TRL's SFTTrainer).")
    ] = "trainer",
    baseline_micro_batch_size: Annotated[int, typer.Option(help="Micro-batch of the baselines.")] = 4,
    baseline_order: Annotated[
        str, typer.Option(help="ftgen: the baselines get ftgen's batches in its order; random: their own shuffle.")
    ] = "ftgen",
    trl_gradient_checkpointing: Annotated[
        bool, typer.Option(help="TRL's gradient checkpointing (on: TRL's default; off: the same work as ftgen).")
    ] = True,
    micro_batch_size: Annotated[int | None, typer.Option(help="ftgen's micro-batch cap (its default).")] = None,
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
        batch_size=batch_size,
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
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes (a CPU, a smoke test).")] = False,
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
            "rel. weight change": f"{r['weights']['total']['rel_change']:.2e}",
            "cosine": f"{r['weights']['total']['cosine']:.6f}",
            "mean KL": f"{r['outputs']['kl_mean']:.4f}" if "outputs" in r else "-",
            "min CKA": f"{min(r['outputs']['cka_per_layer']):.4f}" if "outputs" in r else "-",
        }
        for name, r in results.items()
    ]
    print_table("Drift from the base model", rows, list(rows[0]))
    print(f"wrote {out / 'drift.json'} and {out / 'drift.png'}")


def _t(help: str, *flags: str):
    """A `train` option whose unset value (None) means: the TrainConfig default (or the --config file)."""
    return typer.Option(*flags, help=help, show_default=False)


def _flag(flag: str, help: str):
    """A `train` on/off flag: just the flag, no --no-X twin."""
    return typer.Option(flag, help=help)


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Output dir: model/, train_summary.json, loss.jsonl/png, checkpoints/.")],
    task: Annotated[str | None, _t("Task to fine-tune on (name or task YAML).")] = None,
    config: Annotated[Path | None, _t("YAML file of training fields; command-line options override it.")] = None,
    model: Annotated[str | None, _t("Model: 'default', an HF id or a local dir. (default: default)")] = None,
    train_set: Annotated[str | None, _t("Train set name or file. (default: the task's in-domain set)")] = None,
    train_size: Annotated[int | None, _t("Train on the first N records. (default: all)")] = None,
    sample_seed: Annotated[int | None, _t("Sample the N records with this seed instead of taking the first N.")] = None,
    allow_smaller: Annotated[bool, _flag("--allow-smaller", "Use all records when the set has fewer than N.")] = False,
    skip_invalid: Annotated[bool, _flag("--skip-invalid", "Drop and count invalid records, do not fail.")] = False,
    data_dir: DataDirOpt = None,
    task_dir: TaskDirOpt = None,
    epochs: Annotated[float | None, _t("Passes over the train set. (default: 2)")] = None,
    max_steps: Annotated[int | None, _t("Stop after N optimizer steps (the schedule too).")] = None,
    lr: Annotated[float | None, _t("Peak learning rate. (default: 2e-5)")] = None,
    lr_schedule: Annotated[str | None, _t("linear, cosine or constant. (default: linear)")] = None,
    warmup_ratio: Annotated[float | None, _t("Fraction of steps spent warming up. (default: 0)")] = None,
    weight_decay: Annotated[float | None, _t("AdamW weight decay. (default: 0)")] = None,
    batch_size: Annotated[int | None, _t("Effective batch (examples per optimizer step). (default: 16)")] = None,
    micro_batch_size: Annotated[int | None, _t("Most examples per forward pass and process. (default: 16)")] = None,
    micro_batch_tokens: Annotated[int | None, _t("Most padded tokens per forward pass. (default: 4096)")] = None,
    max_length: Annotated[int | None, _t("Longest training sequence in tokens. (default: 1024)")] = None,
    prompt_format: Annotated[int | None, _t("Prompt format (template index). (default: 0)")] = None,
    no_group_by_length: Annotated[bool, _flag("--no-group-by-length", "Random order, no length groups.")] = False,
    fticl_shots: Annotated[int | None, _t("FTICL: k in-context examples in each training prompt. (default: 0)")] = None,
    fticl_pool: Annotated[str | None, _t("Few-shot pool for FTICL. (default: the train set's)")] = None,
    lora_r: Annotated[int | None, _t("LoRA rank (unset: full fine-tuning).")] = None,
    lora_alpha: Annotated[float | None, _t("LoRA alpha. (default: 2 x rank)")] = None,
    lora_dropout: Annotated[float | None, _t("LoRA dropout. (default: 0.05)")] = None,
    lora_targets: Annotated[str | None, _t("Comma list of module names to adapt. (default: all-linear)")] = None,
    qlora: Annotated[bool, _flag("--qlora", "4-bit base weights under the LoRA adapter (CUDA only).")] = False,
    gradient_checkpointing: Annotated[bool, _flag("--gradient-checkpointing", "Less memory, more time.")] = False,
    seed: Annotated[int | None, _t("Seed of data order and initialisation. (default: 0)")] = None,
    dtype: Annotated[str | None, _t("Compute dtype: auto, bf16, fp16, fp32. (default: auto)")] = None,
    save_every: Annotated[int | None, _t("Checkpoint every N optimizer steps.")] = None,
    keep_checkpoints: Annotated[int | None, _t("Checkpoints kept while training. (default: 1)")] = None,
    no_clean_checkpoints: Annotated[bool, _flag("--no-clean-checkpoints", "Keep checkpoints/ at the end.")] = False,
    eval_loss: Annotated[bool, _flag("--eval-loss", "Measure the train-set loss before and after training.")] = False,
    resume: Annotated[bool, _flag("--resume", "Continue from the latest checkpoint in --out.")] = False,
):
    """Fine-tune a model on one task's training set (full or LoRA, optionally with in-context examples)."""
    import os

    from ftgen.files import read_yaml
    from ftgen.train import parse_config, train

    values: dict = {}
    if config is not None:
        values = read_yaml(config)
        if not isinstance(values, dict):
            raise UserError(f"{config}: expected a mapping of training fields")
    options = dict(locals())
    valued = ["task", "model", "train_set", "train_size", "sample_seed", "epochs", "max_steps", "lr", "lr_schedule"]
    valued += ["warmup_ratio", "weight_decay", "batch_size", "micro_batch_size", "micro_batch_tokens"]
    valued += ["max_length", "prompt_format"]
    valued += ["fticl_shots", "fticl_pool", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "seed", "dtype"]
    valued += ["save_every", "keep_checkpoints"]
    values |= {name: options[name] for name in valued if options[name] is not None}
    for name in ["allow_smaller", "skip_invalid", "qlora", "gradient_checkpointing", "eval_loss"]:
        if options[name]:
            values[name] = True
    if no_group_by_length:
        values["group_by_length"] = False
    if no_clean_checkpoints:
        values["clean_checkpoints"] = False
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    if task_dir:
        values["task_dirs"] = [str(d) for d in task_dir]
    if "task" not in values:
        raise UserError("give --task (or a --config file naming the task)")
    cfg = parse_config(values, str(config) if config else "train options")
    s = train(cfg, out, resume=resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch, process 0 reports
        return
    epochs = f" (epoch means {s['loss_first_epoch']:.4f} -> {s['loss_last_epoch']:.4f})" if s["epochs"] > 1 else ""
    print(
        f"trained {s['kind']} {s['task']}/{s['train_set']} ({s['records']} records, {s['steps']} steps, "
        f"{s['compute_dtype']}): loss {s['loss_first']:.4f} -> {s['loss_last']:.4f} per step{epochs}, "
        f"{s['tokens_per_s']:.0f} tokens/s, {s['elapsed_s']:.1f}s training"
    )
    if s["loss_before"] is not None:
        print(f"train-set loss per response token: {s['loss_before']:.4f} before, {s['loss_after']:.4f} after")
    print(f"model: {s['model_dir']}")


@app.command("study")
def study_cmd(
    config: Annotated[Path, typer.Argument(help="Study YAML: models, train tasks and sizes, methods, evaluation.")],
    out: Annotated[
        Path | None, typer.Option(help="Output dir: results.sqlite, runs/, report/. (default: runs/NAME)")
    ] = None,
    data_dir: DataDirOpt = None,
    dry_run: Annotated[bool, _flag("--dry-run", "Print the grid and a time estimate; run nothing.")] = False,
    limit: Annotated[int | None, typer.Option(help="Records per test set (overrides eval.limit).")] = None,
    executor: Annotated[str | None, typer.Option(help="local or ray (overrides executor:).")] = None,
    rerun_changed: Annotated[
        bool, typer.Option(help="Recompute finished results whose config changed (the old ones are kept, superseded).")
    ] = False,
):
    """Run a whole study: every training run and evaluation cell of the grid, resumable after any kill."""
    from ftgen.study import fmt_seconds, load_plan, print_dry_run, run_study

    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor: unknown executor '{executor}' (use local or ray)")
    if dry_run:
        plan = load_plan(config, data_dir, limit=limit, executor=executor)
        print_dry_run(plan, out or Path("runs") / plan.cfg.name)
        return
    if out is None:
        from ftgen.config import load_study

        out = Path("runs") / load_study(config).name
    s = run_study(config, out, data_dir=data_dir, limit=limit, executor=executor, rerun_changed=rerun_changed)
    runs, cells = s["runs"], s["cells"]
    print(
        f"study {s['name']}: {runs['done']} training runs and {cells['done']} evaluation cells done, "
        f"{runs['failed']} + {cells['failed']} failed, in {fmt_seconds(s['seconds'])}; "
        f"results in {out / 'results.sqlite'}"
    )
    print(f"next: ftgen report {out}")
    if runs["failed"] or cells["failed"]:
        print(
            f"ftgen: some units failed: see ftgen status {out}; rerun the same command to retry them", file=sys.stderr
        )
        raise typer.Exit(1)


@app.command("status")
def status_cmd(
    out: Annotated[Path, typer.Argument(help="A study's output dir.")],
    check: Annotated[
        bool, _flag("--check", "Also check the store's integrity and every saved model (exit 1 on a problem).")
    ] = False,
):
    """Done / running / failed / pending training runs and evaluation cells of a study (safe while it runs)."""
    from ftgen.study import check_study, fmt_seconds, study_status

    s = study_status(out)
    rows = [{"": table, **{k: v for k, v in c.items() if k != "superseded" or v}} for table, c in s["counts"].items()]
    print_table(f"Study {s['name']} in {out}", rows, list(dict.fromkeys(k for r in rows for k in r)))
    print(f"compute time of the done units: {fmt_seconds(s['compute_s'])}")
    print(f"study process: {s['writer'] or 'none (not running)'}")
    for slot in s["running"]:
        print(f"running: {slot}" if s["writer"] else f"stale (its process died; redone on the next run): {slot}")
    for slot, error in s["failed"]:
        print(f"failed: {slot}: {error}")
    if check:
        c = check_study(out)
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
    """Tables (markdown, CSV, LaTeX), heatmaps and plots of a study, and one self-contained report.html."""
    from ftgen.report import write_report

    r = write_report(out, to)
    out_console = Console(width=None if sys.stdout.isatty() else 200)
    out_console.print(r["terminal"])
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
