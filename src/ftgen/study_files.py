"""The files of a study directory beside its results store: one folder per training run, named for people; the
manifest (sha256 of every file) of a saved model; and the hidden leftovers of killed writes.

    OUT/runs/sentiment-amazon-n2000-fticl-lr2e-05-ep2-s0-1834dd/   run_dir_name: coordinates + 6 hex of the key
        model/  checkpoints/  loss.jsonl  loss.png  train_summary.json  drift.json  tensorboard/

A study from before readable names holds `runs/<key>/`: `run_dir` finds either (ftgen.store renames them when
a study starts). Readers such as the report find a run's files with `run_dir(out, row)` (a `runs` row).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path


def name_part(value: object) -> str:
    """A piece of a directory name: letters, digits and `._+-`; anything else becomes `_`; never hidden."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("._") or "_"


def run_dir_name(coords: Mapping, key: str) -> str:
    """The directory name of a training run: its coordinates, readable, then the first 6 hex digits of its key
    (`sentiment-amazon-n2000-fticl-lr2e-05-ep2-s0-1834dd`; a model other than the default goes first, a train set
    given as a file by its stem). Two live runs differ in a coordinate; a superseded run and its successor in the
    key. A pure function of the run's row, so every reader finds the same directory."""
    model, train_set = str(coords["model"]), str(coords["train_set"])
    if "/" in train_set or train_set.endswith((".json", ".jsonl", ".csv")):
        train_set = Path(train_set).stem
    parts = [] if model == "default" else [Path(model.rstrip("/")).name]
    parts += [coords["train_task"], train_set, f"n{coords['size']}", coords["method"]]
    parts += [f"lr{coords['lr']:g}", f"ep{coords['epochs']:g}", f"s{coords['seed']}"]
    readable = "-".join(name_part(p) for p in parts)[:150]  # far below the 255 bytes a file system allows
    return f"{readable}-{key[:6]}"


def run_dir(out_dir: str | Path, row: Mapping) -> Path:
    """Where a training run's files are: `runs/<run_dir_name>`, or `runs/<key>` in a study written before
    readable names (until a study renames it)."""
    runs = Path(out_dir) / "runs"
    named = runs / run_dir_name(row, row["key"])
    legacy = runs / row["key"]
    return legacy if not named.exists() and legacy.is_dir() else named


def manifest(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every file of a saved model: recorded with its run, checked before its cells load it."""
    root = Path(model_dir)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            out[str(p.relative_to(root))] = h.hexdigest()
    return out


# Names of the temp files and dirs an interrupted write leaves (files.atomic_write_*, checkpoint.atomic_dir,
# the trash of a run trained again): hidden, never read, removed when the study starts again.
LEFTOVER_PATTERNS = (".*.tmp", ".*.tmp.*", ".*.old", ".trash-*")


def leftovers(out: str | Path) -> list[Path]:
    found = {p for pattern in LEFTOVER_PATTERNS for p in Path(out).rglob(pattern)}
    return sorted(p for p in found if not any(q in found for q in p.parents))


def remove_leftovers(out: str | Path) -> int:
    """Delete what killed writes left behind (call under the study lock: no one else writes)."""
    paths = leftovers(out)
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(paths)
