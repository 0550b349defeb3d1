import csv
import json
import re

import pytest
import yaml

from ftgen.data import (
    check_data_dir,
    load_pool,
    load_records,
    load_test_set,
    load_train_set,
    normalise_record,
    scan_task_files,
)
from ftgen.errors import UserError
from ftgen.tasks import load_task, parse_task
from helpers import assert_user_error, run_cli, write_json

SENT = load_task("sentiment")


def test_paper_test_set_first_records(paper_data):
    ds = load_test_set(paper_data, SENT, "sst2", limit=250)
    raw = json.loads((paper_data / "sentiment" / "sst2_test_500.json").read_text())
    assert len(ds.records) == 250
    assert ds.records[0]["input"] == raw[0]["input"] and ds.records[0]["output"] == raw[0]["output"]
    assert set(ds.label_counts()) <= {"positive", "negative"}


def test_multinli_dash_label_is_dropped_and_counted(paper_data):
    task = load_task("inference")
    raw = json.loads((paper_data / "inference" / "multinli_test_500.json").read_text())
    dashes = sum(r["output"] == "-" for r in raw[:250])
    ds = load_test_set(paper_data, task, "multinli", limit=250)
    assert dashes > 0
    assert ds.report.ignored == dashes and len(ds.records) == 250 - dashes
    assert all(r["output"] in task.labels for r in ds.records)


def test_empty_text_in_paper_data_needs_skip_invalid(paper_data):
    task = load_task("question")
    with pytest.raises(UserError, match=r"tweetqa_test_500.json: record 61: field 'input': empty text"):
        load_test_set(paper_data, task, "tweetqa")
    ds = load_test_set(paper_data, task, "tweetqa", skip_invalid=True)
    assert ds.report.invalid == 20 and len(ds.records) == 480


@pytest.mark.parametrize(
    "record, message",
    [
        ({"output": "positive"}, "record 1: field 'input': missing"),
        ({"input": "  ", "output": "positive"}, "record 1: field 'input': empty text"),
        ({"input": "fine", "output": "meh"}, "record 1: field 'output': label 'meh' is not one of"),
        ({"input": ["a"], "output": "positive"}, "record 1: field 'input': expected text"),
        ("just a string", "record 1: expected an object"),
    ],
)
def test_bad_records_name_file_index_and_field(tmp_path, record, message):
    path = write_json(tmp_path / "set.json", [{"input": "good", "output": "negative"}, record])
    with pytest.raises(UserError) as e:
        load_records(path, SENT)
    assert str(path) in str(e.value) and message in str(e.value)
    records, report = load_records(path, SENT, skip_invalid=True)
    assert len(records) == 1 and report.invalid == 1 and report.problems


@pytest.mark.parametrize(
    "content, message",
    [('[{"input": "a", ', "invalid JSON"), ("", "empty file"), ('{"x": 1}', "expected a JSON list")],
)
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_records(path, SENT)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"input": "caf\xe9", "output": "positive"}]')
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_records(path, SENT)
    with pytest.raises(UserError, match="file not found"):
        load_records(tmp_path / "nope.json", SENT)


def test_empty_set_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no usable records"):
        load_records(write_json(tmp_path / "e.json", []), SENT)


def test_jsonl_csv_and_hf_dir_with_field_and_label_maps(tmp_path):
    task = parse_task(
        {
            **SENT.model_dump(),
            "name": "sst",
            "field_map": {"input": "sentence", "output": "label"},
            "label_map": {"0": "negative", "1": "positive"},
        },
        "sst.yaml",
    )
    rows = [{"sentence": "great film", "label": 1}, {"sentence": "dull", "label": 0}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_path = tmp_path / "d.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sentence", "label"])
        w.writeheader()
        w.writerows(rows)
    import datasets

    hf_dir = tmp_path / "hf"
    datasets.Dataset.from_list(rows).save_to_disk(str(hf_dir))
    for source in (jsonl, csv_path, hf_dir):
        records, _ = load_records(source, task)
        assert [r["output"] for r in records] == ["positive", "negative"], source
        assert records[0]["input"] == "great film" and records[1]["id"] == "1"


