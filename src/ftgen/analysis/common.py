"""What the analyses share: where a run's model is, what a run was (train task, FT or FTICL), loading models
in fp32 once, and writing figures.

A *run* is an `ftgen train` output dir (holding `model/` and `train_summary.json`), or a bare model dir / name.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

from ftgen.errors import UserError
from ftgen.files import atomic_write_bytes

METHOD_STYLE = {  # FT and FTICL must be told apart in every figure, also in black and white
    "ft": {"cmap": "Blues", "linestyle": "-", "marker": "o"},
    "fticl": {"cmap": "Oranges", "linestyle": "--", "marker": "s"},
    None: {"cmap": "Greys", "linestyle": ":", "marker": "^"},
}


def model_dir_of(run: str | Path) -> str:
    """A training output dir (holding `model/`) or a model dir / name, as given."""
    path = Path(run)
    return str(path / "model") if (path / "model").is_dir() else str(run)


def train_summary(run: str | Path) -> dict | None:
    """The run's train_summary.json (also found from its `model/` dir), None for a bare model."""
    path = Path(run)
    for folder in (path, path.parent) if path.name == "model" else (path,):
        if (folder / "train_summary.json").is_file():
            try:
                return json.loads((folder / "train_summary.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{folder / 'train_summary.json'}: unreadable ({e})") from None
    return None


def run_info(run: str | Path) -> dict:
    """label, train_task, method ('ft' / 'fticl', None if unknown), fticl_shots, kind ('full' / 'lora') and
    base_model of a run, from its train_summary.json (FTICL = the config's `fticl_shots` > 0)."""
    path = Path(run)
    label = path.parent.name if path.name == "model" else path.name or str(run)
    summary = train_summary(run)
    if summary is None:
        return {
            "label": label,
            "train_task": None,
            "method": None,
            "fticl_shots": None,
            "kind": None,
            "base_model": None,
        }
    shots = int((summary.get("config") or {}).get("fticl_shots") or 0)
    return {
        "label": label,
        "train_task": summary.get("task"),
        "method": "fticl" if shots > 0 else "ft",
        "fticl_shots": shots,
        "kind": summary.get("kind"),
        "base_model": summary.get("base_model"),
    }


def unique_labels(labels: list[str]) -> list[str]:
    """The labels, with `#2`, `#3` ... added to repeats (two runs may share a directory name)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def check_runs_exist(runs: list[str]) -> None:
    """Every run is an existing directory, `default` or a hub id (`name`, `owner/name`): checked before loading."""
    for run in runs:
        if run == "default" or Path(run).exists():
            continue
        if run.startswith((".", "/", "~")) or run.count("/") > 1:
            raise UserError(f"{run}: no such run or model directory")


class ModelCache:
    """fp32 models by name, each loaded once (a base model shared by several runs).

    fp32: bf16 rounding (8 bits of mantissa) would hide fine-tuning updates of ~1e-5 relative size.
    """

    def __init__(self) -> None:
        self._models: dict[str, tuple] = {}

    def get(self, name: str) -> tuple:
        from ftgen.models import load_model

        if name not in self._models:
            self._models[name] = load_model(name, dtype="fp32")
        return self._models[name]


def finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise UserError(f"{name}: must be a finite number, got {value}")
    return value


def save_figure(fig, stem: str | Path) -> list[Path]:
    """`stem`.png and `stem`.svg, each written atomically; closes the figure."""
    import matplotlib.pyplot as plt

    paths = []
    for suffix, dpi in ((".png", 120), (".svg", None)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix[1:], dpi=dpi)
        path = Path(stem).with_suffix(suffix)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_colors(methods: list[str | None]) -> list:
    """One color per entry: shades of blue for FT runs, of orange for FTICL runs, of grey for the others."""
    plt = pyplot()
    total, seen = Counter(methods), Counter()
    colors = []
    for method in methods:
        shade = 0.75 if total[method] == 1 else 0.9 - 0.5 * seen[method] / (total[method] - 1)
        seen[method] += 1
        colors.append(plt.get_cmap(METHOD_STYLE.get(method, METHOD_STYLE[None])["cmap"])(shade))
    return colors
