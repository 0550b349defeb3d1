"""Datasets: the paper's folder layout, plain JSON / JSONL / CSV files, and Hugging Face datasets.

Every record is checked against its task and normalised to a dict holding the task's fields,
`output` (the gold answer or label word) and `id` (the record's `idx` if it has one, else its position).

Paper layout, one folder per task (`DATA_DIR/<task>/`):
    <set>_train_<size>.json     training sets by size (the first N records of a larger file are the smaller one)
    <set>_test_<n>.json         test sets
    few_shot/<set>_few_shot.json   in-context example pools, one per test set

Records whose gold label is one of the task's `ignore_labels` (MultiNLI's `-`, "no gold label") are
dropped and counted as `ignored`: they cannot be scored. Record limits apply to the raw file first
(so `--limit 250` looks at the same 250 records as the paper), then ignored records are dropped.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftgen.errors import UserError, one_line
from ftgen.files import list_dir, max_file_bytes, read_json, read_jsonl, read_text, stat_input, text_problem
from ftgen.tasks import TaskDef, plain_name

TRAIN_RE = re.compile(r"^(?P<set>.+)_train_(?P<size>\d+)\.(json|jsonl|csv)$")
TEST_RE = re.compile(r"^(?P<set>.+)_test(_\d+)?\.(json|jsonl|csv)$")
POOL_RE = re.compile(r"^(?P<set>.+)_few_shot\.(json|jsonl|csv)$")


@dataclass
class LoadReport:
    """What happened to the raw records of one file."""

    source: str
    raw: int = 0
    kept: int = 0
    invalid: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)  # the first few invalid-record messages


@dataclass
class DataSet:
    name: str
    task: str
    source: str
    records: list[dict]
    report: LoadReport

    def label_counts(self) -> Counter:
        return Counter(r["output"] for r in self.records)


# ---------------------------------------------------------------- raw files


def read_raw_records(source: str | Path) -> list:
    """Raw rows of a .json / .jsonl / .csv file, a saved HF dataset dir, or `hf:NAME[:SPLIT]`."""
    s = str(source)
    if s.startswith("hf:"):
        return _read_hf(s)
    path = Path(source)
    suffix = path.suffix.lower()
    if os.path.lexists(path) and stat.S_ISDIR(stat_input(path, "any").st_mode):
        return _read_hf_dir(path)
    if suffix == ".jsonl":
        return read_jsonl(path, strict=True)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".json" or not os.path.lexists(path):
        data = read_json(path, strict=True)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .json, .jsonl, .csv or a dataset dir)")


def _read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file with a header line; a malformed file (an unclosed quote, a row longer than the
    header: an unquoted comma?) is refused with its line number."""
    text = read_text(path)
    # a text field may be as long as the file (the csv module refuses fields over 128 KiB by default)
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text), strict=True)
    try:
        header = reader.fieldnames or []
        if dupes := sorted({c for c in header if header.count(c) > 1}):
            raise UserError(f"{path}: column '{dupes[0]}' appears more than once in the header")
        rows = []
        for row in reader:
            if None in row:  # DictReader's key for the fields beyond the header
                raise UserError(f"{path}: line {reader.line_num} has more fields than the header (an unquoted comma?)")
            rows.append(row)
        return rows
    except csv.Error as e:
        raise UserError(f"{path}: invalid CSV after line {reader.line_num}: {e}") from None


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading Hugging Face datasets needs the 'datasets' package: pip install datasets") from None
    from ftgen import progress

    datasets.logging.set_verbosity_error()  # its warnings would add lines to a one-line error
    if progress.is_quiet():
        datasets.disable_progress_bars()
    return datasets


def _check_dataset_dir(path: Path) -> None:
    """Every entry of a saved dataset dir (two levels: a DatasetDict's splits) must be a regular file or a
    directory under the size limit: the library would open a FIFO and block, or map a device."""
    limit = max_file_bytes()
    entries = list_dir(path)
    for entry in entries:
        st = stat_input(entry, "any")
        if stat.S_ISDIR(st.st_mode) and entry.parent == path:
            entries += list_dir(entry)
        elif st.st_size > limit:
            raise UserError(
                f"{entry}: larger than the {limit} bytes ftgen reads (set FTGEN_MAX_FILE_BYTES to raise it)"
            )


