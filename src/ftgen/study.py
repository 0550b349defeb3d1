"""A study: the whole grid of one YAML, run into a crash-proof results store. The recipe, top to bottom:

    plan   = load_plan(config, data_dir)          # validate, expand the grid, key every unit (ftgen.plan)
    store  = Store.open_writer(out)                # lock, stale `running` -> `pending` (ftgen.store)
    check_changes(store, plan)                     # a finished unit computed otherwise: refuse (or supersede)
    store.name_run_dirs()                          # runs/<key> of an older study -> runs/<readable name>
    selected = select_units(plan, only, ...)       # `--only TASK`: a subset (ftgen.plan); else everything
    Driver(plan, store, executor, selected).run()  # skip done units, run the rest (ftgen.driver, ftgen.units)
    save_calibration(...)                          # measured vs estimated seconds (ftgen.costs)
    write_export(store, out / "export")            # with `export: true` (ftgen.export)

Order (local executor, one worker): the base model's cells first, then for each training run: train,
then evaluate it on every cell. Each model is loaded once for all its cells. With several workers (or
Ray) units run as soon as a worker is free and their model exists. In-context examples at test time are
the first k of the test set's own few-shot pool, as in the paper.
"""

from __future__ import annotations

import time
from pathlib import Path

from ftgen import __version__, progress
from ftgen.config import check_out_dir
from ftgen.costs import save_calibration
from ftgen.driver import Driver
from ftgen.executors import UnitBodies, make_executor
from ftgen.export import write_export
from ftgen.files import atomic_write_text, ensure_writable_dir, read_text
from ftgen.plan import Plan, check_changes, check_only, load_plan, select_units
from ftgen.store import Store, canonical_json, remove_leftovers


def run_study(
    config_path: str | Path,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    executor: str | None = None,
    rerun_changed: bool = False,
    only: list[str] | None = None,
    units: UnitBodies | None = None,
) -> dict:
    """The whole study: plan, lock the store, run what is not done, record. Returns a summary.
    `only`: task names: run that subset (ftgen.plan.select_units), leave the rest pending.
    `units`: the unit bodies to run (default ftgen.units.Units; tests pass stand-ins)."""
    from ftgen.units import Units

    t0 = time.perf_counter()
    plan = load_plan(config_path, data_dir, limit=limit, executor=executor)
    check_out_dir(out, plan.resolved.data_dir)
    if only:
        check_only(plan, only)  # a wrong task name: refused before anything is written
    out = ensure_writable_dir(out, "study output directory")
    for note in plan.notes:
        progress.log(f"study: note: {note}")
    with Store.open_writer(out) as store:
        remove_leftovers(out)
        changed = check_changes(store, plan, rerun_changed=rerun_changed)
        record_plan(store, plan, read_text(config_path))
        store.name_run_dirs()  # a study from before readable run names: runs/<key> -> runs/<name>
        selected = select_units(plan, only, store.trained_runs()) if only else None
        before = store.counts()
        subset = f"; --only {','.join(only)}: {len(selected)} of them" if selected is not None else ""
        progress.log(
            f"study {plan.cfg.name}: {len(plan.runs)} training runs, {len(plan.cells)} evaluation cells{subset}; "
            f"{before['runs']['done']} runs and {before['cells']['done']} cells already done; executor "
            f"{plan.cfg.executor}"
        )
        ex = make_executor(plan.cfg, units or Units())
        driver = Driver(plan, store, ex, selected)
        try:
            counts = driver.run()
        finally:
            ex.shutdown()
            save_calibration(plan, store, driver.finished)
        after = store.counts()
        exported = write_export(store, out / "export") if plan.cfg.export else None
    left = sum(1 for s in (*plan.runs, *plan.cells) if selected is not None and s.key not in selected)
    return {
        "name": plan.cfg.name,
        "out": str(out),
        "seconds": time.perf_counter() - t0,
        "did": counts,
        "runs": after["runs"],
        "cells": after["cells"],
        "changed": changed,
        "not_selected": left,
        "export": exported,
    }


def record_plan(store: Store, plan: Plan, config_text: str) -> None:
    """The planned rows (new ones `pending`), the config and where the data is; study.yaml beside the store."""
    store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
    store.set_meta("study", plan.cfg.name)
    store.set_meta("config", canonical_json(plan.cfg.model_dump()))
    store.set_meta("data_dir", str(plan.resolved.data_dir))
    store.set_meta("ftgen_version", __version__)
    atomic_write_text(store.out_dir / "study.yaml", config_text)
