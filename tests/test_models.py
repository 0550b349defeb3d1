import json
from pathlib import Path

import pytest
import torch

from ftgen.errors import UserError
from ftgen.models import choose_dtype, gguf_path, load_model, max_length


def test_cached_default_model_is_a_plain_checkpoint(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (default_model_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)  # bare load, as other tools do
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == "<|im_end|>"


def test_cached_model_equals_the_gguf_model(default_model_dir):
    """The rebuilt checkpoint computes exactly what transformers' GGUF loader computes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, ours(ids).logits, atol=1e-4)


def test_default_model_knows_english(default_model_fp32):
    """A real pretrained model: fluent text is far more likely than the same words shuffled."""
    model, tokenizer = default_model_fp32

    def loss(text):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(ids, labels=ids).loss.item()

    fluent = "The cat sat on the mat and looked out of the window at the birds."
    shuffled = "window mat the at looked sat birds the cat of and on out the The."
    assert loss(fluent) < loss(shuffled) - 1.0
    assert tokenizer.pad_token is not None
    assert max_length(model, tokenizer) == 8192 and max_length(model, tokenizer, cap=1024) == 1024


def test_dtype_choice(monkeypatch):
    assert choose_dtype("fp32") == torch.float32
    monkeypatch.setenv("FTGEN_DTYPE", "bf16")
    assert choose_dtype("auto") == torch.bfloat16
    monkeypatch.delenv("FTGEN_DTYPE")
    with pytest.raises(UserError, match="unknown dtype"):
        choose_dtype("int3")


# /proc/cpuinfo of a 2-core machine, abridged; {flags} is each core's flag list
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum
flags\t\t: fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 fma avx avx2 {flags}
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 fma avx avx2 {flags}
"""


class FakeProcFile:
    """Stands for pathlib.Path inside ftgen.models: /proc/cpuinfo reads as `text` (or fails with OSError)."""

    text: str | None = None

    def __init__(self, path: str):
        assert str(path) == "/proc/cpuinfo", path

    def read_text(self, *args, **kwargs) -> str:
        if self.text is None:
            raise PermissionError("/proc/cpuinfo")
        return self.text


@pytest.mark.parametrize(
    ("flags", "fast"),
    [
        ("avx512f avx512bw avx512vl avx512_vnni", False),  # AVX-512 without its bf16 extension: bf16 is emulated
        ("avx512f avx512bw avx512_bf16 avx512_vnni", True),
        ("avx512f amx_bf16 amx_tile amx_int8", True),
        ("", False),
        (None, False),  # unreadable (a sandbox): fp32, the safe choice
    ],
    ids=["avx512-without-bf16", "avx512-bf16", "amx", "no-flags", "unreadable"],
)
def test_auto_dtype_on_a_cpu_follows_its_bf16_flags(monkeypatch, capsys, flags, fast):
    from ftgen import models
    from helpers import run_cli_inprocess

    monkeypatch.delenv("FTGEN_DTYPE", raising=False)
    monkeypatch.setattr(FakeProcFile, "text", None if flags is None else CPUINFO.format(flags=flags))
    monkeypatch.setattr(models, "Path", FakeProcFile)
    assert models.cpu_supports_bf16.__wrapped__() is fast  # the flags parsed (past the cache)
    monkeypatch.undo()

    monkeypatch.delenv("FTGEN_DTYPE", raising=False)
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: fast)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)
    assert choose_dtype("fp32", "cpu") == torch.float32 and choose_dtype("bf16", "cpu") == torch.bfloat16
    out = run_cli_inprocess(capsys, "models")  # the choice is printed
    assert out.returncode == 0 and f"device: cpu, dtype: {'bfloat16' if fast else 'float32'}" in out.stdout
    monkeypatch.setenv("FTGEN_DTYPE", "fp16")  # replaces auto only
    assert choose_dtype("auto", "cpu") == torch.float16 and choose_dtype("fp32", "cpu") == torch.float32


