"""A real study killed with SIGKILL at random moments, once and twenty times in a row, then resumed: the results
equal an uninterrupted run's, and every resume passes `ftgen status --check`. Apart from test_study.py so that the
two slowest tests of the suite run on another worker than the rest of the study tests (pytest-xdist, by file)."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_study import N_CELLS, TINY, _results, _write_config

from helpers import run_cli


def kill_seed() -> int:
    """The seed of a kill test's choices: $FTGEN_KILL_SEED replays one, else a fresh one; printed either way."""
    value = os.environ.get("FTGEN_KILL_SEED")
    seed = int(value) if value else random.randrange(10**6)
    print(f"kill seed {seed} (FTGEN_KILL_SEED={seed} replays these choices)", flush=True)
    return seed


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _all_gone(pids: set[int], within: float) -> bool:
    """True once none of `pids` runs; a zombie (exited, not yet reaped: a container's PID 1 may never
    reap orphans) counts as gone."""

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + within
    while any(running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """Poll `ready()` while `proc` runs; False if it ended (or the time ran out) first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_uninterrupted(paper_data, tmp_path, uninterrupted):
    """Killed twice at seeded moments, then resumed with the same command: the results (scores, per-record
    log-probs, the saved models' file hashes) equal an uninterrupted run's. Kill 1 comes mid-training (after a
    checkpoint: the last step, the final save or the drift analysis), kill 2 while the trained models' cells
    run. Run with 2 worker processes of 1 thread (the local run: 1 process): a killed study leaves no worker."""
    _, _, expected = uninterrupted
    cfg = _write_config(tmp_path, {**TINY, "workers": 2, "threads": 1})
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ftgen", "study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)]
    env = {**os.environ, "FTGEN_QUIET": "1"}
    rng = random.Random(kill_seed())
    tuned_done = "SELECT COUNT(*) FROM cells WHERE status='done' AND run_key IS NOT NULL"
    kills = []
    for phase in ("training", "tuned-eval"):
        if phase == "training":
            ready = lambda: any(out.glob("runs/*/checkpoints/step-*"))  # noqa: E731
        else:  # 10 tuned cells: kill with at least 3 left, so that 2 workers cannot finish them within the delay
            target = min(_store_count(out, tuned_done) + rng.randint(1, 4), 7)
            ready = lambda target=target: _store_count(out, tuned_done) >= target  # noqa: E731
        delay = rng.uniform(0.0, 1.0)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not _wait_until(proc, ready):
            proc.kill()
            pytest.fail(f"the study ended before its {phase} phase: {proc.communicate()[1][-2000:]}")
        time.sleep(delay)
        assert proc.poll() is None, f"the study ended within {delay:.2f}s of its {phase} phase (kills so far {kills})"
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'")
        kills.append(f"{phase}+{delay:.2f}s ({done} cells done)")
        print(f"kill {len(kills)}: {kills[-1]}", flush=True)
        assert _all_gone(workers, within=10), "a worker outlived the killed study"
    assert len(kills) == 2
    status = run_cli("status", str(out))  # readable after the kills, without the lock
    assert status.returncode == 0 and "study process: none" in status.stdout, status.stderr
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (kills, proc.stderr[-3000:])
    got = _results(out)
    assert got == expected, f"killed at {kills}"
    # the same command once more: nothing to do, nothing changes
    again = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out))
    assert again.returncode == 0 and _results(out) == got
    status = run_cli("status", str(out))
    assert re.search(r"runs\s*│\s*0\s*│\s*0\s*│\s*2\s*│\s*0", status.stdout), status.stdout


def _store_count(out: Path, sql: str) -> int:
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


# When to kill: right away (start-up, model loading, base-model cells), once a training run is running
# (training steps, checkpoint saves, the final save, drift), once a trained model's cells are running.
PHASES = {
    "start": None,
    "training": "SELECT COUNT(*) FROM runs WHERE status='running'",
    "tuned-eval": "SELECT COUNT(*) FROM cells WHERE status='running' AND run_key IS NOT NULL",
}


@pytest.mark.slow
def test_twenty_kills_in_a_row_with_readers_each_resume_passes_the_check(paper_data, tmp_path, uninterrupted):
    """kill -9 20 times in one run: the study in each phase (see PHASES) and, every 4th time, `ftgen report`.
    While some studies run, `ftgen status` and `ftgen report` read the live store. After each kill
    `ftgen status --check` passes; at the end the results equal an uninterrupted run's."""
    _, _, expected = uninterrupted
    cfg = _write_config(tmp_path, TINY)
    out = tmp_path / "out"
    study = [sys.executable, "-m", "ftgen", "study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)]
    report = [sys.executable, "-m", "ftgen", "report", str(out), "--to", str(tmp_path / "report")]
    env = {**os.environ, "FTGEN_QUIET": "1"}
    seed = kill_seed()
    rng = random.Random(seed)
    kills: list[str] = []
    readers = 0
    for attempt in range(100):
        if len(kills) == 20:
            break
        target = "report" if len(kills) % 4 == 3 and (out / "results.sqlite").exists() else "study"
        finished = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'") == N_CELLS
        # once all is done, what is left to kill is a no-op rerun: its start-up and store writes
        phase = "report" if target == "report" else "start" if finished else rng.choice(list(PHASES))
        proc = subprocess.Popen(
            study if target == "study" else report, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.monotonic()
        if PHASES.get(phase):  # wait for the phase (it may never come: the study finished that part)
            while proc.poll() is None and not _store_count(out, PHASES[phase]) and time.monotonic() - t0 < 300:
                time.sleep(0.1)
        # a no-op rerun of a finished study imports no torch: it is over in well under a second
        low, high = (0.05, 1.0) if finished and target == "study" else (0.3, 4.0 if finished else 8.0)
        moment = rng.uniform(low, high)
        t1 = time.monotonic()
        if target == "study" and attempt % 3 == 0:  # readers of the live store: never fail, never block it
            for args in (["status", str(out)], ["report", str(out), "--to", str(tmp_path / f"live{attempt}")]):
                r = run_cli(*args)
                assert r.returncode == 0 or "no study results here" in r.stderr, (args, r.stderr[-2000:])
                readers += 1
        try:
            proc.wait(timeout=max(moment - (time.monotonic() - t1), 0.01))
            assert proc.returncode == 0, f"{target} failed on its own (seed {seed})"
            continue  # finished before its moment: not a kill
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if not (out / "results.sqlite").exists():
            continue
        runs = _store_count(out, "SELECT COUNT(*) FROM runs WHERE status='done'")
        cells = _store_count(out, "SELECT COUNT(*) FROM cells WHERE status='done'")
        kills.append(f"{phase}+{moment:.1f}s (then {runs} runs, {cells} cells done)")
        check = run_cli("status", str(out), "--check")
        assert check.returncode == 0 and "check: ok" in check.stdout, (kills, seed, check.stdout[-2000:])
    assert len(kills) == 20, (kills, seed)
    proc = subprocess.run(study, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (kills, seed, proc.stderr[-3000:])
    assert _results(out) == expected, (kills, seed)
    check = run_cli("status", str(out), "--check")
    assert check.returncode == 0 and "check: ok" in check.stdout and "note" not in check.stdout, check.stdout
    print(f"seed {seed}: {len(kills)} kills, {readers} concurrent readers: " + "; ".join(kills))
