"""Shared fixtures: the paper data beside the checkout, and the real default model, loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftgen import progress

REPO = Path(__file__).resolve().parents[1]
PAPER_DATA = Path(os.environ.get("FTGEN_PAPER_DATA", REPO.parent / "shared" / "paper-data"))

progress.set_quiet(True)


@pytest.fixture(scope="session")
def paper_data() -> Path:
    if not PAPER_DATA.is_dir():
        pytest.fail(f"paper data not found at {PAPER_DATA} (set FTGEN_PAPER_DATA)")
    return PAPER_DATA


@pytest.fixture(scope="session")
def default_model():
    """(model, tokenizer) of the default model in its auto dtype (bf16 on CPUs that have it)."""
    from ftgen.models import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def default_model_fp32():
    from ftgen.models import load_model

    return load_model("default", dtype="fp32")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from ftgen.models import default_model_dir

    return default_model_dir()
