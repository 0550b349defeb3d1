"""The readers (files.py): only regular files, bounded reads, strict text, JSON and YAML that cannot explode;
and the writers: atomic, with the modes the umask gives."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftgen.errors import UserError, one_line
from ftgen.files import (
    YAML_MAX_DEPTH,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_tree,
    current_umask,
    read_bytes,
    read_json,
    read_jsonl,
    read_text,
    read_yaml,
    stat_input,
    text_problem,
)
from helpers import make_special

SPECIAL = {
    "fifo": "is a FIFO (named pipe)",
    "dev_zero": "is a character device",
    "socket": "is a socket",
    "loop": "symbolic link loop",
    "dangling": "dangling symbolic link",
    "directory": "is a directory, expected a file",
    "missing": "file not found",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("reader", [read_bytes, read_text, read_json, read_jsonl, read_yaml])
def test_only_regular_files_are_read(kind, reader, tmp_path):
    path = make_special(kind, tmp_path / "x.json")
    with pytest.raises(UserError) as e:
        reader(path)
    assert str(e.value).startswith(str(path)) and SPECIAL[kind] in str(e.value)


def test_directories_where_a_directory_is_expected(tmp_path):
    assert stat.S_ISDIR(stat_input(tmp_path, "dir").st_mode)
    assert stat.S_ISDIR(stat_input(tmp_path, "any").st_mode)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, expected a directory"):
        stat_input(tmp_path / "f", "dir")
    with pytest.raises(UserError, match="is a FIFO"):
        stat_input(make_special("fifo", tmp_path / "p"), "any")
    with pytest.raises(UserError, match="NUL"):
        stat_input("a\x00b", "file")
    with pytest.raises(UserError, match="a parent of it is not a directory"):
        stat_input(tmp_path / "f" / "x.json")


def test_reads_are_bounded(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b" " * 5000 + b"]")
    assert read_json(path) == []
    monkeypatch.setenv("FTGEN_MAX_FILE_BYTES", "1000")
    with pytest.raises(UserError, match=r"big.json: 4.9 KiB, larger than the 1000 bytes ftgen reads \(set FTGEN_MAX"):
        read_json(path)
    for bad in ("lots", "-1", "0", "1e9", "9" * 40, "9" * 5000):
        monkeypatch.setenv("FTGEN_MAX_FILE_BYTES", bad)
        with pytest.raises(UserError, match="FTGEN_MAX_FILE_BYTES: expected a positive number of bytes"):
            read_json(path)


def test_a_file_longer_than_its_stat_size_is_read_to_the_end_within_the_bound():
    """/proc files report size 0: the read goes on to the real end, and stops at the bound."""
    text = read_text("/proc/self/status")
    assert "Umask:" in text and os.stat("/proc/self/status").st_size == 0
    with pytest.raises(UserError, match="larger than the 10 bytes"):
        read_bytes("/proc/self/status", max_bytes=10)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\xef\xbb\xbfhello", "hello"),  # a UTF-8 byte-order mark is skipped
        ("caf\u00e9 \u2028 \U0001f600".encode(), "caf\u00e9 \u2028 \U0001f600"),
    ],
)
def test_text_that_is_read(tmp_path, data, expected):
    (tmp_path / "t.txt").write_bytes(data)
    assert read_text(tmp_path / "t.txt") == expected


@pytest.mark.parametrize(
    "data, message",
    [
        ("hi".encode("utf-16"), "encoded as UTF-16 (byte-order mark): save it as UTF-8"),
        ("hi".encode("utf-32"), "encoded as UTF-32"),
        ("hi".encode("utf-16-be"), "holds a NUL byte (at byte 0)"),
        (b"caf\xe9", "not valid UTF-8 (byte 3)"),
        (b"ok\x00", "holds a NUL byte (at byte 2): not a text file"),
        (b"\xed\xa0\x80", "not valid UTF-8"),  # an encoded surrogate is not UTF-8
    ],
)
def test_text_that_is_refused(tmp_path, data, message):
    (tmp_path / "t.txt").write_bytes(data)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_text(tmp_path / "t.txt")


def test_text_problem():
    assert text_problem("plain \u00e9 \U0001f600 {braces}") is None
    assert "NUL" in text_problem("a\x00b")
    assert "lone UTF-16 surrogate (\\udc80)" in text_problem("a\udc80b")


@pytest.mark.parametrize(
    "text, strict, message",
    [
        ("[" * 100_000 + "]" * 100_000, False, "nested too deeply"),
        ("[" + "1" * 5000 + "]", False, "a number of more than 4300 digits"),
        ("[NaN]", True, "NaN is not a JSON number"),
        ('{"a": -Infinity}', True, "-Infinity is not a JSON number"),
        ('{"a": 1, "a": 2}', True, "duplicate key 'a' in an object"),
        ('[{"x": {"a": 1, "a": 1}}]', True, "duplicate key 'a'"),
        ("[1] 2", False, "invalid JSON at line 1 column 5: Extra data"),
        ("  \n ", False, "empty file"),
    ],
)
def test_json_that_is_refused(tmp_path, text, strict, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        read_json(path, strict=strict)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"ok": 1}\n' + text.replace("\n", " ") + "\n")
    if text.strip():
        with pytest.raises(UserError, match="on line 2"):
            read_jsonl(lines, strict=strict)


def test_our_own_json_may_hold_nan(tmp_path):
    """Not strict (ftgen's own files: a diverged loss is NaN) reads what json.dumps wrote."""
    path = tmp_path / "loss.json"
    path.write_text('{"loss": NaN, "x": 1}')
    assert read_json(path)["x"] == 1


def test_jsonl_lines_are_split_at_newlines_only(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"t": "a\u2028b\\u001cc"}\r\n\n{"t": "d"}\n', encoding="utf-8")  # U+2028 raw, U+001C escaped
    assert read_jsonl(path, strict=True) == [{"t": "a\u2028b\x1cc"}, {"t": "d"}]


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_reads_as_yaml_1_2_does(tmp_path):
    data = read_yaml(yaml_file(tmp_path, "labels: [yes, no, on, off, Y]\nflag: true\nday: 2024-01-01\nsep: =\nn: 0x1F"))
    assert data == {"labels": ["yes", "no", "on", "off", "Y"], "flag": True, "day": "2024-01-01", "sep": "=", "n": 31}
    merged = read_yaml(yaml_file(tmp_path, "base: &b {lr: 1, epochs: 2}\nrun: {<<: *b, lr: 3}\n"))
    assert merged["run"] == {"lr": 3, "epochs": 2}  # a merge key's values may be overridden: no duplicate
    shared = read_yaml(yaml_file(tmp_path, "a: &a [1, 2]\nb: *a\nc: *a\n"))
    assert shared["b"] == shared["c"] == [1, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\nb: 2\na: 3\n", "invalid YAML at line 3: duplicate key 'a' (first at line 1)"),
        ("x:\n  y: 1\n  y: 2\n", "at line 3: duplicate key 'y' (first at line 2)"),
        ("- {k: 1, k: 1}\n", "duplicate key 'k'"),
        ("a: !!python/object/apply:os.system [ls]\n", "tag '!!python/object/apply:os.system' is not allowed"),
        ("a: !!binary aGk=\n", "tag '!!binary' is not allowed"),
        ("a: !!timestamp 2024-01-01\n", "tag '!!timestamp' is not allowed"),
        ("a: !local x\n", "tag '!local' is not allowed"),
        ("a: 1\n---\nb: 2\n", "expected a single document"),
        ("a: &a [*a]\n", "field 'a.0': a recursive alias"),
        ("a: .inf\n", "field 'a': Input should be a finite number, got inf"),
        ("a: [1, -.inf]\n", "field 'a.1': Input should be a finite number"),
        ("a: {b: .NaN}\n", "field 'a.b': Input should be a finite number"),
        ('a: "x\\0"\n', "field 'a': holds a NUL character"),
        ('"k\\0": 1\n', "a key in field '(top level)': holds a NUL character"),
        ("a: " + "9" * 4400 + "\n", "a number of more than 4300 digits"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nesting depth"),
        ("a: \x07\n", "unacceptable character #x0007"),
        ("", "empty file"),
        ("# only a comment\n", "empty file"),
    ],
)
def test_yaml_that_is_refused_in_one_line(tmp_path, text, message):
    path = yaml_file(tmp_path, text)
    with pytest.raises(UserError) as e:
        read_yaml(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 values expanded
    with pytest.raises(UserError, match="expands to more than 100000 values"):
        read_yaml(yaml_file(tmp_path, "\n".join(lines) + "\n"))
    assert yaml.safe_load("\n".join(lines[:4]))  # the same document, small: PyYAML itself is fine with it


def test_check_tree_depth_and_sharing():
    deep: dict = {}
    node = deep
    for _ in range(YAML_MAX_DEPTH + 5):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(UserError, match=f"nested deeper than {YAML_MAX_DEPTH} levels"):
        check_tree(deep, "c.yaml")
    leaf = list(range(90))
    check_tree({"a": [leaf] * 1000}, "c.yaml")  # 90k values: the limit is on values, not on references
    with pytest.raises(UserError, match="expands to more than"):
        check_tree({"a": [leaf] * 1200}, "c.yaml")


def test_one_line_escapes_every_line_break_python_knows():
    breaks = [chr(c) for c in range(0x110000) if 0xD800 > c or c > 0xDFFF if len(f"a{chr(c)}b".splitlines()) > 1]
    text = "x".join(breaks) + "\x00\ud800"
    shown = one_line(text)
    assert len(shown.splitlines()) == 1 and "\\n" in shown and "\\ud800" in shown
    shown.encode("utf-8")  # printable


# ---------------------------------------------------------------- writing: modes follow the umask


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_current_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_files_follow_the_umask(umask, tmp_path):
    atomic_write_text(tmp_path / "report.md", "# report\n")
    atomic_write_json(tmp_path / "sub" / "metrics.json", {"score": 1})
    for path in (tmp_path / "report.md", tmp_path / "sub" / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~umask


def test_a_saved_model_follows_the_umask(umask, tmp_path):
    """transformers writes model.safetensors 0o600 through a temp file; the atomic checkpoint dir fixes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftgen.checkpoint import atomic_dir

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with atomic_dir(tmp_path / "run" / "model") as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)
    model = tmp_path / "run" / "model"
    assert (model / "model.safetensors").exists()
    for path in model.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert stat.S_IMODE(model.stat().st_mode) == 0o777 & ~umask


def test_a_binary_or_sparse_file_is_refused_from_its_head(tmp_path):
    """read_text looks at the first 64 KiB before reading the rest: a 1 GiB sparse file (all NULs) is refused
    after one small read, and check_head sees only that head."""
    sparse = tmp_path / "sparse.json"
    with sparse.open("wb") as f:
        f.truncate(2**30)
    with pytest.raises(UserError, match="holds a NUL byte \\(at byte 0\\)"):
        read_text(sparse)
    seen = []

    def refuse(head: bytes) -> None:
        seen.append(len(head))
        raise UserError("refused")

    with pytest.raises(UserError, match="refused"):
        read_bytes(sparse, check_head=refuse)
    assert seen == [2**16 + 1]


# ---------------------------------------------------------------- atomic writes that fail or are killed

WRITERS = {
    "bytes": lambda path, n: atomic_write_bytes(path, b"new" * n),
    "text": lambda path, n: atomic_write_text(path, "new" * n),
    "json": lambda path, n: atomic_write_json(path, {"new": "x" * n}),
    "jsonl": lambda path, n: atomic_write_jsonl(path, [{"new": i} for i in range(n)]),
}


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["rename", "fsync"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_atomic_write_that_fails_leaves_the_old_file_as_it_was(tmp_path, monkeypatch, writer, where):
    """A full disk met at the rename (or at the fsync before it): the old file keeps its old content, no temp
    file is left, the error reaches the caller."""
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"old": list(range(100))})
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace" if where == "rename" else "fsync", _no_space)
    with pytest.raises(OSError) as failed:
        WRITERS[writer](path, 5000)
    monkeypatch.undo()
    assert failed.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    WRITERS[writer](path, 3)  # room again: the new content replaces the old
    assert path.read_bytes() != before and b"new" in path.read_bytes()


def test_a_first_atomic_write_that_fails_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _no_space)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "report.md", "# report")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


ALTERNATING_WRITER = """
import sys
from ftgen.files import atomic_write_bytes
print("ready", flush=True)
i = 0
while True:
    i += 1
    atomic_write_bytes(sys.argv[1], bytes([97 + i % 2]) * 1_000_000)
"""


def test_a_reader_never_sees_a_half_written_file_and_a_kill_leaves_a_whole_one(tmp_path):
    """A writer rewrites a 1 MB file in a loop (all 'a', then all 'b', ...) until kill -9; every read in between
    gets one whole version."""
    path = tmp_path / "big.bin"
    atomic_write_bytes(path, b"a" * 1_000_000)

    def whole(data: bytes) -> bytes:
        assert len(data) == 1_000_000 and data.count(data[:1]) == len(data), "a half-written file was read"
        return data[:1]

    proc = subprocess.Popen([sys.executable, "-c", ALTERNATING_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen, reads, t0 = set(), 0, time.monotonic()
        while time.monotonic() - t0 < 1.0 or (len(seen) < 2 and time.monotonic() - t0 < 30):
            seen.add(whole(path.read_bytes()))
            reads += 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen == {b"a", b"b"}, (seen, reads)  # the writer did rewrite it while it was read
    whole(path.read_bytes())
    others = [p.name for p in tmp_path.iterdir() if p.name != "big.bin"]  # at most the killed write's hidden temp
    assert all(n.startswith(".big.bin.") and n.endswith(".tmp") for n in others) and len(others) <= 1, others
