"""Batch sizes from memory: the largest evaluation batch that fits, and the training micro-batch token budget.

Evaluation (`batch_size="auto"`, the default): batches are cut from the rows sorted longest first, so the
first batch is the costliest one. "auto" starts at min(AUTO_MAX_BATCH, rows) and halves on out-of-memory
(accelerate's `find_executable_batch_size` with a halving rule, as lm-eval's `batch_size auto`); rows done
before the error keep their results, the failed batch is redone smaller, and batch size 1 failing is one
UserError line, never an endless retry. On a CPU "auto" is a fixed CPU_AUTO_BATCH (16): CPU throughput
does not grow with the batch, and there is no allocator to ask. A fixed number is taken as given.

Testing without a GPU: an injected limit (`memory_limit=` or FTGEN_MEMORY_LIMIT, e.g. "200MB") counts the
bytes of every tensor the model allocates during a forward (a TorchDispatchMode, weights excluded) and
raises torch.OutOfMemoryError past the limit, as CUDA's allocator does; "auto" then searches on a CPU too.

Training (`token_budget`): fp32 master weights, gradients and AdamW moments take a fixed share of free
memory; what is left, divided by the activation bytes one token keeps for backward, is the number of
padded tokens a micro-batch may hold. That is the trainer's `micro_batch_tokens` cap: micro-batches change,
the optimizer step still holds exactly `batch_size` examples. The per-token bytes are coefficients measured
with `torch.autograd.graph.saved_tensors_hooks` on Llama-shaped models (tests/test_memory.py re-measures
them); `measured_bytes_per_token` (e.g. from a calibration run on the device) replaces them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence

import torch

from ftgen.errors import UserError

CPU_AUTO_BATCH = 16  # what "auto" means on a CPU: throughput is flat in the batch size there
AUTO_MAX_BATCH = 1024  # where the search starts (or the number of rows, if fewer)
ENV_LIMIT = "FTGEN_MEMORY_LIMIT"
HEADROOM = 0.8  # share of free memory a training micro-batch may plan for (allocator slack, transient buffers)

# Activation bytes kept for backward per token and decoder layer, per unit of width (measured, see above):
# (hidden size, MLP intermediate size, key/value width = kv heads x head dim).
_LAYER_BYTES = {torch.float32: (32.0, 16.0, 8.0), torch.bfloat16: (31.0, 8.0, 4.0), torch.float16: (31.0, 8.0, 4.0)}
_OUTER_BYTES = 7.0  # x hidden size per token: embedding output and final norm (fp32 residual stream)
_HEAD_BYTES = 8.0  # x vocab per response token: fp32 logits kept for the loss, and their gradient


def parse_bytes(text: str | int) -> int:
    """'200MB', '1.5GiB', '4e9' or 123 -> bytes (decimal and binary suffixes)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise UserError(f"{ENV_LIMIT}: expected a size like 200MB or 2GiB, got '{text}'")
    base = 1024 if m[3] else 1000
    return int(float(m[1]) * base ** " kmgt".index(m[2] or " "))


def injected_limit(limit: int | str | None = None) -> int | None:
    """The simulated memory limit in bytes: the argument, else FTGEN_MEMORY_LIMIT, else None."""
    if limit is None:
        limit = os.environ.get(ENV_LIMIT) or None
    return None if limit is None else parse_bytes(limit)


