"""Bad inputs that cannot live as files in tests/bad_inputs/: FIFOs, devices, sockets, symlink loops, files too
big to commit, damaged Hugging Face datasets, model names and the environment. Each is built in a sandbox
and must give exit 2, one line naming the problem, no traceback, nothing written anywhere in the sandbox,
no model loaded (a tripwire; the model cases try to load and must fail fast instead) and no hang (a
timeout per case)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import assert_user_error, run_cli_inprocess

OK_RECORDS = [{"input": "fine", "output": "positive"}, {"input": "awful", "output": "negative"}]
OK_JSON = json.dumps(OK_RECORDS)
TASK_YAML = """name: topic
kind: classification
fields: [text]
templates: ["Text: {text}\\nTopic:"]
labels: [sports, politics]
metric: accuracy
"""
STUDY_YAML = """name: s
train:
  - {task: sentiment, train_set: amazon, sizes: [16]}
eval:
  test_sets: {sentiment: [amazon]}
  limit: 4
"""


# ---------------------------------------------------------------- special files


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def link(path: Path, target: str | Path) -> Path:
    os.symlink(target, path)
    return path


def unix_socket(path: Path) -> Path:
    """A socket file; bound through a short relative name (socket paths are limited to 108 bytes)."""
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(path.name)
        s.close()
    finally:
        os.chdir(cwd)
    return path


def loop(path: Path) -> Path:
    os.symlink(path.name + ".other", path)
    os.symlink(path.name, path.with_name(path.name + ".other"))
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def paper_dir(root: Path, **special: Callable[[Path], object]) -> Path:
    """A small paper-layout data dir for `sentiment`; `special` (relative path -> maker) replaces a file or
    a folder (and all it would hold)."""
    data = root / "data"
    files = {
        "sentiment/toy_test_4.json": OK_JSON,
        "sentiment/toy_train_4.json": json.dumps(OK_RECORDS * 2),
        "sentiment/few_shot/toy_few_shot.json": OK_JSON,
    }
    for rel, text in files.items():
        if not any(rel == k or rel.startswith(k + "/") for k in special):
            write(data / rel, text)
    for rel, make in special.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        make(data / rel)
    return data


def eval_file(make: Callable[[Path], Path], name: str) -> Callable:
    """A case: `ftgen eval` on a test set file built by `make`."""

    def case(box):
        path = make(box.inputs / name)
        return ["eval", "--task", "sentiment", "--test-set", str(path), "--out", str(box.out)]

    return case


# case id -> (builder(box) -> argv, the piece of the message that names the problem)
READER_CASES: dict[str, tuple[Callable, str]] = {
    "fifo.json": (eval_file(fifo, "set.json"), "is a FIFO (named pipe), not a regular file"),
    "fifo.jsonl": (eval_file(fifo, "set.jsonl"), "is a FIFO"),
    "fifo.csv": (eval_file(fifo, "set.csv"), "is a FIFO"),
    "dev_zero.json": (eval_file(lambda p: link(p, "/dev/zero"), "set.json"), "is a character device"),
    "dev_null.jsonl": (eval_file(lambda p: link(p, "/dev/null"), "set.jsonl"), "is a character device"),
    "dev_urandom.csv": (eval_file(lambda p: link(p, "/dev/urandom"), "set.csv"), "is a character device"),
    "socket.json": (eval_file(unix_socket, "s.json"), "is a socket"),
    "self_loop.json": (eval_file(lambda p: link(p, p.name), "set.json"), "symbolic link loop"),
    "two_link_loop.json": (eval_file(loop, "set.json"), "symbolic link loop"),
    "dangling.json": (eval_file(lambda p: link(p, "gone.json"), "set.json"), "dangling symbolic link"),
    "dir_named_json": (eval_file(lambda p: p.mkdir() or p, "set.json"), "not a saved Hugging Face dataset"),
    "parent_is_a_file": (eval_file(lambda p: write(p.parent / "f.json", OK_JSON) / "x.json", "unused"), "not found"),
    "name_too_long": (eval_file(lambda p: p.with_name("a" * 300 + ".json"), "unused"), "too long"),
    "proc_self_mem.json": (eval_file(lambda p: link(p, "/proc/self/mem"), "set.json"), "set.json"),
    "utf16_no_bom.json": (eval_file(lambda p: write(p, OK_JSON.encode("utf-16-le")), "set.json"), "NUL byte"),
    "json_1e6_deep.json": (eval_file(lambda p: write(p, "[" * 10**6 + "]" * 10**6), "set.json"), "nested too deeply"),
    "json_1e5_digits.json": (eval_file(lambda p: write(p, "[" + "9" * 10**5 + "]"), "set.json"), "4300 digits"),
    "fifo_newline_in_name": (eval_file(fifo, "a\nb\u2028c.json"), "a\\nb\\u2028c.json: its file name gives"),
    "fifo_non_utf8_name": (eval_file(fifo, os.fsdecode(b"caf\xe9.json")), "caf\\udce9.json: is a FIFO"),
    "csv_1e6_deep_quotes.csv": (eval_file(lambda p: write(p, 'input,output\n"' + '""' * 10**5), "set.csv"), "CSV"),
}

LAYOUT_CASES: dict[str, tuple[Callable, str]] = {
    "data_dir_fifo": (lambda b: ["data", "check", str(fifo(b.inputs / "data"))], "is a FIFO"),
    "data_dir_file": (
        lambda b: ["data", "check", str(write(b.inputs / "data", "x"))],
        "is a file, expected a directory",
    ),
    "data_dir_loop": (lambda b: ["data", "check", str(loop(b.inputs / "data"))], "symbolic link loop"),
    "test_file_fifo": (
        lambda b: ["data", "check", str(paper_dir(b.inputs, **{"sentiment/toy_test_4.json": fifo}))],
        "toy_test_4.json: is a FIFO",
    ),
    "test_file_dev_zero": (
        lambda b: [
            "data",
            "check",
            str(paper_dir(b.inputs, **{"sentiment/toy_test_4.json": lambda p: link(p, "/dev/zero")})),
        ],
        "is a character device",
    ),
    "pool_fifo": (
        lambda b: [
            "eval",
            "--task",
            "sentiment",
            "--data-dir",
            str(paper_dir(b.inputs, **{"sentiment/few_shot/toy_few_shot.json": fifo})),
            "--test-set",
            "toy",
            "--shots",
            "1",
            "--out",
            str(b.out),
        ],
        "toy_few_shot.json: is a FIFO",
    ),
    "few_shot_dir_fifo": (
        lambda b: [
            "eval",
            "--task",
            "sentiment",
            "--data-dir",
            str(paper_dir(b.inputs, **{"sentiment/few_shot": fifo})),
            "--test-set",
            "toy",
            "--out",
            str(b.out),
        ],
        "few_shot: is a FIFO",
    ),
    "task_folder_loop": (
        lambda b: [
            "eval",
            "--task",
            "sentiment",
            "--data-dir",
            str(paper_dir(b.inputs, sentiment=loop)),
            "--test-set",
            "toy",
            "--out",
            str(b.out),
        ],
        "symbolic link loop",
    ),
    "train_file_fifo": (
        lambda b: [
            "train",
            "--task",
            "sentiment",
            "--data-dir",
            str(paper_dir(b.inputs, **{"sentiment/toy_train_4.json": fifo})),
            "--train-set",
            "toy",
            "--train-size",
            "2",
            "--out",
            str(b.out),
        ],
        "toy_train_4.json: is a FIFO",
    ),
}


def task_dir_with(entry: Callable[[Path], Path], name: str = "topic.yaml") -> Callable:
    def case(box):
        d = box.inputs / "tasks"
        d.mkdir()
        entry(d / name)
        return ["tasks", "--task-dir", str(d)]

    return case


def two_dirs_same_name(box):
    for d in ("a", "b"):
        write(box.inputs / d / "topic.yaml", TASK_YAML)
    return ["tasks", "--task-dir", str(box.inputs / "a"), "--task-dir", str(box.inputs / "b")]


TASK_CASES: dict[str, tuple[Callable, str]] = {
    "task_path_fifo": (
        lambda b: ["eval", "--task", str(fifo(b.inputs / "t.yaml")), "--test-set", "x.json", "--out", str(b.out)],
        "t.yaml: is a FIFO",
    ),
    "task_path_loop": (
        lambda b: ["eval", "--task", str(loop(b.inputs / "t.yaml")), "--test-set", "x.json", "--out", str(b.out)],
        "symbolic link loop",
    ),
    "task_path_dev_zero": (
        lambda b: (
            ["eval", "--task", str(link(b.inputs / "t.yaml", "/dev/zero")), "--test-set", "x.json"]
            + ["--out", str(b.out)]
        ),
        "is a character device",
    ),
    "task_dir_entry_fifo": (task_dir_with(fifo), "topic.yaml: is a FIFO"),
    "task_dir_entry_loop": (task_dir_with(loop), "symbolic link loop"),
    "task_dir_entry_dangling": (task_dir_with(lambda p: link(p, "nowhere.yaml")), "dangling symbolic link"),
    "task_dir_entry_directory": (task_dir_with(lambda p: p.mkdir() or p), "topic.yaml: is a directory"),
    "task_dir_entry_dev_zero": (task_dir_with(lambda p: link(p, "/dev/zero"), "z.yml"), "is a character device"),
    "task_dir_entry_socket": (task_dir_with(unix_socket, "s.yaml"), "is a socket"),
    "task_dir_is_fifo": (lambda b: ["tasks", "--task-dir", str(fifo(b.inputs / "tasks"))], "is a FIFO"),
    "task_dir_is_file": (lambda b: ["tasks", "--task-dir", str(write(b.inputs / "tasks", "x"))], "is a file"),
    "task_dir_is_loop": (lambda b: ["tasks", "--task-dir", str(loop(b.inputs / "tasks"))], "symbolic link loop"),
    "task_dir_missing": (lambda b: ["tasks", "--task-dir", str(b.inputs / "none")], "directory not found"),
    "task_name_twice": (two_dirs_same_name, "already defined"),
    "task_file_17mib": (
        task_dir_with(lambda p: write(p, TASK_YAML + "description: " + "x" * (17 * 2**20) + "\n")),
        "larger than the 16.0 MiB",
    ),
    "task_yaml_1e5_deep": (
        task_dir_with(lambda p: write(p, TASK_YAML + "description: " + "[" * 10**5 + "]" * 10**5 + "\n")),
        "nesting depth",
    ),
    "task_2000_labels": (
        task_dir_with(lambda p: write(p, TASK_YAML.replace("[sports, politics]", str([f"w{i}" for i in range(2000)])))),
        "field 'labels': List should have at most 1000 items",
    ),
    "task_30k_template": (
        task_dir_with(lambda p: write(p, TASK_YAML.replace("Text: {text}", "x" * 30_000 + "{text}"))),
        "field 'templates.0': String should have at most 20000 characters",
    ),
    "task_yaml_block_deep": (
        task_dir_with(
            lambda p: write(p, TASK_YAML + "description:\n" + "".join(" " * i + "- \n" for i in range(3000)))
        ),
        "invalid YAML",
    ),
}


def study(text: str | None = None, make: Callable | None = None) -> Callable:
    def case(box):
        path = box.inputs / "study.yaml"
        make(path) if make else write(path, text)
        return ["study", str(path), "--out", str(box.out)]

    return case


def train_config(text: str | None = None, make: Callable | None = None) -> Callable:
    def case(box):
        path = box.inputs / "train.yaml"
        make(path) if make else write(path, text)
        return ["train", "--config", str(path), "--out", str(box.out)]

    return case


BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
CONFIG_CASES: dict[str, tuple[Callable, str]] = {
    "study_fifo": (study(make=fifo), "study.yaml: is a FIFO"),
    "study_dev_zero": (study(make=lambda p: link(p, "/dev/zero")), "is a character device"),
    "study_loop": (study(make=loop), "symbolic link loop"),
    "study_directory": (study(make=lambda p: p.mkdir()), "is a directory"),
    "study_duplicate_key": (study(STUDY_YAML + "name: t\n"), "duplicate key 'name'"),
    "study_alias_bomb": (study(STUDY_YAML + "a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB), "more than 100000 values"),
    "study_recursive_alias": (study(STUDY_YAML + "x: &x [*x]\n"), "recursive alias"),
    "study_inf_lr": (study(STUDY_YAML + "hyper: {lr: [.inf]}\n"), "field 'hyper.lr.0': Input should be a finite"),
    "study_nan_epochs": (study(STUDY_YAML + "hyper: {epochs: [.nan]}\n"), "field 'hyper.epochs.0'"),
    "study_nul_name": (study(STUDY_YAML.replace("name: s", 'name: "s\\0"')), "field 'name': holds a NUL"),
    "study_python_tag": (study(STUDY_YAML + "x: !!python/name:os.system\n"), "is not allowed"),
    "study_deep": (study(STUDY_YAML + "x: " + "[" * 5000 + "]" * 5000 + "\n"), "nesting depth"),
    "study_utf16": (study(make=lambda p: write(p, STUDY_YAML.encode("utf-16"))), "encoded as UTF-16"),
    "study_huge_int": (study(STUDY_YAML + "workers: " + "1" * 5000 + "\n"), "4300 digits"),
    "train_config_fifo": (train_config(make=fifo), "train.yaml: is a FIFO"),
    "train_config_duplicate_key": (train_config("task: sentiment\nlr: 1e-5\nlr: 1e-3\n"), "duplicate key 'lr'"),
    "train_config_nul": (train_config('task: "senti\\0ment"\n'), "field 'task': holds a NUL"),
    "train_config_inf": (train_config("task: sentiment\nlr: .inf\n"), "field 'lr': Input should be a finite"),
    "train_config_bomb": (train_config("task: sentiment\na: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB), "100000"),
}


def size_case(env: str, size: int = 1000) -> Callable:
    def case(box):
        box.setenv("FTGEN_MAX_FILE_BYTES", env)
        path = write(box.inputs / "set.json", json.dumps([{"input": "x" * size, "output": "positive"}]))
        return ["eval", "--task", "sentiment", "--test-set", str(path), "--out", str(box.out)]

    return case


SIZE_CASES: dict[str, tuple[Callable, str]] = {
    "over_the_cap": (size_case("100"), "larger than the 100 bytes ftgen reads (set FTGEN_MAX_FILE_BYTES"),
    "cap_not_a_number": (size_case("lots"), "FTGEN_MAX_FILE_BYTES: expected a positive number"),
    "cap_negative": (size_case("-5"), "FTGEN_MAX_FILE_BYTES"),
    "cap_zero": (size_case("0"), "FTGEN_MAX_FILE_BYTES"),
}


def hf_dir(damage: Callable[[Path], object] | None = None, dict_split: bool = False) -> Callable:
    """A saved Hugging Face dataset (a DatasetDict with `dict_split`), then damaged."""

    def case(box):
        import datasets

        path = box.inputs / "hf"
        ds = datasets.Dataset.from_list(OK_RECORDS)
        (datasets.DatasetDict({"test": ds}) if dict_split else ds).save_to_disk(str(path))
        if damage:
            damage(path / "test" if dict_split else path)
        return ["eval", "--task", "sentiment", "--test-set", str(path), "--out", str(box.out)]

    return case


def _truncate_arrow(d: Path) -> None:
    arrow = next(d.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])


def _fifo_arrow(d: Path) -> None:
    arrow = next(d.glob("*.arrow"))
    arrow.unlink()
    os.mkfifo(arrow)


def _dev_zero_arrow(d: Path) -> None:
    arrow = next(d.glob("*.arrow"))
    arrow.unlink()
    os.symlink("/dev/zero", arrow)


def _spec(spec: str) -> Callable:
    return lambda b: ["eval", "--task", "sentiment", "--test-set", spec, "--out", str(b.out)]


HF_CASES: dict[str, tuple[Callable, str]] = {
    "hf_dir_info_garbage": (hf_dir(lambda d: write(d / "dataset_info.json", "{not json")), "not a readable saved"),
    "hf_dir_state_missing": (hf_dir(lambda d: (d / "state.json").unlink()), "not a readable saved"),
    "hf_dir_state_garbage": (hf_dir(lambda d: write(d / "state.json", "[]")), "not a readable saved"),
    "hf_dir_arrow_truncated": (hf_dir(_truncate_arrow), "not a readable saved"),
    "hf_dir_arrow_fifo": (hf_dir(_fifo_arrow), ".arrow: is a FIFO"),
    "hf_dir_arrow_dev_zero": (hf_dir(_dev_zero_arrow), "is a character device"),
    "hf_dir_entry_loop": (hf_dir(lambda d: loop(d / "extra")), "symbolic link loop"),
    "hf_dict_split_missing": (hf_dir(lambda d: __import__("shutil").rmtree(d), dict_split=True), "not a readable"),
    "hf_dict_garbage": (
        hf_dir(lambda d: write(d.parent / "dataset_dict.json", '{"splits": 3}'), dict_split=True),
        "not a readable saved",
    ),
    "hf_spec_offline": (_spec("hf:no-such-dataset"), "the Hub cannot be reached (offline)"),
    "hf_spec_owner_offline": (_spec("hf:owner/name:train[:10]"), "the Hub cannot be reached (offline)"),
    "hf_spec_path": (_spec("hf:../../etc"), "is not a Hugging Face dataset id"),
    "hf_spec_empty": (_spec("hf:"), "is not a Hugging Face dataset id"),
    "hf_spec_bad_split": (_spec("hf:imdb:test; rm -rf"), "is not a split"),
}

ALL_CASES = READER_CASES | LAYOUT_CASES | TASK_CASES | CONFIG_CASES | SIZE_CASES | HF_CASES


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_special_bad_input(case, sandbox, capsys):
    build, needle = ALL_CASES[case]
    argv = build(sandbox)
    capsys.readouterr()  # what building the inputs printed (datasets' progress bars) is not the command's
    sandbox.freeze()
    result = run_cli_inprocess(capsys, *argv)
    assert_user_error(result, needle)
    sandbox.assert_untouched()


# ---------------------------------------------------------------- models and the environment


def model_case(model: str | Callable, env: dict[str, str | Callable] | None = None, dtype: str = "auto") -> Callable:
    """A case: `ftgen eval --model MODEL` on a valid test set; `env` values may be built from the sandbox."""

    def case(box):
        for k, v in (env or {}).items():
            box.setenv(k, v(box) if callable(v) else v)
        name = model(box) if callable(model) else model
        test_set = write(box.inputs / "set.json", OK_JSON)
        argv = ["eval", "--model", name, "--task", "sentiment", "--test-set", str(test_set), "--out", str(box.out)]
        return argv + (["--dtype", dtype] if dtype != "auto" else [])

    return case


def model_dir(make: Callable[[Path], object]) -> Callable:
    def build(box):
        d = box.inputs / "model"
        d.mkdir()
        make(d)
        return str(d)

    return build


def _relative_models_dir(box) -> str:
    (box.cwd / "models").mkdir()
    return "models/nope"


MODEL_CASES: dict[str, tuple[Callable, str]] = {
    "dot_path": (model_case("./no/such/model"), "model './no/such/model': no such directory"),
    "absolute_path": (model_case("/nonexistent/ftgen/model"), "no such directory"),
    "home_path": (model_case("~/no-such-ftgen-model"), "no such directory"),
    "relative_models_dir": (model_case(_relative_models_dir), "model 'models/nope': no such directory"),
    "three_parts": (model_case("a/b/c"), "model 'a/b/c': no such directory"),
    "not_an_id": (model_case("my model!"), "no such directory"),
    "unknown_user_home": (model_case("~nosuchuser-ftgen/x"), "no such directory"),
    "hub_id_offline": (model_case("owner/no-such-model"), "the Hub cannot be reached"),
    "bare_hub_id_offline": (model_case("gpt2"), "the Hub cannot be reached"),
    "a_file": (model_case(lambda b: str(write(b.inputs / "model.bin", "x"))), "is a file, expected a directory"),
    "dir_with_fifo_config": (model_case(model_dir(lambda d: fifo(d / "config.json"))), "config.json: is a FIFO"),
    "dir_with_dev_zero": (
        model_case(model_dir(lambda d: link(d / "model.safetensors", "/dev/zero"))),
        "is a character device",
    ),
    "dir_with_loop": (model_case(model_dir(lambda d: loop(d / "config.json"))), "symbolic link loop"),
    "empty_dir": (model_case(model_dir(lambda d: None)), "cannot load model"),
    "garbage_config": (model_case(model_dir(lambda d: write(d / "config.json", "{oops"))), "cannot load model"),
    "adapter_garbage": (
        model_case(model_dir(lambda d: write(d / "adapter_config.json", "[1, 2"))),
        "adapter_config.json: invalid JSON",
    ),
    "adapter_no_base": (
        model_case(model_dir(lambda d: write(d / "adapter_config.json", '{"r": 8}'))),
        "names no base_model_name_or_path",
    ),
    "adapter_base_missing": (
        model_case(model_dir(lambda d: write(d / "adapter_config.json", '{"base_model_name_or_path": "./gone"}'))),
        "model './gone': no such directory",
    ),
    "cache_env_empty": (model_case("default", {"FTGEN_CACHE": ""}), "FTGEN_CACHE is set but empty"),
    "cache_env_blank": (model_case("default", {"FTGEN_CACHE": "  "}), "FTGEN_CACHE is set but empty"),
    "cache_env_a_file": (
        model_case("default", {"FTGEN_CACHE": lambda b: str(write(b.inputs / "cache_file", "x"))}),
        "is not a directory",
    ),
    "dtype_env_bogus": (model_case("default", {"FTGEN_DTYPE": "int3"}), "FTGEN_DTYPE: unknown dtype 'int3'"),
    "dtype_option_bogus": (model_case("default", dtype="float8"), "unknown dtype 'float8'"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_or_environment(case, model_sandbox, capsys):
    """Loading is really tried here (no tripwire): it must fail in one line within seconds, offline too,
    and build nothing in the model cache."""
    build, needle = MODEL_CASES[case]
    argv = build(model_sandbox)
    capsys.readouterr()
    model_sandbox.freeze()
    t0 = time.monotonic()
    result = run_cli_inprocess(capsys, *argv)
    seconds = time.monotonic() - t0
    assert_user_error(result, needle)
    model_sandbox.assert_untouched()
    assert seconds < 20, f"took {seconds:.0f}s: a failure must be fast (no network retries)"


def test_case_ids_are_unique_across_classes():
    """The classes are merged into one dict: a shared id would silently drop a case."""
    classes = [READER_CASES, LAYOUT_CASES, TASK_CASES, CONFIG_CASES, SIZE_CASES, HF_CASES, MODEL_CASES]
    assert sum(map(len, classes)) == len(ALL_CASES | MODEL_CASES)


@pytest.mark.timeout(120)
def test_in_a_real_process(tmp_path):
    """The same promise from a real `ftgen` process: a FIFO with a non-UTF-8 name (a hang before, and a name
    that stderr must escape) and a Hub id with no network (the probe decides, no HF_HUB_OFFLINE)."""
    from helpers import run_cli

    fifo_path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.json")
    os.mkfifo(fifo_path)
    out = tmp_path / "out"
    proc = run_cli("eval", "--task", "sentiment", "--test-set", os.fsdecode(fifo_path), "--out", str(out), timeout=60)
    assert_user_error(proc, "caf\\udce9.json: is a FIFO")
    (tmp_path / "set.json").write_text(OK_JSON)
    env = {"HF_HUB_OFFLINE": "", "FTGEN_CACHE": str(tmp_path / "cache")}
    t0 = time.monotonic()
    proc = run_cli(
        "eval", "--model", "someone/no-such-model-ftgen", "--task", "sentiment", "--test-set",
        str(tmp_path / "set.json"), "--out", str(out), env=env, timeout=100,
    )  # fmt: skip
    assert_user_error(proc, "someone/no-such-model-ftgen")
    assert time.monotonic() - t0 < 40  # process start and imports included; no minute of retries
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.fsdecode(b"caf\xe9.json"), "set.json"]
