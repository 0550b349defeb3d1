"""The device that computes: its name, a synchronised clock, and its measured matmul peak.

On a GPU, kernels run asynchronously: a timer read without `torch.cuda.synchronize` measures the launch,
not the work (that is how an MFU of 211% was once printed). Every timing here synchronises first, and the
peak FLOP/s that MFU divides by is measured on the same device and dtype as the work being measured.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def current_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'Intel(R) Xeon(R) ... (cpu, 2 threads)'."""
    device = torch.device(device) if device is not None else current_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} (cpu, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    device = torch.device(device) if device is not None else current_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device | str | None = None):
    """`with timed(dev) as t: ...` then `t["seconds"]`: wall time of the work, the device synchronised on both ends."""
    out = {"seconds": 0.0}
    synchronize(device)
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        synchronize(device)
        out["seconds"] = time.perf_counter() - t0


def matmul_peak(device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16, n: int | None = None,
                reps: int = 8) -> float:  # fmt: skip
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device` (n: 8192 on a GPU, 2048 on a CPU)."""
    device = torch.device(device) if device is not None else current_device()
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):  # warm-up: kernel selection, page faults, clocks
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        with timed(device) as t:
            torch.matmul(a, b)
        best = min(best, t["seconds"])
    return 2 * n**3 / best
