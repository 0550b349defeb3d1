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
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftgen.errors import UserError
from ftgen.files import read_json, read_jsonl, read_text
from ftgen.tasks import TaskDef

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
    if path.is_dir():
        return _read_hf_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        text = read_text(path)
        return list(csv.DictReader(io.StringIO(text)))
    if suffix == ".json" or not path.exists():
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .json, .jsonl, .csv or a dataset dir)")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading Hugging Face datasets needs the 'datasets' package: pip install datasets") from None
    return datasets


def _read_hf_dir(path: Path) -> list:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise UserError(f"{path}: is a directory but not a saved Hugging Face dataset")
    ds = _datasets().load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: take the test split if there is one, else the first
        split = "test" if "test" in ds else next(iter(ds.keys()))
        ds = ds[split]
    return [dict(r) for r in ds]


def _read_hf(spec: str) -> list:
    _, name, *rest = spec.split(":")
    split = rest[0] if rest else "test"
    try:
        ds = _datasets().load_dataset(name, split=split)
    except Exception as e:  # hub errors come in many types; the user needs the one line
        raise UserError(f"{spec}: cannot load Hugging Face dataset: {str(e).splitlines()[0]}") from None
    return [dict(r) for r in ds]


# ---------------------------------------------------------------- validation


def normalise_record(raw: object, task: TaskDef, index: int, source: str) -> dict | None:
    """The record in ftgen's shape, None if its gold label is ignored; UserError if it is invalid."""
    where = f"{source}: record {index}"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected an object with fields, got {type(raw).__name__}")
    out: dict = {"id": str(raw.get("idx", raw.get("id", index)))}
    for name in [*task.fields, "output"]:
        key = task.field_map.get(name, name)
        if key not in raw or raw[key] is None:
            raise UserError(f"{where}: field '{key}': missing")
        value = raw[key]
        if name == "output" and task.label_map:
            value = task.label_map.get(str(value), value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise UserError(f"{where}: field '{key}': expected text, got {type(value).__name__}")
        if not value.strip():
            raise UserError(f"{where}: field '{key}': empty text")
        out[name] = value
    if out["output"] in task.ignore_labels:
        return None
    if task.kind == "classification" and out["output"] not in task.labels:
        raise UserError(
            f"{where}: field '{task.field_map.get('output', 'output')}': label '{out['output']}' "
            f"is not one of the label words {task.labels}"
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
                raise UserError(f"{e} (use --skip-invalid to drop and count such records)") from None
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


def scan_task_files(data_dir: str | Path, task: TaskDef) -> TaskFiles:
    folder = Path(data_dir) / task.folder
    if not Path(data_dir).is_dir():
        raise UserError(f"{data_dir}: data directory not found")
    if not folder.is_dir():
        raise UserError(f"{folder}: no folder for task '{task.name}' in the data directory")
    train: dict[str, dict[int, Path]] = {}
    test: dict[str, Path] = {}
    pools: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if m := TRAIN_RE.match(p.name):
            train.setdefault(m["set"], {})[int(m["size"])] = p
        elif m := TEST_RE.match(p.name):
            test[m["set"]] = p
    if (folder / "few_shot").is_dir():
        for p in sorted((folder / "few_shot").iterdir()):
            if m := POOL_RE.match(p.name):
                pools[m["set"]] = p
    return TaskFiles(task, folder, train, test, pools)


def _is_file_spec(name: str) -> bool:
    return name.startswith("hf:") or "/" in name or name.endswith((".json", ".jsonl", ".csv"))


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
        set_name = Path(name).stem if not name.startswith("hf:") else name
    else:
        if data_dir is None:
            raise UserError(f"test set '{name}': give --data-dir or a file path")
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
            raise UserError(f"train set '{name}': give --data-dir or a file path")
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
                    f"'{name}' ({source}); use --allow-smaller to train on all of them"
                )
        elif sample_seed is None:
            records = records[:size]
        else:
            records = random.Random(sample_seed).sample(records, size)
    return DataSet(Path(str(name)).stem, task.name, str(source), records, report)


# ---------------------------------------------------------------- data check


def check_data_dir(data_dir: str | Path, tasks: list[TaskDef], *, skip_invalid: bool = True) -> list[dict]:
    """One row per file of every task found in `data_dir`: role, size, invalid / ignored, label balance."""
    if not Path(data_dir).is_dir():
        raise UserError(f"{data_dir}: data directory not found")
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
