"""`ftgen study`, `ftgen status` and `ftgen export`: run a study's grid, see where it stands, write its results
as plain files. ftgen.cli registers these functions as commands."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ftgen import progress
from ftgen.cli_common import DataDirOpt, console, csv_values, from_env, print_table, switch, with_default
from ftgen.errors import UserError, one_line


def study_cmd(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="Study YAML: models, train tasks and sizes, methods, evaluation.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help=with_default("Output dir: results.sqlite, runs/, report/.", "runs/NAME"), show_default=False),
    ] = None,
    data_dir: DataDirOpt = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help=with_default(
                "Run a subset, leave the rest pending: the training runs on TASK with all their cells, and the "
                "cells on TASK's test sets of the base model and of runs already trained (never trains a run on "
                "another task). Repeatable or comma list.",
                "the whole grid",
            ),
            show_default=False,
            metavar="TASK",
        ),
    ] = None,
    dry_run: Annotated[bool, switch("--dry-run", "Print the grid, a time and a disk estimate; run nothing.")] = False,
    calibrate: Annotated[
        bool,
        switch(
            "--calibrate",
            "With --dry-run: time a few batches of each kind of unit with the study's model on this device "
            "(minutes on a CPU), and estimate from those rates (cached for later dry runs).",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Records per test set (overrides eval.limit).")] = None,
    executor: Annotated[str | None, typer.Option(help="local or ray (overrides executor:).")] = None,
    rerun_changed: Annotated[
        bool, switch("--rerun-changed", "Recompute finished results whose config changed (the old ones are kept).")
    ] = False,
):
    """Run a whole study: every training run and evaluation cell of the grid, resumable after any kill."""
    from ftgen.config import check_out_dir
    from ftgen.plan import check_only, load_plan, load_study

    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor: unknown executor '{executor}' (use local or ray)")
    if calibrate and not dry_run:
        raise UserError("--calibrate: only with --dry-run (it measures this machine for the estimate)")
    if data_dir is not None and from_env(ctx, "data_dir") and load_study(config).data_dir is not None:
        data_dir = None  # the study names its data: FTGEN_DATA_DIR is only the fallback
    tasks = csv_values(only)
    plan = load_plan(config, data_dir, limit=limit, executor=executor, allow_random=dry_run)
    out = out or Path("runs") / plan.cfg.name
    check_out_dir(out, plan.resolved.data_dir)
    if tasks:
        check_only(plan, tasks)
    if dry_run:
        print_dry_run(plan, out, tasks, calibrate=calibrate)
        return
    from ftgen.study import run_study

    s = run_study(
        config, out, data_dir=data_dir, limit=limit, executor=executor, rerun_changed=rerun_changed, only=tasks
    )
    runs, cells = s["runs"], s["cells"]
    print(
        f"study {s['name']}: {runs['done']} training runs and {cells['done']} evaluation cells done, "
        f"{runs['failed']} + {cells['failed']} failed, in {progress.fmt_seconds(s['seconds'])}; "
        f"results in {out / 'results.sqlite'}"
    )
    if s["not_selected"]:
        print(
            f"--only {','.join(tasks)}: {s['not_selected']} units left pending; the same command without --only "
            "runs them"
        )
    if s["export"]:
        print(f"export: {s['export']['dir']} ({s['export']['cells']} cells, {s['export']['records']} predictions)")
    print(f"next: ftgen report {out}")
    if runs["failed"] or cells["failed"]:
        print(
            f"ftgen: some units failed: see ftgen status {out}; rerun the same command to retry them", file=sys.stderr
        )
        raise typer.Exit(1)


def print_dry_run(plan, out: Path, only: list[str] | None = None, *, calibrate: bool = False) -> None:
    """The grid, the counts, the time estimate and the disk estimate (stdout). `calibrate`: the rates measured
    on this device first (ftgen.study_rates); else cached ones if any, else the cost model's constants."""
    from ftgen.costs import disk_estimate, estimate
    from ftgen.plan import select_units
    from ftgen.store import Store
    from ftgen.study_rates import cached_rates, calibrate_plan, unit_rates

    done: set[str] = set()
    trained: set[str] = set()
    if (out / "results.sqlite").exists():
        with Store.open_reader(out) as store, store.readable():
            done = {r["key"] for t in ("runs", "cells") for r in store.rows(t, "status='done'")}
            trained = store.trained_runs()
    if only:  # what --only leaves for later is not in this run's estimate
        done |= {s.key for s in (*plan.runs, *plan.cells)} - select_units(plan, only, trained)
    cfg = plan.cfg
    console.print(
        f"study [bold]{cfg.name}[/]: models {', '.join(cfg.models)}; data {plan.resolved.data_dir}; "
        f"executor {cfg.executor}",
        highlight=False,
    )
    if plan.runs:
        rows = [
            {"run (its directory under runs/)": r.dir_name, "model": r.model, "k": r.fticl_k or "-"}
            | {"state": "done" if r.key in done else "to do"}
            for r in plan.runs
        ]
        print_table("Training runs", rows, list(rows[0]))
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
        console.print(f"note: {note}", highlight=False)
    measured = calibrate_plan(plan, log=progress.log) if calibrate else cached_rates(plan)
    est = estimate(plan, done, unit_rates(measured))
    _print_estimate(plan, done, out, est)
    if measured:
        _print_measured(est, measured, fresh=calibrate)
    _print_disk(disk_estimate(plan))