def test_train_sizes_come_from_the_paper_files(paper_data):
    small = load_train_set(paper_data, SENT, "amazon", 2000)
    assert small.source.endswith("amazon_train_2000.json") and len(small.records) == 2000
    first = load_train_set(paper_data, SENT, "amazon", 300)
    assert first.records == small.records[:300]
    a = load_train_set(paper_data, SENT, "amazon", 300, sample_seed=1)
    b = load_train_set(paper_data, SENT, "amazon", 300, sample_seed=1)
    assert a.records == b.records and a.records != first.records


def test_train_size_larger_than_the_set(paper_data):
    with pytest.raises(UserError, match="--allow-smaller"):
        load_train_set(paper_data, SENT, "amazon", 7000)
    assert len(load_train_set(paper_data, SENT, "amazon", 7000, allow_smaller=True).records) == 5999
    with pytest.raises(UserError, match="positive"):
        load_train_set(paper_data, SENT, "amazon", 0)


def test_unknown_sets_and_pools(paper_data):
    with pytest.raises(UserError, match="unknown test set 'imdb'.*sst2"):
        load_test_set(paper_data, SENT, "imdb")
    assert len(load_pool(paper_data, SENT, "sst2").records) == 8


def test_data_check_table(paper_data, tmp_path):
    rows = check_data_dir(paper_data, [load_task(n) for n in ("sentiment", "inference")])
    by = {(r["task"], r["set"], r["role"]): r for r in rows}
    assert by[("sentiment", "amazon", "train 6000")]["records"] == 5999
    assert by[("inference", "multinli", "test")]["ignored"] == 8
    assert by[("inference", "gptnli", "test")]["invalid"] == 6


def test_data_check_cli(tmp_path):
    """Invalid records are a problem a study handles (skip_invalid drops and counts them): listed, exit 0. A file
    with no usable record is one it cannot handle: exit 1. --strict: the first invalid record is an error."""
    folder = tmp_path / "data" / "sentiment"
    write_json(folder / "toy_test_10.json", [{"input": "good", "output": "positive"}, {"input": "x", "output": "?"}])
    write_json(folder / "few_shot" / "toy_few_shot.json", [{"input": "bad", "output": "negative"}])
    proc = run_cli("data", "check", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    assert "toy" in proc.stdout and "1 invalid" in proc.stdout and "label '?'" in proc.stderr
    assert "ok for a study: it drops and counts the 1 invalid records" in proc.stdout
    prepare = run_cli("prepare", "--data-dir", str(tmp_path / "data"))
    assert prepare.returncode == 0 and "ok for a study" in prepare.stdout, prepare.stderr
    assert_user_error(run_cli("data", "check", "--strict", str(tmp_path / "data")), "toy_test_10.json", "record 1")
    assert_user_error(run_cli("data", "check", str(tmp_path / "missing")), "data directory not found")
    write_json(folder / "bad_test_2.json", [{"input": "", "output": "positive"}, {"input": "y", "output": "maybe"}])
    proc = run_cli("data", "check", str(tmp_path / "data"))
    assert proc.returncode == 1 and "1 files have no usable record" in proc.stdout
    assert "bad_test_2.json: no usable record" in proc.stderr
    assert run_cli("prepare", "--data-dir", str(tmp_path / "data")).returncode == 1


def test_data_check_of_the_paper_data_lists_every_problem_and_exits_0(paper_data):
    """The published paper data has 27 invalid records (empty texts), all of which a study drops: exit 0, each
    listed, or counted as "and N more" per file (the loader keeps the first few messages of a file)."""
    proc = run_cli("data", "check", str(paper_data))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "27 invalid" in proc.stdout and "ok for a study" in proc.stdout
    listed = [line for line in proc.stderr.splitlines() if line.startswith("invalid: ") and "record " in line]
    more = [int(m) for m in re.findall(r": and (\d+) more$", proc.stderr, re.M)]
    assert len(listed) + sum(more) == 27 and more, proc.stderr
    env = run_cli("data", "check", env={"FTGEN_DATA_DIR": str(paper_data)})  # the directory from the environment
    assert env.returncode == 0 and env.stdout == proc.stdout


def test_user_task_data_in_paper_layout(tmp_path):
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "topic.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "topic",
                "kind": "classification",
                "fields": ["text"],
                "templates": ["{text}\nTopic:"],
                "labels": ["sports", "politics"],
                "metric": "accuracy",
            }
        )
    )
    write_json(
        tmp_path / "data" / "topic" / "news_test_2.json",
        [{"text": "goal!", "output": "sports"}, {"text": "vote", "output": "politics"}],
    )
    proc = run_cli("data", "check", str(tmp_path / "data"), "--task-dir", str(task_dir))
    assert proc.returncode == 0, proc.stderr
    assert "topic" in proc.stdout and "sports 50%" in proc.stdout


