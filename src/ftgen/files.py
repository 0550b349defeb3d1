"""Reading user files with clear errors, and writing files atomically."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ftgen.errors import UserError


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file; a missing, unreadable or non-UTF-8 file is a UserError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def read_json(path: str | Path) -> Any:
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_jsonl(path: str | Path) -> list[Any]:
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from None
    return rows


def read_yaml(path: str | Path) -> Any:
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path}: empty file")
    return data


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
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
