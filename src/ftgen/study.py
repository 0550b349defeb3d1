"""A study: the whole grid of one YAML, run into a crash-proof results store. The recipe, top to bottom:

    plan   = load_plan(config, data_dir)          # validate, expand the grid, key every unit (ftgen.plan)
    store  = Store.open_writer(out)                # lock, stale `running` -> `pending` (ftgen.store)
    check_changes(store, plan)                     # a finished unit computed otherwise: refuse (or supersede)
    Driver(plan, store, executor).run()            # skip done units, run the rest (ftgen.driver, ftgen.units)
    save_calibration(...)                          # measured vs estimated seconds (ftgen.costs)

Order (local executor, one worker): the base model's cells first, then for each training run: train,
then evaluate it on every cell. Each model is loaded once for all its cells. With several workers (or
Ray) units run as soon as a worker is free and their model exists. In-context examples at test time are
the first k of the test set's own few-shot pool, as in the paper.
"""

from __future__ import annotations

import time
from pathlib import Path

from ftgen import progress
from ftgen.config import check_out_dir
from ftgen.costs import save_calibration
from ftgen.driver import Driver
from ftgen.executors import UnitBodies, make_executor
from ftgen.files import atomic_write_text, ensure_writable_dir, read_text
from ftgen.plan import Plan, check_changes, load_plan
from ftgen.store import Store, canonical_json, remove_leftovers


def run_study(
    config_path: str | Path,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    executor: str | None = None,
    rerun_changed: bool = False,
    units: UnitBodies | None = None,
) -> dict:
    """The whole study: plan, lock the store, run what is not done, record. Returns a summary.
    `units`: the unit bodies to run (default ftgen.units.Units; tests pass stand-ins)."""
    from ftgen.units import Units

    t0 = time.perf_counter()
    plan = load_plan(config_path, data_dir, limit=limit, executor=executor)
    check_out_dir(out, plan.resolved.data_dir)
    out = ensure_writable_dir(out, "study output directory")
    for note in plan.notes:
        progress.log(f"study: note: {note}")
    with Store.open_writer(out) as store:
        remove_leftovers(out)
        changed = check_changes(store, plan, rerun_changed=rerun_changed)
        record_plan(store, plan, read_text(config_path))
        before = store.counts()
        progress.log(
            f"study {plan.cfg.name}: {len(plan.runs)} training runs, {len(plan.cells)} evaluation cells; "
            f"{before['runs']['done']} runs and {before['cells']['done']} cells already done; executor "
            f"{plan.cfg.executor}"
        )
        ex = make_executor(plan.cfg, units or Units())
        driver = Driver(plan, store, ex)
        try:
            counts = driver.run()
        finally:
            ex.shutdown()
            save_calibration(plan, store, driver.finished)
        after = store.counts()
    return {
        "name": plan.cfg.name,
        "out": str(out),
        "seconds": time.perf_counter() - t0,
        "did": counts,
        "runs": after["runs"],
        "cells": after["cells"],
        "changed": changed,
    }


def record_plan(store: Store, plan: Plan, config_text: str) -> None:
    """The planned rows (new ones `pending`), the config and where the data is; study.yaml beside the store."""
    store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
    store.set_meta("study", plan.cfg.name)
    store.set_meta("config", canonical_json(plan.cfg.model_dump()))
    store.set_meta("data_dir", str(plan.resolved.data_dir))
    atomic_write_text(store.out_dir / "study.yaml", config_text)
