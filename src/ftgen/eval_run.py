"""`ftgen eval`: check every input up front, load the model once, evaluate each (test set, shots, format) cell,
write OUT/<test_set>/shots<k>_fmt<f>/{metrics.json,predictions.jsonl} and merge OUT/summary.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ftgen.errors import UserError
from ftgen.evaluate import BACKENDS, SCORING, evaluate, write_eval_outputs
from ftgen.files import atomic_write_json, ensure_writable_dir
from ftgen.memory import check_batch_size
from ftgen.progress import score_text
from ftgen.tasks import TaskDef


@dataclass
class EvalCell:
    """One (test set, shots, prompt format) of an `ftgen eval` run, loaded and checked."""

    test_set: str
    records: list[dict]
    report: object  # ftgen.data.LoadReport
    shots: list[dict]
    k: int
    fmt: int


def plan_eval(
    task: TaskDef,
    data_dir: str | Path | None,
    test_sets: list[str] | None,
    shots: list[int],
    fmts: list[int],
    *,
    limit: int | None = None,
    skip_invalid: bool = False,
    shot_seed: int | None = None,
) -> list[EvalCell]:
    """Load and check every test set, pool and format up front, so bad input fails before the model loads."""
    from ftgen.data import load_pool, load_test_set, scan_task_files
    from ftgen.prompts import select_shots

    if not shots:
        raise UserError("--shots: give at least one number of in-context examples")
    if not fmts:
        raise UserError("--prompt-format: give at least one prompt format")
    for f in fmts:
        if not 0 <= f < len(task.templates):
            raise UserError(
                f"prompt format {f} does not exist for task '{task.name}' "
                f"(it has {len(task.templates)}: 0..{len(task.templates) - 1})"
            )
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if not test_sets:
        if data_dir is None:
            raise UserError("give --test-set, or --data-dir to evaluate every test set of the task")
        test_sets = sorted(scan_task_files(data_dir, task).test)
        if not test_sets:
            raise UserError(f"no test sets for task '{task.name}' in {data_dir}")
    cells = []
    for name in dict.fromkeys(test_sets):
        ds = load_test_set(data_dir, task, name, limit=limit, skip_invalid=skip_invalid)
        pool = load_pool(data_dir, task, name).records if any(shots) else []
        for k in dict.fromkeys(shots):
            chosen = select_shots(pool, k, shot_seed)
            cells += [EvalCell(ds.name, ds.records, ds.report, chosen, k, f) for f in dict.fromkeys(fmts)]
    return cells


def load_set(data_dir: str | Path, task_name: str, test_set: str, limit: int | None, k: int):
    """(task, the first `limit` usable records of a test set, the first k examples of its pool): one cell's
    input, for benchmarks and calibration (invalid records are skipped)."""
    from ftgen.data import load_pool, load_test_set
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    task = load_task(task_name)
    records = load_test_set(data_dir, task, test_set, limit=limit, skip_invalid=True).records
    pool = load_pool(data_dir, task, test_set).records if k else []
    return task, records, select_shots(pool, k)


def _check_options(model_name: str, scoring: str, backend: str, batch_size, max_length, dtype: str):
    """The options that need no file: one UserError line naming the flag. Returns the checked batch size."""
    from ftgen.models import choose_dtype, is_random_model

    if is_random_model(model_name):
        raise UserError(
            f"--model {model_name}: random weights are for benchmarks and calibration only (ftgen bench), "
            "never for stored results"
        )
    if scoring not in SCORING:
        raise UserError(f"--scoring: unknown rule '{scoring}' (use {', '.join(SCORING)})")
    if backend not in BACKENDS:
        raise UserError(f"--backend: unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    batch_size = check_batch_size(batch_size, "--batch-size")
    if max_length is not None and max_length < 1:
        raise UserError(f"--max-length must be >= 1, got {max_length}")
    choose_dtype(dtype)  # an unknown dtype fails here, before anything is loaded
    return batch_size


def _check_first_tokens(model_name: str, task: TaskDef, fmts: list[int]) -> None:
    """First-token scoring refused, from the tokenizer alone, for labels that start with the same token."""
    from ftgen.models import load_tokenizer
    from ftgen.prompts import check_first_token_scoring

    check_first_token_scoring(load_tokenizer(model_name), task, fmts, model_name)


def _load(model_name: str, dtype: str, backend: str):
    from ftgen.models import load_model
    from ftgen.vllm_backend import load_vllm

    try:
        if backend == "vllm":
            return load_vllm(model_name, dtype)
        return load_model(model_name, dtype=dtype, verbose=True)
    except UserError:
        raise
    except Exception as e:  # a broken checkpoint fails in many ways; the user needs the one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load model '{model_name}': {first}") from None


def run_eval(
    model_name: str,
    task_name: str,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    test_sets: list[str] | None = None,
    shots: Sequence[int] = (0,),
    fmts: Sequence[int] = (0,),
    limit: int | None = None,
    scoring: str = "sum",
    batch_size: int | str = "auto",
    shot_seed: int | None = None,
    skip_invalid: bool = False,
    dtype: str = "auto",
    max_length: int | None = None,
    backend: str = "hf",
    task_dirs: list[str | Path] | None = None,
) -> list[dict]:
    """What `ftgen eval` does: check all input, load the model once, evaluate every (test set, shots, format).

    Writes OUT/<test_set>/shots<k>_fmt<f>/{metrics.json,predictions.jsonl} and OUT/summary.json;
    returns the summary rows. `batch_size`: a number or "auto" (ftgen.memory).
    """
    from ftgen.progress import log
    from ftgen.tasks import load_task

    batch_size = _check_options(model_name, scoring, backend, batch_size, max_length, dtype)
    task = load_task(task_name, task_dirs)
    cells = plan_eval(
        task, data_dir, test_sets, list(shots), list(fmts), limit=limit, skip_invalid=skip_invalid, shot_seed=shot_seed
    )
    for ds_name, report in {c.test_set: c.report for c in cells}.items():
        if report.invalid or report.ignored:
            log(f"ftgen: {ds_name}: {report.kept} records kept ({report.invalid} invalid, {report.ignored} unlabelled)")
    if scoring == "first-token" and task.kind == "classification":
        _check_first_tokens(model_name, task, list(fmts))
    ensure_writable_dir(out)  # before the model loads: a read-only --out fails at once
    model, tokenizer = _load(model_name, dtype, backend)

    out = Path(out)
    rows = []
    for c in cells:
        result = evaluate(
            model,
            tokenizer,
            task,
            c.records,
            shots=c.shots,
            fmt=c.fmt,
            scoring=scoring,
            batch_size=batch_size,
            max_length=max_length,
            backend=backend,
            data_report=c.report,
            desc=f"{c.test_set} {c.k}-shot fmt {c.fmt}",
        )
        report = {k: v for k, v in vars(c.report).items() if k != "problems"}
        result.metrics.update(
            model=model_name, test_set=c.test_set, data=report, shot_ids=[s["id"] for s in c.shots], shot_seed=shot_seed
        )
        cell_dir = out / c.test_set / f"shots{c.k}_fmt{c.fmt}"
        write_eval_outputs(result, cell_dir)
        rows.append(_summary_row(model_name, task, c, result.metrics, cell_dir))
        m = result.metrics
        dropped = f", {m['n_dropped']} dropped" if m["n_dropped"] else ""
        log(f"ftgen: {c.test_set} {c.k}-shot fmt {c.fmt}: {m['metric']} {score_text(m)} ({m['n']} scored{dropped})")
    _update_summary(out / "summary.json", rows)
    return rows


def _summary_row(model_name: str, task: TaskDef, c: EvalCell, m: dict, cell_dir: Path) -> dict:
    row = {
        "model": model_name,
        "task": task.name,
        "test_set": c.test_set,
        "shots": c.k,
        "fmt": c.fmt,
        "metric": m["metric"],
        "score": round(m["score"], 2),
        "ci_low": round(m["ci_low"], 2),
        "ci_high": round(m["ci_high"], 2),
        "n": m["n"],
        "n_scored": m["n_scored"],
        "n_dropped": m["n_dropped"],
        "dropped": m["dropped"],
        "truncated": m["truncated"],
        "seconds": m["seconds"],
        "ex_s": m["examples_per_s"],
        "batch": m["batch_size"],
        "dir": str(cell_dir),
    }
    if task.kind == "classification":
        row["macro_f1"] = round(m["macro_f1"], 2)
        row["pred_share"] = {lab: round(v, 1) for lab, v in m["pred_share"].items()}
    else:
        row["bleu"] = round(m["bleu"], 2)
    return row


def _update_summary(path: Path, rows: list[dict]) -> None:
    """Merge rows into OUT/summary.json: several `ftgen eval` runs (tasks, models) may share one OUT."""

    def key(r: dict) -> tuple:
        return r.get("model"), r.get("task"), r.get("test_set"), r.get("shots"), r.get("fmt")

    try:
        previous = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    except (OSError, ValueError, AttributeError):
        previous = []  # unreadable: rewritten from this run's rows
    new = {key(r) for r in rows}
    atomic_write_json(path, {"rows": [r for r in previous if key(r) not in new] + rows})
