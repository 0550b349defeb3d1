"""Experiment trackers of a training run (`report_to: [tensorboard, wandb]`), through accelerate's tracking API:
the trackers go to `Accelerator(log_with=...)`, `init_trackers` starts them with the run's config, `log` sends
each optimizer step's loss, learning rate, gradient norm and tokens/s, and each tracker's `finish` closes it
(not `end_training`, which also tears down the process group that saving the model still needs under DDP).

    OUT/tensorboard/    TensorBoard event files (`tensorboard --logdir OUT`; a study: `--logdir STUDY/runs`)
    OUT/wandb/          Weights & Biases files: offline unless WANDB_MODE says otherwise (`wandb sync` later)

Offline-safe: W&B runs in offline mode unless the user set WANDB_MODE (then W&B does as it is told), so a
training never waits on the network. A tracker asked for but not installed is refused before any model loads.
A resumed run's TensorBoard log drops the steps logged after its checkpoint (`purge_step`), so each step is
shown once, as in loss.jsonl. Trackers run on the main process only (accelerate's rule).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ftgen.config import FieldError, TrainConfig

INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}  # or 'ftgen[logging]'
WANDB_PROJECT = "ftgen"  # W&B project of every run, unless WANDB_PROJECT is set


def check_trackers(names: list[str]) -> None:
    """Each tracker asked for is installed; else one line naming the field and the fix."""
    for name in names:
        module = "tensorboard" if name == "tensorboard" else "wandb"
        if importlib.util.find_spec(module) is None:
            raise FieldError("report_to", f"{name} is not installed: {INSTALL[name]} (or pip install 'ftgen[logging]')")


def make_trackers(cfg: TrainConfig, out: Path) -> list[Any]:
    """accelerate tracker objects for cfg.report_to, writing under `out` (none: an empty list)."""
    if not cfg.report_to:
        return []
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers: list[Any] = []
    if "tensorboard" in cfg.report_to:
        trackers.append(TensorBoardTracker("tensorboard", logging_dir=str(out)))
    if "wandb" in cfg.report_to:
        kwargs: dict[str, Any] = {"name": cfg.run_name or out.name, "dir": str(out)}
        if "WANDB_MODE" not in os.environ:  # the user's own choice wins; else never the network
            kwargs["mode"] = "offline"
        trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", WANDB_PROJECT), **kwargs))
    return trackers


def hparams(cfg: TrainConfig) -> dict[str, str | int | float | bool]:
    """The run's config as flat scalars (TensorBoard's hparams take no lists or None)."""
    flat: dict[str, str | int | float | bool] = {}
    for name, value in cfg.model_dump().items():
        if isinstance(value, list):
            flat[name] = ",".join(map(str, value))
        elif value is not None:
            flat[name] = value
    return flat


def start_trackers(accelerator, cfg: TrainConfig, start_step: int) -> None:
    """Start the trackers given to the Accelerator; a resumed run's TensorBoard log forgets the steps after
    `start_step` (they are trained again)."""
    if not cfg.report_to:
        return
    for tracker in accelerator.log_with:
        if getattr(tracker, "name", None) == "tensorboard" and start_step:
            tracker.init_kwargs["purge_step"] = start_step + 1  # passed on to SummaryWriter by start()
    accelerator.init_trackers(cfg.run_name or "ftgen", config=hparams(cfg))


def log_step(accelerator, cfg: TrainConfig, row: dict) -> None:
    """One optimizer step's numbers (a loss.jsonl row) to every tracker."""
    if not cfg.report_to:
        return
    values = {"train/loss": row["loss"], "train/lr": row["lr"], "train/epoch": row["epoch"]}
    if row.get("grad_norm") is not None:
        values["train/grad_norm"] = row["grad_norm"]
    if row.get("tokens_per_s"):
        values["train/tokens_per_s"] = row["tokens_per_s"]
    accelerator.log(values, step=row["step"])


def end_trackers(accelerator) -> None:
    """Flush and close the trackers (main process only)."""
    for tracker in accelerator.trackers:
        tracker.finish()