@pytest.mark.parametrize(
    "record, message",
    [
        ({"input": "bad \ud800", "output": "positive"}, "record 1: field 'input': holds a lone UTF-16 surrogate"),
        ({"input": "x", "output": "pos\udfffitive"}, "record 1: field 'output': holds a lone UTF-16 surrogate"),
        ({"idx": "\ud800", "input": "x", "output": "positive"}, "record 1: field 'idx': holds a lone"),
        ({"input": "a\x00b", "output": "positive"}, "record 1: field 'input': holds a NUL character"),
        ({"idx": [1], "input": "x", "output": "positive"}, "record 1: field 'idx': expected an integer or a text id"),
        ({"input": "x", "output": True}, "record 1: field 'output': expected text, got bool"),
    ],
)
def test_text_the_tokenizer_would_choke_on_is_refused_naming_file_record_field(tmp_path, record, message):
    """json.loads accepts "\\ud800"; refused here, before any model loads, not in the tokenizer after."""
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"input": "good", "output": "negative"}, record]), encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_records(path, SENT)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "skip_invalid / --skip-invalid" in str(e.value)  # the config field and the flag, both
    records, report = load_records(path, SENT, skip_invalid=True)
    assert len(records) == 1 and report.invalid == 1


def test_non_finite_numbers_from_a_dataset_are_not_text():
    with pytest.raises(UserError, match="field 'input': expected text, got nan"):
        normalise_record({"input": float("nan"), "output": "positive"}, SENT, 3, "hf:x")
    assert normalise_record({"input": 12, "output": "positive", "idx": 7}, SENT, 0, "f")["id"] == "7"


def test_csv_edge_cases_that_are_fine(tmp_path):
    path = tmp_path / "d.csv"
    long_text = "word " * 60_000  # 300 KB in one field: over the csv module's default limit
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark, as Excel writes
        w = csv.writer(f)
        w.writerow(["input", "output"])
        w.writerow([long_text, "positive"])
        w.writerow(['a "quoted", text', "negative"])
    records, _ = load_records(path, SENT)
    assert records[0]["input"] == long_text and records[1]["input"] == 'a "quoted", text'


def test_hidden_files_in_a_data_dir_are_not_data(tmp_path):
    folder = tmp_path / "sentiment"
    write_json(folder / "toy_test_2.json", [{"input": "good", "output": "positive"}])
    (folder / "._toy_test_2.json").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    (folder / ".._test_2.json").write_text("[]")
    files = scan_task_files(tmp_path, SENT)
    assert list(files.test) == ["toy"]


def test_set_names_from_specs_stay_inside_the_output_dir(tmp_path):
    from ftgen.data import _set_name

    assert _set_name("hf:owner/name:test") == "hf:owner--name:test"
    assert _set_name("some/dir/my_set.jsonl") == "my_set"
    for bad in ("dir/...json", "dir/" + "x" * 300 + ".json"):
        with pytest.raises(UserError, match="no usable set name"):
            _set_name(bad)


@pytest.mark.parametrize("spec", ["hf:", "hf:../../etc", "hf:a/b/c", "hf:a--b", "hf:x:test;ls", "hf:x:"])
def test_bad_hf_specs_are_refused_before_any_network(spec):
    with pytest.raises(UserError, match="is not a"):
        load_records(spec, SENT)


@pytest.mark.timeout(60)
def test_hf_spec_offline_fails_in_one_line_within_seconds(monkeypatch):
    import time

    from ftgen import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_unreachable.cache_clear()
    t0 = time.monotonic()
    with pytest.raises(UserError, match="hf:nope/nothing: no local copy .* the Hub cannot be reached"):
        load_records("hf:nope/nothing", SENT)
    assert time.monotonic() - t0 < 15
    hub.hub_unreachable.cache_clear()