@pytest.mark.parametrize(
    ("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)], ids=["bf16", "no-bf16"]
)
def test_auto_dtype_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16, expected):
    from ftgen import models

    monkeypatch.delenv("FTGEN_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: not bf16)  # the CPU's flags do not decide on a GPU
    assert choose_dtype("auto", "cuda") == expected and choose_dtype("auto", "cuda:1") == expected
    assert choose_dtype("fp32", "cuda") == torch.float32


def test_training_computes_in_the_auto_dtype(monkeypatch, paper_data):
    """The trainer asks choose_dtype for its device (fp32 master weights either way)."""
    from ftgen import models
    from ftgen.config import TrainConfig
    from ftgen.train import Hardware

    monkeypatch.delenv("FTGEN_DTYPE", raising=False)
    for fast, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_supports_bf16", lambda fast=fast: fast)
        hw = Hardware.for_run(TrainConfig(task="sentiment", data_dir=str(paper_data)))
        assert hw.compute_dtype == expected
        assert Hardware.for_run(TrainConfig(task="sentiment", dtype="fp32")).compute_dtype == torch.float32


def test_unloadable_model(tmp_path):
    with pytest.raises(UserError, match="cannot load model"):
        load_model(str(tmp_path))  # an empty directory
    with pytest.raises(UserError, match="no such directory"):
        load_model("./no/such/model")


def test_explicit_dtype_beats_the_environment(monkeypatch):
    """FTGEN_DTYPE replaces only `auto`: the fp32 that training's master weights ask for stays fp32."""
    monkeypatch.setenv("FTGEN_DTYPE", "bf16")
    assert choose_dtype("auto") == torch.bfloat16
    assert choose_dtype("fp32") == torch.float32
    assert choose_dtype("fp16") == torch.float16
    monkeypatch.setenv("FTGEN_DTYPE", "fp32")
    assert choose_dtype("bf16") == torch.bfloat16
    monkeypatch.setenv("FTGEN_DTYPE", "auto")
    assert choose_dtype("fp32") == torch.float32
    monkeypatch.setenv("FTGEN_DTYPE", "int3")
    assert choose_dtype("fp32") == torch.float32  # asked for: the environment is not even read
    with pytest.raises(UserError, match="FTGEN_DTYPE: unknown dtype 'int3'"):
        choose_dtype("auto")


def test_loaded_weights_follow_the_dtype_precedence(monkeypatch, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftgen.models import load_tokenizer

    tok = load_tokenizer("default")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("FTGEN_DTYPE", "bf16")
    model, _ = load_model(str(tmp_path / "tiny"), dtype="fp32")
    assert next(model.parameters()).dtype == torch.float32
    model, _ = load_model(str(tmp_path / "tiny"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_the_cache_dir(monkeypatch, tmp_path):
    from ftgen.models import cache_dir

    monkeypatch.setenv("FTGEN_CACHE", "~/x-ftgen")
    assert cache_dir() == Path.home() / "x-ftgen"
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    for empty in ("", "   "):
        monkeypatch.setenv("FTGEN_CACHE", empty)
        with pytest.raises(UserError, match="FTGEN_CACHE is set but empty"):
            cache_dir()
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("FTGEN_CACHE", str(tmp_path / "f"))
    with pytest.raises(UserError, match="is not a directory"):
        cache_dir()


@pytest.mark.parametrize(
    "name, path_like",
    [
        ("gpt2", False),
        ("meta-llama/Llama-2-7b-hf", False),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", False),
        ("./model", True),
        ("../runs/x/model", True),
        ("/abs/model", True),
        ("~/model", True),
        ("a/b/c", True),
        ("runs\\x", True),
        ("my model", True),
        ("owner/name--x", True),
        ("owner/", True),
        ("", True),
    ],
)
def test_which_names_are_paths(name, path_like, tmp_path, monkeypatch):
    from ftgen.hub import check_model_name, looks_like_path

    monkeypatch.chdir(tmp_path)
    assert looks_like_path(name) == path_like
    if path_like:
        with pytest.raises(UserError, match="no such directory"):
            check_model_name(name)
    else:
        check_model_name(name)  # a Hub id: left to the Hub (or the local cache)


def test_a_relative_path_under_an_existing_directory_is_a_path(tmp_path, monkeypatch):
    from ftgen.hub import check_model_name
    from ftgen.models import resolve_model

    monkeypatch.chdir(tmp_path)
    check_model_name("models/nope")  # no models/ here: a Hub id (owner 'models')
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError, match="model 'models/nope': no such directory"):
        check_model_name("models/nope")
    (tmp_path / "models" / "mine").mkdir()
    assert resolve_model("models/mine") == "models/mine"


@pytest.mark.timeout(60)
def test_a_hub_id_offline_fails_in_one_line_within_seconds(monkeypatch, tmp_path):
    import time

    from ftgen import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    hub.hub_unreachable.cache_clear()
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError) as e:
            load_model("someone/no-such-model-ftgen")
        assert time.monotonic() - t0 < 15
        assert "no Hugging Face model of that id in the local cache (the Hub cannot be reached" in str(e.value)
    finally:
        hub.hub_unreachable.cache_clear()


def test_the_hub_probe(monkeypatch):
    """Unreachable: a refused connection, or offline by the environment. Reachable: a listening port."""
    import socket

    from ftgen import hub

    for v in (*hub.OFFLINE_ENV, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hub.hub_unreachable.cache_clear()
        assert not hub.hub_unreachable()
        server.close()
        hub.hub_unreachable.cache_clear()
        assert hub.hub_unreachable()  # connection refused
        monkeypatch.setenv("HF_ENDPOINT", "http://no-such-host.invalid")
        hub.hub_unreachable.cache_clear()
        assert hub.hub_unreachable()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hub.hub_unreachable.cache_clear()
        assert hub.hub_unreachable()
    finally:
        server.close()
        hub.hub_unreachable.cache_clear()


def test_hub_ids():
    from ftgen.hub import is_hub_id

    assert all(map(is_hub_id, ["gpt2", "a/b", "EleutherAI/pythia-70m", "x_y.z/A-1", "a" * 96]))
    assert not any(map(is_hub_id, ["", "a/", "/a", "a/b/c", "a--b/c", "a/b..c", "-a/b", "a b", "a" * 97, "é"]))
