"""Property tests (hypothesis) of the validators: whatever the input, a record or config is either accepted
in a well-formed shape or refused with one UserError line; never another exception."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.config import parse_study
from ftgen.data import load_records, normalise_record
from ftgen.errors import UserError
from ftgen.tasks import load_task

SENTIMENT = load_task("sentiment")
INFERENCE = load_task("inference")  # two input fields, an ignored label ('-')

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_values = st.one_of(json_values, st.sampled_from(["positive", "negative", "-", " ", "", "entailment"]))


def records_for(task):
    keys = st.sampled_from([*task.fields, "output", "idx", "label", "text"])
    return st.one_of(json_values, st.dictionaries(keys, field_values, max_size=5))


@given(raw=records_for(SENTIMENT) | records_for(INFERENCE), index=st.integers(0, 10**6))
def test_a_record_is_accepted_in_shape_or_refused_in_one_line(raw, index):
    for task in (SENTIMENT, INFERENCE):
        try:
            rec = normalise_record(raw, task, index, "f.json")
        except UserError as e:
            msg = str(e)
            assert msg.startswith(f"f.json: record {index}") and "\n" not in msg
            continue
        if rec is None:  # an ignored gold label
            assert task.ignore_labels
            continue
        assert set(rec) == {"id", *task.fields, "output"}
        assert all(isinstance(rec[f], str) and rec[f].strip() for f in [*task.fields, "output"])
        if task.kind == "classification":
            assert rec["output"] in task.labels


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(records_for(SENTIMENT), max_size=12), limit=st.none() | st.integers(1, 15))
def test_skip_invalid_counts_every_raw_record(rows, limit, tmp_path_factory):
    path = tmp_path_factory.mktemp("recs") / "set.json"
    path.write_text(json.dumps(rows))
    try:
        kept, report = load_records(path, SENTIMENT, limit=limit, skip_invalid=True, allow_empty=True)
    except UserError as e:  # only a file that is not a list of records at all
        assert "\n" not in str(e)
        return
    considered = rows[:limit] if limit is not None else rows
    assert report.raw == len(considered)
    assert report.kept + report.invalid + report.ignored == report.raw == len(considered)
    assert len(kept) == report.kept
    strict_ok = True
    try:
        load_records(path, SENTIMENT, limit=limit, allow_empty=True)
    except UserError:
        strict_ok = False
    assert strict_ok == (report.invalid == 0)  # without --skip-invalid, any invalid record is refused


study_fields = st.sampled_from(
    ["name", "models", "train", "methods", "hyper", "train_args", "eval", "executor", "workers", "threads", "bogus"]
)


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(study_fields, json_values, max_size=6) | json_values)
def test_a_study_config_is_parsed_or_refused_in_one_line(data):
    try:
        cfg = parse_study(data, "s.yaml")
    except UserError as e:
        msg = str(e)
        assert msg.startswith("s.yaml: ") and "\n" not in msg
        if isinstance(data, dict) and "bogus" in data:
            assert "field 'bogus': unknown field" in msg
        return
    assert isinstance(data, dict) and "bogus" not in data
    assert cfg.name == data["name"]
