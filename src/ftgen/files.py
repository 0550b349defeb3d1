"""Reading the files a user gives us, and writing ours atomically.

Reading: only a regular file is read (or a directory, where one is expected). A FIFO, a device, a socket, a
symlink loop or a dangling symlink is refused by `os.stat` before anything is opened, so nothing can block or
stream forever. Every read is bounded by `max_file_bytes()` (default 2 GiB, `$FTGEN_MAX_FILE_BYTES`), YAML
files by 16 MiB. Text is strict UTF-8 (a leading UTF-8 byte-order mark is skipped; UTF-16/32 and NUL bytes
are refused). JSON too deeply nested or holding a number past Python's 4300-digit limit, YAML with duplicate
keys, tags beyond plain scalars / lists / mappings, recursive or exploding aliases ("billion laughs"), a
NaN / infinity, a NUL or a lone UTF-16 surrogate: each a `UserError`, one line naming the file.

YAML is read as YAML 1.2 reads it where 1.1 surprises: only true / false are booleans (`[yes, no]` are label
words) and dates stay text.

Writing: temp file in the same directory, fsync, rename, fsync the directory. The file gets the mode any
other tool would give it (0o666 less the umask), not mkstemp's 0o600.
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from ftgen.errors import UserError

MAX_FILE_BYTES_ENV = "FTGEN_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES = 2 * 2**30
YAML_MAX_BYTES = 16 * 2**20  # task files and configs are small; PyYAML would take minutes on a huge one
YAML_MAX_DEPTH = 100  # nesting no task or config needs; deeper input would make its readers recurse
YAML_MAX_VALUES = 100_000  # values after expanding aliases: a "billion laughs" document stops here

_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def max_file_bytes() -> int:
    """The largest file ftgen reads: `$FTGEN_MAX_FILE_BYTES` bytes, default 2 GiB."""
    value = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_FILE_BYTES
    if not value.isdigit() or len(value) > 30 or int(value) < 1:
        raise UserError(f"{MAX_FILE_BYTES_ENV}: expected a positive number of bytes, got '{value[:40]}'")
    return int(value)


# ---------------------------------------------------------------- what a path is


def stat_input(path: str | Path, want: Literal["file", "dir", "any"] = "file") -> os.stat_result:
    """`os.stat` of a path we are about to read: a regular file (`want="file"`), a directory (`"dir"`) or
    either (`"any"`). Anything else is a UserError naming the path. Never opens it: a FIFO cannot block us."""
    try:
        st = os.stat(path)
    except ValueError:  # an embedded NUL
        raise UserError(f"{path!r}: a path cannot hold a NUL character") from None
    except FileNotFoundError:
        if os.path.lexists(path):
            raise UserError(f"{path}: dangling symbolic link (its target does not exist)") from None
        raise UserError(f"{path}: {'directory' if want == 'dir' else 'file'} not found") from None
    except OSError as e:
        raise UserError(f"{path}: {_os_problem(e)}") from None
    kind = stat.S_IFMT(st.st_mode)
    if kind in _SPECIAL:
        raise UserError(f"{path}: is {_SPECIAL[kind]}, not a regular file: ftgen reads only regular files")
    if stat.S_ISDIR(st.st_mode) and want == "file":
        raise UserError(f"{path}: is a directory, expected a file")
    if stat.S_ISREG(st.st_mode) and want == "dir":
        raise UserError(f"{path}: is a file, expected a directory")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UserError(f"{path}: not a regular file or directory")
    return st


def _os_problem(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symbolic link loop (or too many levels of links)"
    if e.errno == errno.ENOTDIR:
        return "not found (a parent of it is not a directory)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "not readable (permission denied)"
    if e.errno == errno.ENAMETOOLONG:
        return "path or file name too long"
    return f"cannot read: {e.strerror or e}"


def list_dir(path: str | Path) -> list[Path]:
    """The entries of a directory the user gave us, sorted by name (hidden ones too)."""
    stat_input(path, "dir")
    try:
        return sorted(Path(path).iterdir())
    except OSError as e:
        raise UserError(f"{path}: {_os_problem(e)}") from None


# ---------------------------------------------------------------- bytes and text


def read_bytes(
    path: str | Path, max_bytes: int | None = None, check_head: Callable[[bytes], None] | None = None
) -> bytes:
    """The bytes of a regular file, at most `max_bytes` (default `max_file_bytes()`). `check_head` sees the
    first 64 KiB before the rest is read: a binary or sparse file is refused without reading gigabytes."""
    limit = max_file_bytes() if max_bytes is None else max_bytes
    st = stat_input(path, "file")
    if st.st_size > limit:
        raise UserError(f"{path}: {_size(st.st_size)}, larger than the {_size(limit)} ftgen reads ({_raise_hint()})")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: if it became a FIFO since the stat, opening does not wait
    except OSError as e:
        raise UserError(f"{path}: {_os_problem(e)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path}: is no longer a regular file (it changed while being opened)")
        chunks: list[bytes] = []
        total, want = 0, min(st.st_size, limit, 2**16 if check_head else limit) + 1
        while chunk := os.read(fd, want):
            if check_head and not chunks:
                check_head(chunk)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # the file grew, or lies about its size (/proc)
                raise UserError(f"{path}: larger than the {_size(limit)} ftgen reads ({_raise_hint()})")
            want = min(max(st.st_size - total, 2**24), limit - total) + 1  # the rest at once, if its size is known
    except OSError as e:
        raise UserError(f"{path}: {_os_problem(e)}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _raise_hint() -> str:
    return f"set {MAX_FILE_BYTES_ENV} to raise the limit"


_UTF16_32_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    """A UTF-8 text file (a leading byte-order mark skipped); anything else is a UserError naming it."""

    def not_text(data: bytes) -> None:
        for bom, encoding in _UTF16_32_BOMS.items():  # UTF-32 LE first: its BOM starts like UTF-16 LE's
            if data.startswith(bom):
                raise UserError(f"{path}: encoded as {encoding} (byte-order mark): save it as UTF-8")
        if (nul := data.find(b"\x00")) >= 0:
            raise UserError(f"{path}: holds a NUL byte (at byte {nul}): not a text file")

    data = read_bytes(path, max_bytes, check_head=not_text)
    not_text(data)
    try:
        return data.decode("utf-8-sig")  # -sig: a leading UTF-8 byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be used as text (a NUL, a lone UTF-16 surrogate from a JSON `\\ud800` escape,
    which no encoder accepts), or None if it can."""
    if "\x00" in text:
        return "holds a NUL character"
    if not text.isascii() and (m := _SURROGATE.search(text)):
        return f"holds a lone UTF-16 surrogate (\\u{ord(m.group()):04x}), which is not a character"
    return None


