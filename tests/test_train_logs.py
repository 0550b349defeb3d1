"""What a training run leaves for people and their tools: train_summary.json (method label, paths relative to the
run), loss.png (titled with the run's name, a legend that says what is drawn), loss.jsonl (the run's total
steps) and the experiment trackers (TensorBoard events equal to loss.jsonl, also across a resume). Real training
on a tiny random-weight Llama."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from test_train import loss_rows, make_tiny_model, tiny_cfg

from ftgen.train import loss_figure, train
from helpers import assert_user_error, run_cli_inprocess


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama"))


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files of `folder`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_summary_names_the_method_and_keeps_paths_relative(tiny, paper_data, tmp_path):
    cfg = tiny_cfg(tiny, paper_data, train_size=8, epochs=1, fticl_shots=2, lora_r=4, run_name="my-run", max_length=320)
    s = train(cfg, tmp_path / "run")
    assert (s["method"], s["method_label"], s["run_name"]) == ("fticl", "FTICL k=2, LoRA r=4", "my-run")
    assert s["model_dir"] == "model" and (tmp_path / "run" / s["model_dir"] / "adapter_config.json").is_file()
    # a moved run still finds its model, and its summary says nothing of where it was
    shutil.move(tmp_path / "run", tmp_path / "moved")
    saved = json.loads((tmp_path / "moved" / "train_summary.json").read_text())
    assert str(tmp_path / "run") not in json.dumps({k: v for k, v in saved.items() if k != "config"})
    assert (tmp_path / "moved" / saved["model_dir"]).is_dir()
    assert [r["total_steps"] for r in loss_rows(tmp_path / "moved")] == [2, 2]


@pytest.mark.parametrize("steps, legend", [(8, ["loss per step"]), (60, ["loss per step", "running mean (3 steps)"])])
def test_loss_figure_title_and_legend(steps, legend):
    rows = [{"step": i + 1, "loss": 2.0 / (i + 1)} for i in range(steps)]
    fig = loss_figure(rows, "sentiment-amazon-n8-ft-lr0.001-ep1-s0-abcdef\nsentiment/amazon")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == legend
    assert ax.get_title().startswith("sentiment-amazon-n8-ft-lr0.001-ep1-s0-abcdef")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_tensorboard_scalars_match_loss_jsonl_also_after_a_resume(tiny, paper_data, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_cfg(tiny, paper_data, train_size=16, save_every=1, report_to=["tensorboard"], run_name="tb-run")
    assert train(cfg, tmp_path / "run", stop_after=3)["stopped_at"] == 3
    # steps 4.. trained again after the resume; their first tries, logged before the stop, must not show twice
    first = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [s for s, _ in first["train/loss"]] == [1, 2, 3]
    train(cfg, tmp_path / "run", resume=True)
    rows = loss_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 9))
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")):
        assert [s for s, _ in scalars[tag]] == [r["step"] for r in rows], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-12), tag


def test_a_tracker_that_is_not_installed_is_refused_before_the_model_loads(tiny, paper_data, tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    args = ["train", "--model", tiny, "--task", "sentiment", "--data-dir", str(paper_data), "--train-size", "8"]
    result = run_cli_inprocess(capsys, *args, "--report-to", "wandb", "--out", str(tmp_path / "o"))
    assert_user_error(result, "--report-to: wandb is not installed: pip install wandb")
    result = run_cli_inprocess(capsys, *args, "--report-to", "mlflow", "--out", str(tmp_path / "o"))
    assert_user_error(result, "--report-to")
    assert not (tmp_path / "o").exists()


def test_cli_train_with_trackers_and_the_old_batch_size_flag(tiny, paper_data, tmp_path, capsys):
    """The old spelling --batch-size trains (the effective batch) and says once the run is done that it is
    deprecated; --report-to tensorboard writes its events; the printed model path is the run's model dir; every
    file and directory written follows the umask."""
    pytest.importorskip("tensorboard")
    args = ["train", "--model", tiny, "--task", "sentiment", "--data-dir", str(paper_data), "--train-size", "8"]
    args += ["--epochs", "1", "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "96"]
    old = os.umask(0o027)
    try:
        result = run_cli_inprocess(capsys, *args, "--report-to", "tensorboard", "--out", str(tmp_path / "o"))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for path in [tmp_path / "o", *(tmp_path / "o").rglob("*")]:  # what a plain open / mkdir gives under the umask
        assert path.stat().st_mode & 0o777 == (0o750 if path.is_dir() else 0o640), path
    assert f"model: {tmp_path / 'o' / 'model'}" in result.stdout
    assert "--batch-size is deprecated here: say --effective-batch-size" in result.stderr
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert summary["config"]["batch_size"] == 4 and summary["steps"] == 2
    assert len(tensorboard_scalars(tmp_path / "o" / "tensorboard")["train/loss"]) == 2


def test_wandb_runs_offline_unless_the_user_says_otherwise(tmp_path, monkeypatch):
    """The W&B tracker given to accelerate (wandb itself is only imported when it starts): offline by default,
    the user's WANDB_MODE / WANDB_PROJECT win; its files go under the run's directory."""
    from ftgen.config import TrainConfig
    from ftgen.trackers import make_trackers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = TrainConfig(task="sentiment", report_to="tensorboard,wandb", run_name="r1")
    tb, wb = make_trackers(cfg, tmp_path)
    assert (tb.name, tb.run_name, tb.logging_dir_param) == ("tensorboard", "tensorboard", str(tmp_path))
    assert wb.name == "wandb" and wb.run_name == "ftgen"
    assert wb.init_kwargs == {"name": "r1", "dir": str(tmp_path), "mode": "offline"}
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    (wb,) = make_trackers(cfg.model_copy(update={"report_to": ["wandb"]}), tmp_path)
    assert wb.run_name == "mine" and "mode" not in wb.init_kwargs
    assert make_trackers(cfg.model_copy(update={"report_to": []}), tmp_path) == []
