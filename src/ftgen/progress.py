"""Progress bars, status lines and durations as people read them; bars and lines silenced by `--quiet` (or
FTGEN_QUIET=1) for CI."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

_quiet = os.environ.get("FTGEN_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet
    _quiet_libraries()


def _quiet_libraries() -> None:
    """transformers' own bars ("Loading weights") follow ours."""
    if _quiet and "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """A status line on stderr (stdout stays for results)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit=unit, disable=_quiet, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs
    )


def fmt_seconds(seconds: float) -> str:
    """12s, 3m05s, 2h10m, 3.5 days."""
    s = int(round(seconds))
    if s >= 2 * 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def score_text(metrics: dict) -> str:
    """A cell's score with its 95% interval, `45.0 [35.2, 55.1]` (just the score where none was computed)."""
    text = f"{metrics['score']:.1f}"
    if metrics.get("ci_low") is not None and metrics.get("ci_high") is not None:
        text += f" [{metrics['ci_low']:.1f}, {metrics['ci_high']:.1f}]"
    return text