# ---------------------------------------------------------------- JSON


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dupe = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key '{_short(dupe)}' in an object")
    return obj


def _json_options(strict: bool) -> dict:
    """Strict JSON (user data): no NaN / Infinity (not JSON) and no duplicate keys (which value is meant?)."""
    return {"parse_constant": _refuse_constant, "object_pairs_hook": _unique_keys} if strict else {}


def _json_problem(e: Exception) -> str:
    """What went wrong, for the one-line message."""
    if isinstance(e, json.JSONDecodeError):
        return e.msg
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(e):  # Python's guard against quadratic int parsing
        return "a number of more than 4300 digits"
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def read_json(path: str | Path, *, strict: bool = False) -> Any:
    """A JSON file. `strict=True` (user data): NaN, Infinity and duplicate keys are refused too."""
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path}: empty file")
    try:
        return json.loads(text, **_json_options(strict))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # the int-string limit, a refused value, deep nesting
        raise UserError(f"{path}: invalid JSON: {_json_problem(e)}") from None


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[Any]:
    """One JSON value per non-blank line (`strict` as for read_json)."""
    options = _json_options(strict)
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if line.strip():
            try:
                rows.append(json.loads(line, **options))
            except (ValueError, RecursionError) as e:
                raise UserError(f"{path}: invalid JSON on line {lineno}: {_json_problem(e)}") from None
    return rows


# ---------------------------------------------------------------- YAML

_LoaderBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, and caps nesting at 1000
_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str", "seq", "map")}
_DROPPED_RESOLVERS = {_TAG + t for t in ("bool", "timestamp", "value", "yaml")}


