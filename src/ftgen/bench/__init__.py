"""Benchmarks, shipped with the package so that `ftgen bench` works from any install.

    eval   ftgen's evaluation engine vs lm-evaluation-harness (k-shot classification) and vs one-by-one generate
    train  ftgen's trainer vs a plain transformers.Trainer and TRL's SFTTrainer, fed the same batches in order
    gpu    the device check: models, eval throughput at auto vs 16, bench train, a calibrated estimate of
           configs/paper.yaml with a random-weight 7B model, and a timed small study; one summary
Device naming, synchronised timing and the measured matmul peak (the MFU denominator) are in ftgen.device.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftgen.errors import UserError


def default_data_dir() -> Path:
    """FTGEN_PAPER_DATA, else ../shared/paper-data beside the current directory (a checkout's layout)."""
    path = Path(os.environ.get("FTGEN_PAPER_DATA") or Path.cwd().parent / "shared" / "paper-data")
    if not path.is_dir():
        raise UserError(f"paper data not found at {path}: give --data-dir (or set FTGEN_PAPER_DATA)")
    return path


def say(msg: str) -> None:
    """A benchmark's result line (stdout, flushed: its output is read while it runs)."""
    print(msg, flush=True)