def _read_hf_dir(path: Path) -> list:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise UserError(f"{path}: is a directory but not a saved Hugging Face dataset")
    _check_dataset_dir(path)
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: take the test split if there is one, else the first
            split = "test" if "test" in ds else next(iter(ds.keys()))
            ds = ds[split]
        return [dict(r) for r in ds]
    except Exception as e:  # a damaged dataset fails in many ways inside the library; the user needs one line
        raise UserError(f"{path}: not a readable saved Hugging Face dataset: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


HF_SPLIT = re.compile(r"^[A-Za-z0-9_.\-]+(\[[0-9:%+\-]*\])?$")  # 'test', 'train[:100]', 'validation[10%:]'


def _parse_hf_spec(spec: str) -> tuple[str, str]:
    from ftgen.hub import is_hub_id

    _, name, *rest = spec.split(":", 2)
    split = rest[0] if rest else "test"
    if not is_hub_id(name):
        raise UserError(f"{spec}: '{name}' is not a Hugging Face dataset id (write hf:NAME or hf:OWNER/NAME[:SPLIT])")
    if not HF_SPLIT.match(split):
        raise UserError(f"{spec}: '{split}' is not a split (e.g. test, train, train[:100])")
    return name, split


def _read_hf(spec: str) -> list:
    from ftgen.hub import hub_unreachable, offline_mode

    name, split = _parse_hf_spec(spec)
    datasets = _datasets()
    offline = hub_unreachable()
    try:
        if offline:  # the local cache only: no minute of retries
            with offline_mode():
                ds = datasets.load_dataset(name, split=split)
        else:
            ds = datasets.load_dataset(name, split=split)
        return [dict(r) for r in ds]
    except Exception as e:  # hub errors come in many types; the user needs the one line
        if offline:
            raise UserError(
                f"{spec}: no local copy of Hugging Face dataset '{name}', and the Hub cannot be reached (offline)"
            ) from None
        raise UserError(f"{spec}: cannot load Hugging Face dataset: {_first_line(e)}") from None


# ---------------------------------------------------------------- validation


def _short(text: str, n: int = 60) -> str:
    """A user's value in a message: at most n characters, on one line."""
    return one_line(text if len(text) <= n else text[: n - 3] + "...")


def _bad(text: str) -> bool:
    """True if `text_problem` has something to say (fast: most text is ASCII without NUL)."""
    return "\x00" in text or (not text.isascii() and text_problem(text) is not None)


def _record_id(raw: dict, index: int, source: str) -> str:
    """The record's `idx` (or `id`) as text, else its position in the file."""
    key = "idx" if raw.get("idx") is not None else "id"
    value = raw.get(key)
    if value is None:
        return str(index)
    where = f"{source}: record {index}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}: field '{key}': expected an integer or a text id, got {type(value).__name__}")
    if isinstance(value, str) and _bad(value):
        raise UserError(f"{where}: field '{key}': {text_problem(value)}")
    return str(value)


def _as_text(value: object, source: str, index: int, key: str) -> str:
    """A field that is not text already: a number becomes text; anything else is an error."""
    where = f"{source}: record {index}"
    if value is None:
        raise UserError(f"{where}: field '{key}': missing")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: field '{key}': expected text, got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"{where}: field '{key}': expected text, got {type(value).__name__}")