def _print_estimate(plan, done: set[str], out: Path, est: dict) -> None:
    n_done = len([r for r in plan.runs if r.key in done]), len([c for c in plan.cells if c.key in done])
    print(f"{len(plan.runs)} training runs, {len(plan.cells)} evaluation cells")
    if any(n_done):
        print(f"done or left for later in {out}: {n_done[0]} training runs, {n_done[1]} evaluation cells")
    how = (
        f"calibrated by the study '{est['calibration'].get('study')}' measured on this machine"
        if est["calibrated"]
        else "throughput constants of the default model on a shared 2-core CPU"
    )
    at_once = f", {est['at_once']} units at once" if est["at_once"] > 1 else ""
    fmt = progress.fmt_seconds
    if est["measured"]:
        how = f"rates measured on this machine for {', '.join(est['measured'])}"
        if est["calibrated"] or len(est["measured"]) < len(plan.cfg.models):
            how += "; other models: the CPU constants, scaled by parameter count"
        print(
            f"estimate: ~{fmt(est['total_s'])} (compute: training ~{fmt(est['train_s'])}, evaluation "
            f"~{fmt(est['eval_s'])}{at_once}); a cost model from character counts, {how}"
        )
        return
    print(
        f"estimate: ~{fmt(est['total_s'])} on this machine's CPU (compute: training ~{fmt(est['train_s'])}, "
        f"evaluation ~{fmt(est['eval_s'])}{at_once}); a cost model from character counts, {how}, scaled by "
        "parameter count (GPUs not modelled; --calibrate measures this machine)"
    )


def _print_measured(est: dict, measured: dict, fresh: bool) -> None:
    """Per unit kind: units, compute time and peak memory; then each model's rates and where they come from."""
    from ftgen.costs import fmt_bytes

    fmt = progress.fmt_seconds
    names = {"train": "training runs", "classify": "classification cells", "generate": "generation cells"}
    for kind, name in names.items():
        if est["units"][kind]:
            peaks = [m.peak_bytes[kind] for m in measured.values() if kind in m.peak_bytes]
            peak = f", peak memory ~{fmt_bytes(max(peaks))} a unit" if peaks else ", peak memory not measured"
            print(f"  {name}: {est['units'][kind]}, compute ~{fmt(est['by_kind'][kind])}{peak}")
    if est["load_s"]:
        print(f"  loading models for evaluation: ~{fmt(est['load_s'])}")
    for m in measured.values():
        r = m.rates
        when = "just now" if fresh else time.strftime("%Y-%m-%d %H:%M", time.localtime(m.when)) + " (cached)"
        print(
            f"  {m.model} on {m.device}, {m.dtypes}, measured {when}: training {r.train_tokens_s:.4g} tokens/s, "
            f"prefill {r.prefill_tokens_s:.4g} tokens/s, decoding {r.decode_steps_s:.4g} batch steps/s, "
            f"load {r.load_s:.1f}s (tokens as the cost model counts them: characters / 3.6)"
        )
        for note in m.notes:
            print(f"  note: {note}")


