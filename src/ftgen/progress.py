"""Progress bars and status lines, silenced by `--quiet` (or FTGEN_QUIET=1) for CI."""

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
