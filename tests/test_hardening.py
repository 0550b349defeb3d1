"""A read-only or full output place: one clear line, exit 2 (or the unit recorded as failed), nothing
half-written left visible. Real filesystems: tmpfs mounts (root, as in CI); skipped where mounting is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ftgen.store import Store
from helpers import assert_user_error, run_cli, run_cli_inprocess


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


@pytest.fixture
def mounts():
    done: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        _mount(path, options)
        done.append(path)
        return path

    yield mount
    for path in done:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, mounts):
    """A real full disk (a 64 KiB tmpfs): the write fails with ENOSPC, the old file keeps its content, no temp
    file is left; with room again the new content arrives."""
    import errno

    from ftgen.files import atomic_write_json

    disk = mounts(tmp_path / "small", "size=64k")
    path = disk / "metrics.json"
    atomic_write_json(path, {"score": 1.0})
    before = path.read_bytes()
    with pytest.raises(OSError) as full:
        atomic_write_json(path, {"score": 2.0, "padding": "x" * 200_000})
    assert full.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in disk.iterdir()] == ["metrics.json"]
    subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
    atomic_write_json(path, {"score": 2.0, "padding": "x" * 200_000})
    assert b'"score": 2.0' in path.read_bytes()


def test_read_only_output_dirs_fail_at_once_in_one_line(paper_data, tmp_path, mounts, capsys):
    ro = mounts(tmp_path / "ro", "ro,size=1m")
    with Store.open_writer(tmp_path / "study") as s:  # a study to report on
        s.set_meta("study", "s")
    quick = Path(__file__).parents[1] / "configs" / "quick.yaml"
    data = ["--data-dir", str(paper_data)]
    commands = {
        "study": ["study", str(quick), *data, "--out", str(ro / "study")],
        "eval": ["eval", "--task", "sentiment", "--test-set", "sst2", *data, "--limit", "4", "--out", str(ro / "e")],
        "train": ["train", "--task", "sentiment", "--train-size", "8", *data, "--out", str(ro / "t")],
        "report": ["report", str(tmp_path / "study"), "--to", str(ro / "r")],
        "analyze": ["analyze", "drift", str(tmp_path), *data, "--out", str(ro / "d")],
    }
    for name, args in commands.items():
        result = run_cli_inprocess(capsys, *args)
        assert result.returncode == 2, name
        assert_user_error(result, str(ro), "Read-only file system")
    assert list(ro.iterdir()) == []


def test_a_results_store_on_a_full_disk_is_one_line(paper_data, tmp_path, mounts):
    full = mounts(tmp_path / "full", "size=20k")  # room for the lock and a page or two, not the schema
    cfg = Path(__file__).parents[1] / "configs" / "quick.yaml"
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(full / "s"))
    assert_user_error(proc, "results store", "full disk")
    # nothing half-written: no temp files; the database, if any, opens and holds no result
    assert not [p for p in (full / "s").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_full_disk_during_a_study_fails_the_runs_cleanly_and_keeps_the_rest(
    paper_data, tmp_path, mounts, uninterrupted
):
    """Base-model cells fit in 6 MiB, a checkpoint does not: the training runs fail with one line, their
    cells are marked failed, no partial checkpoint is visible, the store passes its check. With room again,
    the same command finishes the study with results equal to an uninterrupted run's."""
    from test_study import TINY, _results

    disk = mounts(tmp_path / "disk", "size=6m")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "threads": 1}))
    out = disk / "out"
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out), timeout=1800)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "some units failed" in proc.stderr
    status = run_cli("status", str(out), "--check")
    assert status.returncode == 0 and "check: ok" in status.stdout, status.stdout
    failed = [line for line in status.stdout.splitlines() if line.startswith("failed:")]
    assert len(failed) == 2 + 10 and all("no space left on device" in line for line in failed), status.stdout
    with Store.open_reader(out) as s:
        counts = s.counts()
    assert counts["runs"]["failed"] == 2 and counts["cells"]["done"] == 5 and counts["cells"]["failed"] == 10
    for ckpts in out.glob("runs/*/checkpoints"):
        assert list(ckpts.iterdir()) == [], "a partial checkpoint is visible"
    assert not list(out.glob("runs/*/model"))

    # room again (a full fine-tuning checkpoint with its optimizer state is ~1.6 GB; tmpfs uses RAM only for what
    # is written): the same command retries the failed units, and the results are an uninterrupted run's
    subprocess.run(["mount", "-o", "remount,size=4g", str(disk)], check=True)
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 training runs and 15 evaluation cells done, 0 + 0 failed" in proc.stdout, proc.stdout
    with Store.open_reader(out) as s:  # the failed units were retried; the base cells done before were not redone
        attempts = {(r["method"], r["attempts"]) for r in s.rows("cells")} | {
            ("run", r["attempts"]) for r in s.rows("runs")
        }
    assert attempts == {("base", 1), ("ft", 1), ("fticl+lora", 1), ("run", 2)}, attempts
    assert _results(out) == uninterrupted[2]
    status = run_cli("status", str(out), "--check")
    assert status.returncode == 0 and "check: ok (store integrity, 2 saved models match" in status.stdout