def _print_disk(d: dict) -> None:
    from ftgen.costs import fmt_bytes

    kept = "all kept" if d["keep_models"] else f"keep_models: false: at most {d['models_alive']} at once"
    print(
        f"disk: ~{fmt_bytes(d['total_bytes'])} at the peak: the trained models ~{fmt_bytes(d['models_bytes'])} "
        f"({d['runs']} runs, {kept}; a full fine-tune keeps an fp32 checkpoint, 4 B x params; a LoRA run its "
        f"adapter), plus ~{fmt_bytes(d['checkpoints_bytes'])} of checkpoints while a run trains (weights and "
        "AdamW state, keep_checkpoints + 1 at once)"
    )
    for line in d["models"]:
        print(f"  {line}")


def status_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="A study's output dir.")],
    check: Annotated[
        bool, switch("--check", "Also check the store's integrity and every saved model (exit 1 on a problem).")
    ] = False,
):
    """Where a study stands (safe while it runs): per model and training run its state, steps, elapsed time,
    ETA and cells; the study's ETA; with --check, the store's integrity."""
    from ftgen.store import Store, db_path

    try:
        store = Store.open_reader(out)
    except UserError as e:
        if not (check and db_path(out).exists()):
            raise
        return _print_check({"problems": [str(e)], "notes": []})  # a store that does not open: one problem
    with store:
        if not check:
            return _print_status(store, out)
        try:
            _print_status(store, out)
        except UserError as e:  # a damaged store: the check below names each problem
            print(f"status: {e}")
        _print_check(store.check())


def _print_status(store, out: Path) -> None:
    from ftgen.status import fmt_eta, study_progress

    s = store.status()
    print(f"Study {s['name']} in {out}")
    rows = [{"": table, **{k: v for k, v in c.items() if k != "superseded" or v}} for table, c in s["counts"].items()]
    print_table("", rows, list(dict.fromkeys(k for r in rows for k in r)))
    p = study_progress(store, time.time())
    table = [
        {
            "model / training run": r.name,
            "state": r.state,
            "steps": f"{r.steps[0]}/{r.steps[1]}" if r.steps else "-",
            "elapsed": progress.fmt_seconds(r.elapsed_s) if r.elapsed_s else "-",
            "ETA": fmt_eta(r.eta_s) if r.state in ("running", "pending", "failed") else "-",
            "cells": f"{r.cells[0]}/{r.cells[1]}",
        }
        for r in p.rows
    ]
    if table:
        right = {"justify": "right"}
        print_table("", table, list(table[0]), steps=right, elapsed=right, ETA=right, cells=right)
    if p.eta_s is None:
        print(f"ETA of the study: {p.eta_note}")
    else:
        left = f"~{progress.fmt_seconds(p.eta_s)} ({p.eta_note})" if p.eta_s >= 1 else "nothing left"
        print(f"ETA of the study: {left}")
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


def export_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="A study's output dir.")],
    to: Annotated[
        Path | None, typer.Option(help=with_default("Where the export goes.", "OUT/export"), show_default=False)
    ] = None,
    data_dir: DataDirOpt = None,
):
    """Write results.json (schema: ftgen/schemas/results.schema.json) and one predictions.jsonl per done cell
    (id, prompt hash, input fields, gold, prediction, label scores or generated text, the record's score)."""
    from ftgen.export import write_export
    from ftgen.files import ensure_writable_dir
    from ftgen.store import Store

    target = to or out / "export"
    with Store.open_reader(out) as store:
        store.require_sound()  # a damaged store: refused in one line
        fallback = data_dir if data_dir is not None and from_env(ctx, "data_dir") else None
        ensure_writable_dir(target.parent, "export directory")
        e = write_export(store, target, None if fallback else data_dir, fallback)
    print(f"export: {e['dir']}/results.json and {e['cells']} cells' predictions.jsonl ({e['records']} records)")
