"""Atomic checkpoint directories: write into a temp dir beside the target, fsync, then `os.replace`.

A reader therefore sees either no `step-N/` or a complete one, never a half-written one (safetensors
writes in place, so a kill mid-save would otherwise leave a full-length file with a zero tail). A
save that fails (full disk, quota, I/O error) removes its temp dir and raises a one-line UserError.
The published files and directories get the modes a plain `open` / `mkdir` would give them (the umask
decides; transformers writes its weights 0o600 through a temp file).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ftgen.errors import UserError
from ftgen.files import follow_umask_tree, fsync_dir

STEP_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"  # written last inside a checkpoint: its presence marks a complete one


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path`, so the rename below publishes data that is on disk."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


@contextmanager
def atomic_dir(target: str | Path, *, is_main: bool = True, barrier: Callable[[], None] | None = None):
    """Yield a temp dir to fill; on success it becomes `target` atomically (replacing an old one).

    Under several processes every process writes its part into the same temp dir; `barrier` makes them
    wait for each other before the main process renames it.
    """
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    try:
        yield tmp
        if barrier:
            barrier()
        if is_main:
            follow_umask_tree(tmp)
            fsync_tree(tmp)
            if target.exists():  # os.replace cannot replace a non-empty directory: move the old one aside
                old = target.parent / f".{target.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_dir(target.parent)
    except BaseException as e:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit, UserError)):
            raise
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), safetensors as a
        # SafetensorError: not only as OSError(ENOSPC). Name the likely cause from the free space left.
        usage = shutil.disk_usage(target.parent) if target.parent.exists() else None
        full = _is_enospc(e) or (usage is not None and usage.free < max(256 * 2**20, usage.total // 100))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        cause = "no space left on device" if full else first
        free = f"{usage.free / 2**20:.0f} MiB free there; " if usage else ""
        raise UserError(
            f"could not write {target}: {cause} ({free}nothing partial was left behind). "
            "Make room, then rerun (ftgen train: with --resume; a study: the same command)"
        ) from e


def _is_enospc(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


def checkpoint_steps(ckpt_root: str | Path) -> list[int]:
    """Steps of the complete checkpoints under `ckpt_root`, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    steps = [int(m[1]) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and (p / STATE_FILE).exists()]
    return sorted(steps)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    steps = checkpoint_steps(ckpt_root)
    return Path(ckpt_root) / f"step-{steps[-1]}" if steps else None


def read_state(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (and temp dirs a killed save left behind)."""
    root = Path(ckpt_root)
    for step in checkpoint_steps(root)[: max(len(checkpoint_steps(root)) - keep, 0)]:
        shutil.rmtree(root / f"step-{step}", ignore_errors=True)
    for p in root.glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
