"""Shared fixtures: the paper data beside the checkout, the real default model loaded once, and the sandbox
of the bad-input suites (nothing written, no model loaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytest-xdist's workers inherit COLUMNS=80 from their controller; ftgen prints tables piped at its own width
# (cli_common.PIPED_WIDTH) unless COLUMNS says otherwise, and the tests read those tables as a user's pipe would.
os.environ.pop("COLUMNS", None)

from ftgen import progress  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_DATA = Path(os.environ.get("FTGEN_PAPER_DATA", REPO.parent / "shared" / "paper-data"))

progress.set_quiet(True)


@pytest.fixture(scope="session", autouse=True)
def tests_cache(tmp_path_factory):
    """The whole session (and the commands it starts) uses a cache of its own whose models/ is the machine's:
    the default model is built once and shared, but what a test study calibrates never reaches the machine's
    study_calibration.json, which a user's --dry-run estimates are scaled by."""
    from ftgen.models import cache_dir

    machine_models = cache_dir() / "models"
    machine_models.mkdir(parents=True, exist_ok=True)
    own = tmp_path_factory.mktemp("ftgen-cache")
    (own / "models").symlink_to(machine_models.resolve(), target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTGEN_CACHE", str(own))
        yield own


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
def uninterrupted(paper_data, tmp_path_factory):
    """The tiny study of test_study.py run once, start to end (out dir, seconds, results): what the killed,
    Ray and full-disk studies are compared with."""
    from test_study import run_uninterrupted

    return run_uninterrupted(paper_data, tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from ftgen.models import default_model_dir

    return default_model_dir()


class ModelLoaded(BaseException):
    """The tripwire of the bad-input suites: a bad input must be refused before any model loads. A
    BaseException, so that no `except Exception` on the way can turn it into a user error."""


class Sandbox:
    """One bad-input case: its inputs go in `inputs`, its output dir is `out` (never created); the command
    runs in an empty cwd, with an empty FTGEN_CACHE, offline. `freeze()` after building the inputs, then
    `assert_untouched()`: nothing under the sandbox (output dir, cwd, cache, inputs) may have changed."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs, self.out, self.cwd, self.cache = root / "in", root / "out", root / "cwd", root / "cache"
        self.inputs.mkdir()
        self.cwd.mkdir()
        self._before: dict | None = None

    def freeze(self) -> None:
        from helpers import snapshot

        self._before = snapshot(self.root)

    def assert_untouched(self) -> None:
        from helpers import snapshot

        assert self._before is not None, "freeze() the sandbox before running the case"
        after = snapshot(self.root)
        changed = sorted(k for k in set(after) | set(self._before) if after.get(k) != self._before.get(k))
        assert not changed, f"the command changed {changed}"


def _sandbox(tmp_path: Path, monkeypatch, tripwire: bool) -> Sandbox:
    from ftgen import hub

    box = Sandbox(tmp_path)
    box.setenv = monkeypatch.setenv  # for a case that sets the environment: undone after the test
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("FTGEN_CACHE", str(box.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("FTGEN_TASK_DIRS", "FTGEN_DTYPE", "FTGEN_MAX_FILE_BYTES", "FTGEN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    hub.hub_unreachable.cache_clear()
    if tripwire:
        import transformers

        from ftgen import models

        def trip(*args, **kwargs):
            raise ModelLoaded(f"a model or tokenizer was loaded: {args[:1]}")

        for name in ("load_model", "load_tokenizer", "default_model_dir"):
            monkeypatch.setattr(models, name, trip)
        for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
            monkeypatch.setattr(cls, "from_pretrained", trip)
    return box


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    """A bad-input case that must be refused before any model loads (a tripwire makes sure)."""
    yield _sandbox(tmp_path, monkeypatch, tripwire=True)
    from ftgen import hub

    hub.hub_unreachable.cache_clear()


@pytest.fixture
def model_sandbox(tmp_path, monkeypatch) -> Sandbox:
    """A bad-input case about the model itself: loading is tried, so no tripwire."""
    yield _sandbox(tmp_path, monkeypatch, tripwire=False)
    from ftgen import hub

    hub.hub_unreachable.cache_clear()


LONGEST_FILE = "test_study_kills.py"  # ~8 minutes on one core: a real study killed 21 times


def pytest_collection_modifyitems(items):
    """The longest file first, then the other files holding slow end-to-end tests, then the rest, each file's tests
    in their order: under `make test` (pytest-xdist, a file per worker) the long files start at once on both
    workers and the many short ones fill in after them, instead of the longest file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path.name != LONGEST_FILE, item.path not in slow_files))  # stable sort
