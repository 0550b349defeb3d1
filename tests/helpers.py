"""Small helpers for tests: run the real CLI in a subprocess, write data files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: int = 600):
    """Run `python -m ftgen ARGS` for real; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "FTGEN_QUIET": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ftgen", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli_inprocess(capsys, *args: str) -> CliResult:
    """The CLI's `main()` in this process (no interpreter start-up): for the many bad-input cases."""
    from ftgen.cli import main

    old_argv = sys.argv
    sys.argv = ["ftgen", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_user_error(proc, *needles: str) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` (links not followed) with its type, size and mtime: what a refused command
    must leave exactly as it was."""
    import stat

    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            regular = stat.S_ISREG(st.st_mode)
            seen[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size if regular else 0, st.st_mtime_ns)
    return seen


def make_special(kind: str, path: Path) -> Path:
    """A path of the given kind, which no reader may open."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "socket":
        cwd = os.getcwd()
        os.chdir(path.parent)  # socket paths are limited to 108 bytes: bind a short relative name
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind(path.name)
            s.close()
        finally:
            os.chdir(cwd)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dangling":
        os.symlink("nowhere", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    return path


# A Llama shape small enough for unit tests, with the default model's vocabulary (its tokenizer fits).
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 1024,
}


def tiny_random_model(directory: Path, **changes) -> str:
    """A `random:` model spec for TINY_LLAMA (with `changes`), its config written into `directory`."""
    path = write_json(Path(directory) / "tiny.json", TINY_LLAMA | changes)
    return f"random:{path}"


def llama_style_tokenizer(corpus: list[str], vocab_size: int = 3000):
    """A SentencePiece-style tokenizer built offline the way Llama-2's tokenizer.json is (a "▁" prepended and
    every space made "▁" by the normalizer, BPE over the whole text, BOS added), its BPE merges trained on
    `corpus`. Like Llama-2's, it encodes " yes" on its own as ["▁", "▁yes"]: the leading "▁" (Llama's token
    29871) that a model never produces after a word."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")  # word-level merges
    alphabet = [*string.printable, "▁"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet),
    )
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.pad_token = fast.eos_token
    return fast
