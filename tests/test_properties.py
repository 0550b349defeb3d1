"""Property tests (hypothesis) of the readers and validators: whatever the input (nested, huge, not a regular
file, odd Unicode, out of range), a file, record, task or config is either accepted in a well-formed shape or
refused with one UserError line naming it; never another exception, never a hang."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftgen.config import parse_study
from ftgen.data import load_records, normalise_record
from ftgen.errors import UserError, one_line
from ftgen.files import YAML_MAX_DEPTH, YAML_MAX_VALUES, read_yaml, text_problem
from ftgen.tasks import load_task
from helpers import make_special

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


# ---------------------------------------------------------------- readers: hostile files

odd_text = st.text(
    alphabet=st.characters(codec=None, categories=["L", "N", "P", "Z", "Cc", "Cs", "So"]), max_size=12
)  # lone surrogates (Cs) and control characters (Cc) included
json_leaves = st.one_of(
    st.sampled_from(['"positive"', '"negative"', "NaN", "-Infinity", "1e999", "true", "null", '""', '"  "']),
    st.sampled_from(['"\\ud800"', '"ok \\udfff"', '"\\u0000"', '"\\ud83d\\ude00 fine"', '"a\\u2028b"']),
    st.integers(1, 6000).map(lambda n: "7" * n),  # past Python's 4300-digit limit from 4301 on
    odd_text.map(lambda t: json.dumps(t, ensure_ascii=True)),  # keeps lone surrogates as \\udXXX escapes
)
depths = st.one_of(st.integers(0, 3), st.integers(0, 30000))


@st.composite
def json_fragments(draw):
    leaf, depth, as_object = draw(json_leaves), draw(depths), draw(st.booleans())
    return ('{"k": ' * depth + leaf + "}" * depth) if as_object else ("[" * depth + leaf + "]" * depth)


@st.composite
def hostile_record_files(draw):
    keys = st.sampled_from(["input", "output", "idx", "input", "output"])  # duplicates likely
    records = draw(st.lists(st.lists(st.tuples(keys, json_fragments()), max_size=4), max_size=4))
    body = ", ".join("{" + ", ".join(f'"{k}": {v}' for k, v in rec) + "}" for rec in records)
    return draw(st.sampled_from(["[{}]", '{{"data": [{}]}}', "[{}", "{}"])).format(body)


def assert_one_line_about(e: UserError, path) -> None:
    assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)[:300]


@settings(max_examples=120, deadline=None)
@given(text=hostile_record_files(), skip=st.booleans(), bom=st.booleans())
def test_hostile_json_is_read_in_shape_or_refused_in_one_line(text, skip, bom, tmp_path_factory):
    """Deep nesting, huge numbers, NaN, duplicate keys, surrogates, NULs: records come back as clean text
    (UTF-8 encodable, no NUL), or the file is refused in one line naming it. Nothing else escapes."""
    path = tmp_path_factory.mktemp("hostile") / "set.json"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    try:
        records, report = load_records(path, SENTIMENT, skip_invalid=skip, allow_empty=True)
    except UserError as e:
        assert_one_line_about(e, path)
        return
    for rec in records:
        for value in rec.values():
            assert isinstance(value, str) and "\x00" not in value
            value.encode("utf-8")  # what the tokenizer needs
    assert report.kept == len(records)


@settings(max_examples=120, deadline=None)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".yaml"]))
def test_any_bytes_are_read_or_refused_in_one_line(data, suffix, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / f"f{suffix}"
    path.write_bytes(data)
    try:
        read_yaml(path) if suffix == ".yaml" else load_records(path, SENTIMENT, skip_invalid=True, allow_empty=True)
    except UserError as e:
        assert_one_line_about(e, path)


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["fifo", "dev_zero", "socket", "loop", "dangling", "directory"]),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".yaml", ".yml"]),
    links=st.integers(0, 3),
)
def test_no_reader_opens_what_is_not_a_regular_file(kind, suffix, links, tmp_path_factory):
    """Behind any chain of symlinks, a FIFO, device, socket, loop or dangling link is refused in one line
    (and a FIFO never blocks: the test has a timeout)."""
    d = tmp_path_factory.mktemp("special")
    target = make_special(kind, d / f"target{suffix}")
    path = target
    for i in range(links):
        path = d / f"link{i}{suffix}"
        os.symlink(target.name if i == 0 else f"link{i - 1}{suffix}", path)
    readers = [read_yaml, lambda p: load_task(str(p))] if suffix in (".yaml", ".yml") else [load_records_of]
    for reader in readers:
        with pytest.raises(UserError) as e:
            reader(path)
        assert_one_line_about(e.value, path)


def load_records_of(path):
    return load_records(path, SENTIMENT)


# ---------------------------------------------------------------- readers: hostile YAML

yaml_scalars = st.one_of(
    st.sampled_from(["1", "-2.5", ".inf", "-.Inf", ".nan", "yes", "No", "on", "2024-01-01", "=", "~", "''"]),
    st.sampled_from(['"x\\0y"', '"\\ud800"', "!!binary aGk=", "!x y", "!!python/none ''", "!!set {a}"]),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.text(max_size=8).map(json.dumps),
)
yaml_keys = st.sampled_from(["a", "b", "c", "a", "1", "'k'", '"\\0"'])


def yaml_nodes(anchors: list[str]):
    def extend(inner):
        seq = st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
        mapping = st.lists(st.tuples(yaml_keys, inner), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"
        )
        anchored = st.tuples(st.sampled_from(anchors), inner).map(lambda t: f"&{t[0]} {t[1]}")
        return seq | mapping | anchored

    aliases = st.sampled_from(anchors).map(lambda a: f"*{a}")
    return st.recursive(yaml_scalars | aliases, extend, max_leaves=12)


def expanded_size(value) -> int:
    if isinstance(value, dict):
        return 1 + sum(expanded_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(expanded_size(v) for v in value)
    return 1


@settings(max_examples=150, deadline=None)
@given(doc=yaml_nodes(["a", "b", "c"]), depth=st.one_of(st.integers(0, 3), st.integers(90, 1500)))
def test_hostile_yaml_is_plain_data_or_refused_in_one_line(doc, depth, tmp_path_factory):
    """Whatever the document (tags, aliases, bombs, duplicate keys, NaN, NUL, deep nesting), read_yaml
    returns plain finite data of bounded depth and size, or refuses in one line naming the file."""
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text("x: " + "[" * depth + doc + "]" * depth + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        data = read_yaml(path)
    except UserError as e:
        assert_one_line_about(e, path)
        return
    stack = [(data, 0)]
    while stack:
        value, level = stack.pop()
        assert level <= YAML_MAX_DEPTH
        assert value is None or isinstance(value, (dict, list, str, int, float, bool)), type(value)
        if isinstance(value, float):
            assert math.isfinite(value)
        if isinstance(value, str):
            assert text_problem(value) is None
        if isinstance(value, dict):
            stack += [(k, level + 1) for k in value] + [(v, level + 1) for v in value.values()]
        if isinstance(value, list):
            stack += [(v, level + 1) for v in value]
    assert expanded_size(data) <= YAML_MAX_VALUES


@settings(max_examples=60, deadline=None)
@given(levels=st.integers(1, 8), fanout=st.integers(1, 12))
def test_an_alias_tower_is_refused_exactly_when_it_expands_past_the_limit(levels, fanout, tmp_path_factory):
    lines = ["l0: &l0 x"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    path = tmp_path_factory.mktemp("tower") / "t.yaml"
    path.write_text("\n".join(lines) + "\n")
    total = 1 + sum(sum(fanout**j for j in range(i + 1)) for i in range(levels + 1))  # the whole mapping
    if total > YAML_MAX_VALUES:
        with pytest.raises(UserError, match="expands to more than"):
            read_yaml(path)
    else:
        assert expanded_size(read_yaml(path)) == total


# ---------------------------------------------------------------- validators: task definitions

TOPIC = {"name": "topic", "kind": "classification", "fields": ["text", "title"], "labels": ["a", "b"]}
TOPIC |= {"metric": "accuracy", "templates": ["{title}: {text}"]}
template_pieces = st.sampled_from(
    ["{text}", "{title}", "lit ", "{{", "}}", "{}", "{0}", "{text!r}", "{text:>3}", "{text.x}", "{title[0]}"]
    + ["{output}", "{id}", "{", "}", "\n", "{text:{title}}", "{ text}", "{text!}", "{:d}", "{text}{title}"]
)


def plain_fields(template: str) -> set[str] | None:
    """Oracle, independent of string.Formatter: the fields of a plain template, None if it is not plain."""
    i, used = 0, set()
    while i < len(template):
        if template.startswith(("{{", "}}"), i):
            i += 2
        elif m := re.match(r"\{(text|title)\}", template[i:]):
            used.add(m[1])
            i += m.end()
        elif template[i] in "{}":
            return None
        else:
            i += 1
    return used


@settings(max_examples=300, deadline=None)
@given(template=st.lists(template_pieces, max_size=8).map("".join), values=st.tuples(odd_text, odd_text))
def test_a_template_is_accepted_exactly_when_it_shows_every_field_plainly(template, values):
    from ftgen.prompts import fill_template
    from ftgen.tasks import parse_task

    accepted = plain_fields(template) == {"text", "title"}
    try:
        task = parse_task({**TOPIC, "templates": [template]}, "t.yaml")
    except UserError as e:
        assert not accepted, str(e)
        assert str(e).startswith("t.yaml: field 'templates'") and "\n" not in str(e)
        return
    assert accepted
    text, title = (v.replace("\x00", "") for v in values)
    filled = fill_template(task, {"text": text, "title": title, "output": "GOLD"})
    # Read the template left to right, as str.format does: "{{text}}" is the literal "{text}".
    pieces = re.findall(r"\{\{|\}\}|\{text\}|\{title\}|[^{}]+", template)
    n_text, n_title = pieces.count("{text}"), pieces.count("{title}")
    literal = "".join({"{{": "{", "}}": "}"}.get(p, p) for p in pieces if p not in ("{text}", "{title}"))
    assert len(filled) == len(literal) + n_text * len(text) + n_title * len(title)  # no padding, no specs
    if "GOLD" not in template + text + title:
        assert "GOLD" not in filled  # the gold answer never enters a prompt


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.sampled_from(["yes", "Yes", " yes", "no", "NO ", "", "  ", "maybe", "y\u00e9s"]) | odd_text))
def test_label_words_are_accepted_exactly_when_distinct_and_non_empty(labels):
    from ftgen.tasks import parse_task

    keys = [w.strip().casefold() for w in labels]
    clean = all(text_problem(w) is None for w in labels)
    expect = clean and len(labels) >= 2 and all(keys) and len(set(keys)) == len(keys)
    try:
        task = parse_task({**TOPIC, "labels": labels}, "t.yaml")
    except UserError as e:
        assert not expect and "\n" not in str(e)
        return
    assert expect and task.labels == labels


numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.integers(-5, 5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(max_new_tokens=numbers, shots=st.lists(numbers, max_size=4))
def test_counts_are_accepted_exactly_when_in_range(max_new_tokens, shots):
    from ftgen.tasks import MAX_NEW_TOKENS, MAX_SHOTS, parse_task

    def count(v, lo, hi):
        return type(v) is int and lo <= v <= hi

    expect = count(max_new_tokens, 1, MAX_NEW_TOKENS) and bool(shots) and len(set(map(repr, shots))) == len(shots)
    expect = expect and all(count(s, 0, MAX_SHOTS) for s in shots)
    gen = {**TOPIC, "kind": "generation", "metric": "rouge_l", "labels": []}
    try:
        task = parse_task({**gen, "max_new_tokens": max_new_tokens, "eval_shots": shots}, "t.yaml")
    except UserError as e:
        assert not expect and "\n" not in str(e)
        return
    assert expect and task.max_new_tokens == max_new_tokens and task.eval_shots == shots


@settings(max_examples=300, deadline=None)
@given(name=odd_text | st.sampled_from([".", "..", "../x", "/etc", "a/b", "a\\b", " x", "x\n", "ok-name_1.v2"]))
def test_folder_and_set_names_cannot_leave_the_data_directory(name):
    from ftgen.tasks import parse_task

    try:
        task = parse_task({**TOPIC, "data_folder": name, "in_domain": name}, "t.yaml")
    except UserError as e:
        assert ("field 'data_folder'" in str(e) or "field 'in_domain'" in str(e)) and "\n" not in str(e)
        return
    inside = os.path.normpath(os.path.join("/data", task.folder))
    assert os.path.dirname(inside) == "/data" and os.path.basename(inside) == name


@settings(max_examples=300, deadline=None)
@given(name=odd_text | st.from_regex(r"[.~/]?[a-z./\\-]{0,12}", fullmatch=True))
def test_a_path_like_model_name_that_does_not_exist_is_refused_at_once(name, tmp_path_factory):
    from ftgen.hub import check_model_name, is_hub_id, looks_like_path

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # nothing exists here
    try:
        check_model_name(name)
    except UserError as e:
        assert looks_like_path(name) and "no such directory" in str(e) and "\n" not in one_line(str(e))
    else:
        exists = os.path.lexists(os.path.expanduser(name)) if "\x00" not in name else False  # '~', '.', '/'
        assert name in ("default", "SmolLM2-135M-Instruct") or exists or (is_hub_id(name) and not looks_like_path(name))
    finally:
        os.chdir(cwd)
