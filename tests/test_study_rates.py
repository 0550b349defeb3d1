"""`ftgen study --dry-run --calibrate` (ftgen.study_rates): a study's units measured in miniature on this device,
extrapolated by the cost model; `random:` models accepted there and refused wherever a result would be stored."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from ftgen.costs import CostModel, estimate
from ftgen.plan import load_plan
from ftgen.study_rates import cache_file, cached_rates, calibrate_plan, unit_rates
from helpers import assert_user_error, run_cli, tiny_random_model


def _study(tmp_path: Path, model: str, **changes) -> Path:
    cfg = {
        "name": "rates",
        "models": [model],
        "train": [{"task": "sentiment", "train_set": "amazon", "sizes": [8]}],
        "methods": [{"name": "ft"}, {"name": "fticl"}],
        "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
        "train_args": {"batch_size": 2, "max_length": 128, "dtype": "fp32"},
        "eval": {
            "test_sets": {"sentiment": ["sst2"], "question": ["socialqa"]},
            "shots": {"sentiment": [0, 2], "question": [0]},
            "limit": 20,
            "max_new_tokens": {"question": 6},
            "dtype": "fp32",
        },
        "analysis": {"drift": True, "probe_records": 1},
        "threads": 1,
    } | changes
    path = tmp_path / "rates.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch, default_model_dir) -> Path:
    """A cache of the test's own (calibrations never reach the machine's), sharing the machine's models."""
    from ftgen.models import cache_dir

    models = (cache_dir() / "models").resolve()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_rates_turn_the_measured_units_back_into_their_seconds(paper_data, tmp_path, own_cache):
    """Each rate is the cost model's work of a measured miniature unit over its seconds, so the calibrated cost
    model gives back exactly the seconds measured; every rate, peak and the cache entry are real numbers."""
    model = tiny_random_model(tmp_path)
    plan = load_plan(_study(tmp_path, model), paper_data, allow_random=True)
    measured = calibrate_plan(plan)[model]
    r = measured.rates
    assert set(measured.peak_bytes) == {"train", "classify", "generate"}
    assert all(v > 0 for v in measured.peak_bytes.values())
    assert min(r.train_tokens_s, r.prefill_tokens_s, r.decode_steps_s, r.load_s, r.train_extra_s) > 0
    assert not measured.notes
    costs = CostModel(plan, {model: r})
    mini = next(c for c in plan.cells if c.describe() == measured.measured["classify"]["cell"])
    mini = dataclasses.replace(mini, params=mini.params.model_copy(update={"limit": 16}))  # study_rates.CALIB_RECORDS
    assert costs.unit(mini)[1] == pytest.approx(measured.measured["classify"]["seconds"], abs=1e-3)
    # the cache holds the same rates, and a later plain dry run finds them
    entry = json.loads(cache_file(model, measured.device, measured.dtypes, 1).read_text())
    assert entry["rates"]["prefill_tokens_s"] == r.prefill_tokens_s
    assert cached_rates(plan)[model].rates == r
    est = estimate(plan, rates=unit_rates({model: measured}))
    assert est["measured"] == [model] and est["units"] == {"train": 2, "classify": 6, "generate": 3}
    # a training run: its tokens at the measured rate, two loads and the drift analysis
    run = plan.runs[0]
    tokens = costs.work(run)[1]["train_tokens"]
    assert costs.unit(run)[1] == pytest.approx(tokens / r.train_tokens_s + 2 * r.load_s + r.train_extra_s)


def test_dry_run_calibrate_prints_each_kind_and_writes_nothing_in_out(paper_data, tmp_path, own_cache):
    model = tiny_random_model(tmp_path)
    cfg, out = _study(tmp_path, model), tmp_path / "out"
    proc = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out), "--dry-run", "--calibrate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rates measured on this machine for random:" in proc.stdout
    for kind in ("training runs: 2", "classification cells: 6", "generation cells: 3"):
        line = next(x for x in proc.stdout.splitlines() if kind in x)
        assert "compute ~" in line and "peak memory ~" in line
    assert "measured just now" in proc.stdout and "disk: ~" in proc.stdout
    assert not out.exists()
    # without --calibrate: the cached rates, said to be cached
    again = run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out), "--dry-run")
    assert again.returncode == 0 and "(cached)" in again.stdout and not out.exists()


def test_without_calibration_the_estimate_names_its_constants(paper_data, tmp_path, own_cache):
    proc = run_cli("study", str(_study(tmp_path, "default")), "--data-dir", str(paper_data), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "throughput constants of the default model on a shared 2-core CPU" in proc.stdout
    assert "--calibrate measures this machine" in proc.stdout


def test_random_models_are_refused_where_a_result_would_be_stored(paper_data, tmp_path, own_cache):
    model = tiny_random_model(tmp_path)
    cfg, out = _study(tmp_path, model), tmp_path / "out"
    assert_user_error(
        run_cli("study", str(cfg), "--data-dir", str(paper_data), "--out", str(out)),
        "models.0",
        "random weights are for estimates and benchmarks only",
    )
    assert not out.exists()
    assert_user_error(
        run_cli("train", "--model", model, "--task", "sentiment", "--data-dir", str(paper_data), "--out", str(out)),
        "--model random:",
        "never for a stored training run",
    )
    assert not out.exists()
    assert_user_error(run_cli("study", str(cfg), "--calibrate", "--out", str(out)), "--calibrate: only with --dry-run")
    missing = _study(tmp_path, "random:/no/such.json")
    assert_user_error(
        run_cli("study", str(missing), "--data-dir", str(paper_data), "--dry-run"), "models.0", "random:DIR"
    )