def check_batch_size(value: int | str, option: str = "batch_size") -> int | str:
    """A positive int or "auto" (also from a string, as the CLI passes it); anything else is one UserError."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{option}: expected a positive integer or 'auto', got '{value}'") from None
    if number < 1 or str(value).strip() not in (str(number), f"+{number}"):
        raise UserError(f"{option}: expected a positive integer or 'auto', got '{value}'")
    return number


def start_batch_size(
    batch_size: int | str, rows: int, device: torch.device | str, limit: int | None
) -> tuple[int, bool]:
    """(the batch size to start with, whether to halve it on out-of-memory)."""
    if batch_size != "auto":
        return int(batch_size), False
    if torch.device(device).type == "cpu" and limit is None:
        return min(CPU_AUTO_BATCH, max(rows, 1)), False
    return min(AUTO_MAX_BATCH, max(rows, 1)), True


def is_out_of_memory(err: BaseException) -> bool:
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(err, torch.OutOfMemoryError) or should_reduce_batch_size(err)


# ---------------------------------------------------------------- the simulated limit


class SimulatedLimit(contextlib.AbstractContextManager):
    """Counts the bytes of live tensors allocated inside it; past `limit` an op raises torch.OutOfMemoryError.

    Storages are tracked by weak reference, so a freed tensor stops counting. `peak` is the most bytes live
    at once. Tensors that existed before (weights, a cached prefix) are not counted: the limit is the memory
    left free once the model is loaded, as on a GPU.
    """

    def __init__(self, limit: int | None):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.limit, self.peak, self._live = limit, 0, {}
        owner = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                owner._count(out)
                return out

        self._mode = _Mode()

    def _count(self, out) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                ref = StorageWeakRef(t.untyped_storage())
                self._live.setdefault(ref.cdata, (ref, t.untyped_storage().nbytes()))
        self._live = {k: v for k, v in self._live.items() if not v[0].expired()}
        live = sum(n for _, n in self._live.values())
        self.peak = max(self.peak, live)
        if self.limit is not None and live > self.limit:
            # accelerate's should_reduce_batch_size looks for " out of memory." in the message
            over = f"{live} bytes live over the injected limit of {self.limit} bytes ({ENV_LIMIT})"
            raise torch.OutOfMemoryError(f"{over}: simulated out of memory.")

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._live.clear()
        return self._mode.__exit__(*exc)


def limited(limit: int | None) -> contextlib.AbstractContextManager:
    """The simulated limit where one is injected, else nothing."""
    return SimulatedLimit(limit) if limit is not None else contextlib.nullcontext()


# ---------------------------------------------------------------- batches that fit


def run_in_batches(
    process: Callable[[list[int]], None],
    order: Sequence[int],
    batch_size: int | str,
    *,
    device: torch.device | str,
    limit: int | None = None,
    what: str = "evaluation",
) -> int:
    """Call `process(indices)` on consecutive batches of `order` (longest rows first); return the batch size used.

    With "auto" on a GPU (or under an injected limit) a batch that runs out of memory is redone at half
    the size and the rest of `order` continues at that size. `process` must only record results once its
    batch has finished.
    """
    from accelerate.utils import find_executable_batch_size

    start, search = start_batch_size(batch_size, len(order), device, limit)
    done = 0

    def attempt(size: int) -> int:
        nonlocal done
        while done < len(order):
            batch = list(order[done : done + size])
            with limited(limit):
                process(batch)
            done += len(batch)
        return size

    if not search:
        try:
            return attempt(min(start, max(len(order), 1)))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
        # outside the except block: the traceback (and the tensors its frames hold) is gone by now
        raise UserError(f"{what}: out of memory at batch size {start}: use batch size auto or a smaller number")

    def halve() -> int:
        nonlocal start
        start //= 2
        return start

    try:
        return find_executable_batch_size(attempt, starting_batch_size=start, reduce_batch_size_fn=halve)()
    except RuntimeError as e:
        if "No executable batch size found" not in str(e):
            raise
    raise UserError(
        f"{what}: out of memory even at batch size 1 (the longest rows): use a smaller max length or a larger device"
    )


# ---------------------------------------------------------------- training: the micro-batch token budget


def _width(config, name: str, default: int | None = None) -> int:
    value = getattr(config, name, None)
    if value is None:
        value = default
    if not isinstance(value, int) or value < 1:
        raise UserError(f"model config: '{name}' missing or not a positive integer")
    return value


def activation_bytes_per_token(
    config, dtype: torch.dtype, *, gradient_checkpointing: bool = False, response_share: float = 1.0, seq_len: int = 0
) -> float:
    """Bytes one trained token keeps for backward in ftgen's trainer (autocast `dtype` over fp32 weights).

    `response_share`: the share of tokens that are response tokens (the LM head runs only on those);
    `seq_len`: the padded length, for the boolean attention mask (one byte per token pair).
    """
    h = _width(config, "hidden_size")
    layers = _width(config, "num_hidden_layers")
    inter = _width(config, "intermediate_size", 4 * h)
    heads = _width(config, "num_attention_heads")
    kv = _width(config, "num_key_value_heads", heads) * (getattr(config, "head_dim", None) or h // heads)
    vocab = _width(config, "vocab_size")
    a_h, a_i, a_kv = _LAYER_BYTES.get(dtype, _LAYER_BYTES[torch.float32])
    layer = a_h * h + a_i * inter + a_kv * kv
    # checkpointing keeps each layer's fp32 input, and one layer's activations while it is recomputed
    body = layers * 4 * h + layer if gradient_checkpointing else layers * layer
    return body + _OUTER_BYTES * h + _HEAD_BYTES * vocab * response_share + seq_len


def training_state_bytes(n_params: int, n_trainable: int, dtype: torch.dtype = torch.float32) -> int:
    """fp32 master weights of every parameter, fp32 gradients and AdamW's two moments of the trainable ones,
    and, under 16-bit autocast, the 16-bit copy of the weights autocast keeps during a step."""
    copies = 2 * n_params if dtype in (torch.bfloat16, torch.float16) else 0
    return 4 * n_params + (4 + 8) * n_trainable + copies


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_params(config) -> int:
    """Parameters of a causal LM built from `config`, counted on the meta device (no memory, no time)."""
    return sum(p.numel() for p in _meta_model(config).parameters())


def lora_params(config, r: int) -> int:
    """Trainable parameters of a rank-r LoRA adapter on every linear layer but the LM head (PEFT's all-linear)."""
    model = _meta_model(config)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return sum(r * (m.in_features + m.out_features) for m in linears)


def token_budget(
    free_bytes: int,
    model_config,
    dtype: torch.dtype,
    *,
    max_length: int,
    n_params: int | None = None,
    n_trainable: int | None = None,
    gradient_checkpointing: bool = False,
    response_share: float = 1.0,
    measured_bytes_per_token: float | None = None,
    headroom: float = HEADROOM,
) -> int:
    """Padded tokens per training micro-batch that fit in `free_bytes` (the trainer's micro_batch_tokens).

    `free_bytes`: device memory free before the model is loaded (`free_device_bytes`). `n_trainable`
    defaults to every parameter (full fine-tuning; give the adapter's count for LoRA). The budget is at
    least `max_length` (one longest example), else the run cannot fit at all: one UserError naming the
    numbers. The effective batch is not touched: it is still cut into micro-batches under this cap.
    """
    n_params = n_params if n_params is not None else count_params(model_config)
    n_trainable = n_params if n_trainable is None else n_trainable
    state = training_state_bytes(n_params, n_trainable, dtype)
    per_token = measured_bytes_per_token or activation_bytes_per_token(
        model_config,
        dtype,
        gradient_checkpointing=gradient_checkpointing,
        response_share=response_share,
        seq_len=max_length,
    )
    usable = free_bytes * headroom - state
    budget = math.floor(usable / per_token) if usable > 0 else 0
    if budget < max_length:
        gib = 2**30
        raise UserError(
            f"training does not fit: {free_bytes / gib:.1f} GiB free, {state / gib:.1f} GiB for weights, gradients "
            f"and optimizer state, {per_token * max_length / gib:.2f} GiB of activations for one {max_length}-token "
            "example: use LoRA (lora_r), gradient_checkpointing or a shorter max_length"
        )
    return budget


def free_device_bytes(device: torch.device | str) -> int:
    """Free memory of a device: CUDA's allocator view, or the host's available memory for a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise UserError("cannot read the available memory of this machine (/proc/meminfo)")


@contextlib.contextmanager
def saved_activation_bytes(model: torch.nn.Module) -> Iterator[dict]:
    """Inside the block, sums the bytes of the tensors autograd saves for backward, `model`'s parameters
    excluded: `with saved_activation_bytes(model) as saved: loss = f(batch)`, then `saved["bytes"]`.
    (Autocast's 16-bit weight copies count here; `training_state_bytes` counts them too.)"""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    result = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(n for ptr, n in seen.items() if ptr not in params)
