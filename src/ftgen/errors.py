"""The one exception type that means "the user gave us something wrong", and how pydantic's errors become one."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound="BaseModel")


class UserError(Exception):
    """A problem with the user's input (config, data, arguments). The CLI prints it as one line, exit 2."""


_TAG = re.compile(r"^(literal\[|list\[|dict\[|union\[|tuple\[|constrained-|function-|(int|str|float|bool)$)")
# pydantic error types meaning "the input is not of this union branch's type"
_MISMATCH = set(
    "list_type dict_type literal_error int_type int_parsing string_type float_type float_parsing bool_type "
    "bool_parsing".split()
)


def _is_tag(part: object) -> bool:
    return isinstance(part, str) and bool(_TAG.match(part))


def format_errors(source: str, err: ValidationError, rename: dict[str, str] | None = None) -> str:
    """All validation errors on one line, each naming its field by dotted path.

    A union field (`int | dict`) fails once per branch; keep the branch the input was meant for
    (errors inside it), or merge the branch mismatches into one "should be X or Y" message.
    """
    errors = err.errors()
    by_field: dict[str, list[tuple[bool, str]]] = {}
    for e in errors:
        loc = e["loc"]
        path = ".".join(str(p) for p in loc if not _is_tag(p))
        if rename and loc and str(loc[0]) in rename:  # e.g. a TrainConfig field -> where the study sets it
            path = ".".join([rename[str(loc[0])], *path.split(".")[1:]])
        at_branch = bool(loc) and _is_tag(loc[-1]) and e["type"] in _MISMATCH
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        by_field.setdefault(path, []).append((at_branch, msg))
    # a field whose deeper errors exist: drop its branch mismatches
    prefixes = [p for p, errs in by_field.items() if any(not b for b, _ in errs)]
    parts = []
    for path, errs in by_field.items():
        real = [m for b, m in errs if not b]
        if not real and any(q.startswith(path + ".") for q in prefixes):
            continue
        msgs = real or [" or ".join(dict.fromkeys(m.removeprefix("Input should be ") for _, m in errs))]
        if not real:
            msgs = ["should be " + msgs[0]]
        # a whole-model check (no field path) names its fields in its own message
        parts += [f"field '{path}': {m}" if path else m for m in dict.fromkeys(msgs)]
    return one_line(f"{source}: " + "; ".join(parts))


def parse_fields(model: type[M], data: object, source: str, what: str, rename: dict[str, str] | None = None) -> M:
    """`data` (from YAML) validated as `model`; any problem is one UserError line naming the field
    (`rename`: top-level field -> the name the user wrote it under)."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise UserError(f"{source}: {what} must be a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(format_errors(source, e, rename)) from None


# every character str.splitlines() breaks at, shown escaped so that a message stays one line
_LINE_BREAKS = {c: f"\\x{c:02x}" for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85)}
_LINE_BREAKS |= {0x0A: "\\n", 0x0D: "\\r", 0x00: "\\0", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """User input (a YAML key, a file name, a record's text) may hold line breaks, NULs or lone surrogates:
    show them escaped, keep the one line printable."""
    text = text.translate(_LINE_BREAKS)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