class StrictYamlLoader(_LoaderBase):
    """`yaml.safe_load`'s loader, stricter: a duplicate key is an error, only plain scalars, lists and
    mappings are built (`!!binary`, `!!set`, `!!python/...` and custom tags are refused), only true / false
    are booleans, dates and a lone `=` stay text."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_RESOLVERS]
        for first, resolvers in _LoaderBase.yaml_implicit_resolvers.items()
    }
    yaml_constructors = {t: f for t, f in _LoaderBase.yaml_constructors.items() if t in _PLAIN_TAGS or t is None}

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":  # `<<: *base`: its keys may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # unhashable: the base class says so
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{_short(str(key))}' (first at line {first_line[key] + 1})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)

    def construct_undefined(self, node):
        tag = node.tag.replace(_TAG, "!!")
        raise yaml.constructor.ConstructorError(
            None, None, f"tag '{_short(tag)}' is not allowed (plain values, lists and mappings only)", node.start_mark
        )


StrictYamlLoader.add_constructor(None, StrictYamlLoader.construct_undefined)
StrictYamlLoader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _yaml_problem(e: yaml.YAMLError) -> str:
    """' at line N: what' for the one-line message."""
    if isinstance(e, yaml.reader.ReaderError):
        char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "?")
        return f": unacceptable character #x{char:04x} at position {e.position}: {e.reason}"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = ", ".join(p for p in parts if p) or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{where}: {_short(text, 200)}"


def read_yaml(path: str | Path) -> Any:
    """A YAML file (task, config) read with `StrictYamlLoader`, then `check_tree`d."""
    text = read_text(path, max_bytes=min(YAML_MAX_BYTES, max_file_bytes()))
    try:
        data = yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML{_yaml_problem(e)}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as e:  # a number past Python's int-string limit
        raise UserError(f"{path}: invalid YAML: {_json_problem(e)}") from None
    if data is None:
        raise UserError(f"{path}: empty file")
    check_tree(data, str(path))
    return data


def check_tree(data: Any, source: str) -> None:
    """Refuse what a loaded YAML document may hold but no task or config needs: nesting deeper than
    YAML_MAX_DEPTH, a recursive alias, more than YAML_MAX_VALUES values once aliases are expanded, a
    NaN / infinity, a NUL or a lone surrogate in a key or a text. Iterative: deep input cannot recurse here."""
    expanded: dict[int, int] = {}  # id(container) -> its size with aliases expanded, once done
    on_path: set[int] = set()
    stack: list[tuple[Any, str, int, bool]] = [(data, "", 0, False)]
    while stack:
        node, where, depth, done = stack.pop()
        field = f"{source}: field '{where or '(top level)'}'"
        if not isinstance(node, (dict, list)):
            _check_scalar(node, field)
            continue
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if done:
            on_path.discard(id(node))
            expanded[id(node)] = 1 + sum(expanded.get(id(v), 1) for _, v in items)
            if expanded[id(node)] > YAML_MAX_VALUES:
                raise UserError(f"{field}: expands to more than {YAML_MAX_VALUES} values (an alias bomb?)")
            continue
        if id(node) in on_path:
            raise UserError(f"{field}: a recursive alias (a value that contains itself)")
        if id(node) in expanded:  # an aliased value already checked
            continue
        if depth >= YAML_MAX_DEPTH:
            raise UserError(f"{field}: nested deeper than {YAML_MAX_DEPTH} levels")
        on_path.add(id(node))
        stack.append((node, where, depth, True))
        for key, value in items:
            if isinstance(node, dict):
                _check_scalar(key, f"{source}: a key in field '{where or '(top level)'}'")
            stack.append((value, f"{where}.{key}" if where else str(key), depth + 1, False))


def _check_scalar(value: Any, field: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{field}: Input should be a finite number, got {value}")
    if isinstance(value, str) and (problem := text_problem(value)):
        raise UserError(f"{field}: {problem}")


# ---------------------------------------------------------------- writing


def current_umask() -> int:
    """The process umask, read without changing it (os.umask sets as it reads: racy under threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask_tree(root: str | Path) -> None:
    """Give every file under `root` mode 0o666 and every directory 0o777, less the umask, as a plain
    `open` / `mkdir` would (libraries that write through mkstemp leave 0o600)."""
    mask = current_umask()
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0o600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# errnos of "this place cannot take our output": a user problem, reported in one line, not a traceback
WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def ensure_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Prove that `path` can be created and written, before any long work writes there. Creates nothing:
    a temp file is made and removed in `path` or, if it does not exist yet, its nearest existing parent."""
    path = Path(path)
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UserError(f"{path}: cannot write the {what}: {place} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".ftgen-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{path}: cannot write the {what}: {e.strerror or e}") from None
    return path


def write_error_line(e: BaseException) -> str | None:
    """One line for a failed write (a full disk, a read-only or forbidden place); None if `e` is not one."""
    import sqlite3

    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}cannot write: {e.strerror} (writes are atomic: nothing half-written was left)"
    if isinstance(e, sqlite3.OperationalError) and any(
        s in str(e) for s in ("disk is full", "readonly database", "disk I/O error", "unable to open database")
    ):
        hint = "a full disk or an unwritable directory? commits are atomic: nothing partial was recorded"
        return f"results store: {e} ({hint})"
    return None
