"""Where a unit ran, recorded with its result: package versions, host, device, dtype and the model's identity.

A report is written later, maybe on another machine and after an upgrade: what it cannot learn afterwards is
recorded when a unit runs (ftgen.units puts it into each cell's metrics and each run's summary, under
`environment`) and read back by ftgen.report.provenance.

A model's identity is the name it was asked for (`default`), the name it resolves to (SmolLM2-135M-Instruct),
its checkpoint path, and a fingerprint: for a local checkpoint the sha256 of its file manifest (the sha256 of
each file, as ftgen.store records for trained models), for a Hub model the commit it was loaded at.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from functools import cache
from pathlib import Path

from ftgen.store import canonical_json, manifest

PACKAGES = ("ftgen", "torch", "transformers", "peft", "accelerate")


@cache
def versions() -> dict[str, str | None]:
    """Python and the versions of the packages that determine a result (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def dtype_name(dtype: object) -> str:
    """`torch.float32` -> `fp32` (the names ftgen's options use)."""
    text = str(dtype).removeprefix("torch.")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(text, text)


@cache
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: object) -> str:
    """The hardware behind a torch device: the GPU's name, or the CPU's model name."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return _cpu_name()


def runtime(model) -> dict:
    """Where a loaded model ran: device, its hardware, dtype, host, threads, and the package versions."""
    import torch

    param = next(model.parameters())
    return {
        "device": str(param.device),
        "device_name": device_name(param.device),
        "dtype": dtype_name(param.dtype),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }


@cache
def _fingerprint(path: str, stamp: tuple) -> str:
    """sha256 of a checkpoint's manifest; cached per version of its files (`stamp`: names, sizes, mtimes)."""
    return hashlib.sha256(canonical_json(manifest(path)).encode()).hexdigest()


def fingerprint(path: str | Path) -> str:
    """A local checkpoint's content fingerprint: sha256 of {file: sha256 of its bytes} (each model hashed once
    per process while its files stay as they are)."""
    root = Path(path)
    stamp = tuple(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    )
    return _fingerprint(str(root.resolve()), stamp)


def model_identity(name: str, model=None) -> dict:
    """The model asked for as `name`: its resolved name, checkpoint path and fingerprint (local) or revision
    (Hub). `model`, when loaded, gives the Hub commit it was loaded at."""
    from ftgen.models import DEFAULT_MODEL, resolve_model

    path = resolve_model(name)
    local = Path(path).is_dir()
    resolved = DEFAULT_MODEL if name in ("default", DEFAULT_MODEL) else (Path(path).name if local else name)
    revision = getattr(getattr(model, "config", None), "_commit_hash", None) if not local else None
    return {
        "name": name,
        "resolved": resolved,
        "path": str(Path(path).resolve()) if local else path,
        "sha256": fingerprint(path) if local else None,
        "revision": revision,
    }