def normalise_record(raw: object, task: TaskDef, index: int, source: str) -> dict | None:
    """The record in ftgen's shape, None if its gold label is ignored; UserError if it is invalid."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: record {index}: expected an object with fields, got {type(raw).__name__}")
    out: dict = {"id": _record_id(raw, index, source)}
    for name in (*task.fields, "output"):
        key = task.field_map.get(name, name)
        value = raw.get(key)
        if name == "output" and task.label_map and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = task.label_map.get(str(value), value)
        if type(value) is not str:
            value = _as_text(value, source, index, key)
        if _bad(value):  # it would pass here and crash the tokenizer after the model loaded
            raise UserError(f"{source}: record {index}: field '{key}': {text_problem(value)}")
        if not value.strip():
            raise UserError(f"{source}: record {index}: field '{key}': empty text")
        out[name] = value
    if out["output"] in task.ignore_labels:
        return None
    if task.kind == "classification" and out["output"] not in task.labels:
        raise UserError(
            f"{source}: record {index}: field '{task.field_map.get('output', 'output')}': "
            f"label '{_short(out['output'])}' is not one of the label words {task.labels}"
        )
    return out


def load_records(
    source: str | Path,
    task: TaskDef,
    *,
    limit: int | None = None,
    skip_invalid: bool = False,
    allow_empty: bool = False,
) -> tuple[list[dict], LoadReport]:
    """Read and validate one file of records for `task` (first `limit` raw records)."""
    raw = read_raw_records(source)
    if limit is not None:
        raw = raw[:limit]
    report = LoadReport(source=str(source), raw=len(raw))
    records = []
    for i, row in enumerate(raw):
        try:
            rec = normalise_record(row, task, i, str(source))
        except UserError as e:
            if not skip_invalid:
                raise UserError(f"{e} (set skip_invalid / --skip-invalid to drop and count such records)") from None
            report.invalid += 1
            if len(report.problems) < 5:
                report.problems.append(str(e))
            continue
        if rec is None:
            report.ignored += 1
        else:
            records.append(rec)
    report.kept = len(records)
    if not records and not allow_empty:
        raise UserError(
            f"{source}: no usable records ({report.raw} raw, {report.invalid} invalid, "
            f"{report.ignored} with an ignored label)"
        )
    return records, report


# ---------------------------------------------------------------- paper layout


@dataclass
class TaskFiles:
    """The files of one task in a paper-layout data dir."""

    task: TaskDef
    folder: Path
    train: dict[str, dict[int, Path]]  # set name -> size -> file
    test: dict[str, Path]
    pools: dict[str, Path]


def _data_dir(data_dir: str | Path) -> Path:
    if not os.path.lexists(data_dir):
        raise UserError(f"{data_dir}: data directory not found")
    stat_input(data_dir, "dir")  # a file, a FIFO, a symlink loop: one line naming it
    return Path(data_dir)


def _names(folder: Path) -> list[Path]:
    """The visible entries of a folder (hidden ones, e.g. macOS `._x.json` files, are not data)."""
    return [p for p in list_dir(folder) if not p.name.startswith(".")]


def scan_task_files(data_dir: str | Path, task: TaskDef) -> TaskFiles:
    folder = _data_dir(data_dir) / task.folder
    if not os.path.lexists(folder):
        raise UserError(f"{folder}: no folder for task '{task.name}' in the data directory")
    train: dict[str, dict[int, Path]] = {}
    test: dict[str, Path] = {}
    pools: dict[str, Path] = {}
    for p in _names(folder):
        if m := TRAIN_RE.match(p.name):
            train.setdefault(m["set"], {})[int(m["size"])] = p
        elif m := TEST_RE.match(p.name):
            test[m["set"]] = p
    if os.path.lexists(folder / "few_shot"):
        for p in _names(folder / "few_shot"):
            if m := POOL_RE.match(p.name):
                pools[m["set"]] = p
    return TaskFiles(task, folder, train, test, pools)


def _is_file_spec(name: str) -> bool:
    return name.startswith("hf:") or "/" in name or os.sep in name or name.endswith((".json", ".jsonl", ".csv"))


def _set_name(spec: str) -> str:
    """The name a set given as a file or `hf:` spec goes by (a directory name in the output): plain."""
    name = spec.replace("/", "--") if spec.startswith("hf:") else Path(spec).stem
    try:
        return plain_name(name)
    except ValueError as e:
        raise UserError(f"{spec}: its file name gives no usable set name: {e}") from None


def load_test_set(
    data_dir: str | Path | None,
    task: TaskDef,
    name: str,
    *,
    limit: int | None = None,
    skip_invalid: bool = False,
) -> DataSet:
    """A test set by name (paper layout under data_dir) or by file path / `hf:` spec."""
    if _is_file_spec(name):
        source: str | Path = name
        set_name = _set_name(name)
    else:
        if data_dir is None:
            raise UserError(f"test set '{name}': set data_dir (--data-dir), or give a file path")
        files = scan_task_files(data_dir, task)
        if name not in files.test:
            raise UserError(
                f"unknown test set '{name}' for task '{task.name}' (known: {', '.join(sorted(files.test)) or 'none'})"
            )
        source, set_name = files.test[name], name
    records, report = load_records(source, task, limit=limit, skip_invalid=skip_invalid)
    return DataSet(set_name, task.name, str(source), records, report)


def load_pool(data_dir: str | Path | None, task: TaskDef, name: str, *, pool_path: str | None = None) -> DataSet:
    """The in-context example pool of test set `name` (or the file `pool_path`)."""
    if pool_path is None:
        if data_dir is None or _is_file_spec(name):
            raise UserError(f"test set '{name}': in-context examples need a pool (few_shot file)")
        files = scan_task_files(data_dir, task)
        if name not in files.pools:
            raise UserError(f"no few-shot pool for '{name}' in {files.folder / 'few_shot'}")
        pool_path = str(files.pools[name])
    records, report = load_records(pool_path, task)
    return DataSet(name, task.name, pool_path, records, report)


def load_train_set(
    data_dir: str | Path | None,
    task: TaskDef,
    name: str,
    size: int | None,
    *,
    sample_seed: int | None = None,
    allow_smaller: bool = False,
    skip_invalid: bool = False,
) -> DataSet:
    """`size` training records of set `name`: the first N (or N sampled with `sample_seed`).

    In the paper layout the file of exactly that size is used, else the smallest larger one.
    """
    if size is not None and size <= 0:
        raise UserError(f"train size must be positive, got {size}")
    if _is_file_spec(name):
        source: str | Path = name
    else:
        if data_dir is None:
            raise UserError(f"train set '{name}': set data_dir (--data-dir), or give a file path")
        by_size = scan_task_files(data_dir, task).train.get(name)
        if not by_size:
            raise UserError(f"unknown train set '{name}' for task '{task.name}'")
        fitting = [s for s in sorted(by_size) if size is None or s >= size]
        source = by_size[fitting[0] if fitting else max(by_size)]
    records, report = load_records(source, task, skip_invalid=skip_invalid)
    if size is not None:
        if size > len(records):
            if not allow_smaller:
                raise UserError(
                    f"train size {size} is larger than the {len(records)} records of "
                    f"'{name}' ({source}); set allow_smaller (--allow-smaller) to train on all of them"
                )
        elif sample_seed is None:
            records = records[:size]
        else:
            records = random.Random(sample_seed).sample(records, size)
    set_name = _set_name(name) if _is_file_spec(name) else name
    return DataSet(set_name, task.name, str(source), records, report)


# ---------------------------------------------------------------- data check


def check_data_dir(data_dir: str | Path, tasks: list[TaskDef], *, skip_invalid: bool = True) -> list[dict]:
    """One row per file of every task found in `data_dir`: role, size, invalid / ignored, label balance."""
    _data_dir(data_dir)
    rows = []
    for task in tasks:
        if not (Path(data_dir) / task.folder).is_dir():
            continue
        files = scan_task_files(data_dir, task)
        entries = [(f"train {size}", s, p) for s, by in files.train.items() for size, p in sorted(by.items())]
        entries += [("test", s, p) for s, p in files.test.items()]
        entries += [("few-shot", s, p) for s, p in files.pools.items()]
        for role, set_name, path in entries:
            records, rep = load_records(path, task, skip_invalid=skip_invalid, allow_empty=True)
            counts = Counter(r["output"] for r in records)
            balance = (
                ", ".join(f"{lab} {counts.get(lab, 0) / max(len(records), 1):.0%}" for lab in task.labels)
                if task.kind == "classification"
                else ""
            )
            rows.append(
                {
                    "task": task.name,
                    "set": set_name,
                    "role": role,
                    "records": rep.kept,
                    "invalid": rep.invalid,
                    "ignored": rep.ignored,
                    "labels": balance,
                    "file": str(path),
                    "problems": rep.problems,
                }
            )
    if not rows:
        raise UserError(f"{data_dir}: no task folders found (expected one of: {', '.join(t.folder for t in tasks)})")
    return rows
