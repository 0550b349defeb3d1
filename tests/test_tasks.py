import json
import os

import pytest
import yaml

from ftgen.errors import UserError
from ftgen.tasks import all_tasks, load_task, parse_task
from helpers import assert_user_error, run_cli

PAPER_TASKS = ["summary", "question", "sentiment", "inference", "detection"]

USER_TASK = {
    "name": "topic",
    "kind": "classification",
    "fields": ["text"],
    "templates": ["Text: {text}\nTopic:"],
    "labels": ["sports", "politics"],
    "metric": "accuracy",
}


def test_builtin_tasks_use_the_papers_two_prompt_formats(paper_data):
    prompt_map = json.loads((paper_data / "prompt_map.json").read_text())
    for name in PAPER_TASKS:
        task = load_task(name)
        assert task.templates == [prompt_map[0][name], prompt_map[1][name]]
        assert task.in_domain and task.fticl_shots and 0 in task.eval_shots


def test_builtin_label_words_and_metrics():
    assert load_task("sentiment").labels == ["positive", "negative"]
    assert load_task("inference").labels == ["entailment", "neutral", "contradiction"]
    assert load_task("detection").labels == ["yes", "no"]
    assert load_task("summary").metric == "rouge_l" and load_task("summary").max_new_tokens == 60


def test_user_task_from_yaml_dir_is_listed(tmp_path):
    (tmp_path / "topic.yaml").write_text(yaml.safe_dump(USER_TASK))
    tasks = all_tasks([tmp_path])
    assert tasks["topic"][0].labels == ["sports", "politics"]
    assert tasks["sentiment"][1] == "built-in"
    proc = run_cli("tasks", "--task-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "topic" in proc.stdout and "sports / politics" in proc.stdout


def test_user_task_by_path(tmp_path):
    path = tmp_path / "my_topic.yaml"
    path.write_text(yaml.safe_dump(USER_TASK))
    assert load_task(str(path)).name == "topic"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kolor": 1}, "kolor"),
        ({"kind": "regression"}, "kind"),
        ({"templates": ["{body}"]}, "templates"),
        ({"labels": ["sports"]}, "labels"),
        ({"labels": ["a", "a"]}, "labels"),
        ({"metric": "rouge_l"}, "metric"),
        ({"fields": []}, "fields"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"name": "bad name!"}, "name"),
        ({"templates": ["{text"]}, "templates"),
        ({"truncate_field": "nope"}, "truncate_field"),
    ],
)
def test_bad_task_definitions_name_the_field(change, field):
    with pytest.raises(UserError) as e:
        parse_task({**USER_TASK, **change}, "topic.yaml")
    assert "topic.yaml" in str(e.value) and field in str(e.value)


def test_generation_task_must_not_have_labels():
    bad = {**USER_TASK, "kind": "generation", "metric": "rouge_l"}
    with pytest.raises(UserError, match="labels"):
        parse_task(bad, "x.yaml")


def test_duplicate_user_task_names_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(USER_TASK))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(USER_TASK))
    with pytest.raises(UserError, match="already defined"):
        all_tasks([tmp_path])


def test_malformed_task_yaml_via_cli(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert_user_error(run_cli("tasks", "--task-dir", str(tmp_path)), "broken.yaml", "invalid YAML")


def test_unknown_task_names_known_ones():
    with pytest.raises(UserError, match="unknown task 'sentimint'.*sentiment"):
        load_task("sentimint")


def test_what_a_template_may_hold():
    ok = {**USER_TASK, "fields": ["text", "title"], "templates": ["{{literal}} {title}: {text} / {text}\n"]}
    task = parse_task(ok, "t.yaml")
    from ftgen.prompts import fill_template

    assert fill_template(task, {"text": "a {b}", "title": "T", "output": "sports"}) == "{literal} T: a {b} / a {b}\n"


@pytest.mark.parametrize(
    "template, message",
    [
        ("{}", "'{}' names no field"),
        ("{0}", "is positional"),
        ("{text!s}", "has a conversion"),
        ("{text:}", None),  # an empty spec is no spec
        ("{text:<3}", "has a format spec"),
        ("{text.__class__}", "attribute or index access"),
        ("{text[-1]}", "attribute or index access"),
        ("{output}", "the gold answer"),
        ("{output.upper} {text}", "the gold answer"),
        ("{TEXT}", "not among the input fields"),
        ("{text", "not a valid format string"),
        ("no field at all", "does not use the input field(s)"),
    ],
)
def test_template_rules(template, message):
    data = {**USER_TASK, "templates": [template]}
    if message is None:
        assert parse_task(data, "t.yaml").templates == [template]
        return
    with pytest.raises(UserError) as e:
        parse_task(data, "t.yaml")
    assert "field 'templates': template 0" in str(e.value) and message in str(e.value)


def test_label_words_and_maps():
    task = parse_task({**USER_TASK, "labels": ["Yes", "No"], "label_map": {"1": "Yes", "0": "No"}}, "t.yaml")
    assert task.label_map == {"1": "Yes", "0": "No"}
    with pytest.raises(UserError, match="duplicate label words 'yes' and 'YES '"):
        parse_task({**USER_TASK, "labels": ["yes", "no", "YES "]}, "t.yaml")
    ignored = {**USER_TASK, "ignore_labels": ["-"], "label_map": {"x": "-"}}
    assert parse_task(ignored, "t.yaml").label_map == {"x": "-"}  # a raw label may map to an ignored one


def test_yaml_labels_yes_no_are_words(tmp_path):
    """Unquoted `[yes, no]` are label words, not YAML 1.1 booleans."""
    path = tmp_path / "para.yaml"
    path.write_text(yaml.safe_dump(USER_TASK).replace("- sports\n- politics", "- yes\n- no"))
    assert load_task(str(path)).labels == ["yes", "no"]


def test_an_edited_task_file_is_read_again(tmp_path):
    path = tmp_path / "topic.yaml"
    path.write_text(yaml.safe_dump(USER_TASK))
    assert load_task(str(path)).labels == ["sports", "politics"]
    path.write_text(yaml.safe_dump({**USER_TASK, "labels": ["a", "b", "c"]}))
    assert load_task(str(path)).labels == ["a", "b", "c"]


def test_the_same_task_dir_twice_is_one_dir(tmp_path, monkeypatch):
    (tmp_path / "topic.yaml").write_text(yaml.safe_dump(USER_TASK))
    monkeypatch.setenv("FTGEN_TASK_DIRS", str(tmp_path))
    assert all_tasks([tmp_path, tmp_path / "."])["topic"][1] == str(tmp_path / "topic.yaml")


def test_hidden_and_other_files_in_a_task_dir_are_not_tasks(tmp_path):
    (tmp_path / "topic.yaml").write_text(yaml.safe_dump(USER_TASK))
    os.symlink("nowhere", tmp_path / ".#topic.yaml")  # an editor's lock file: a dangling link
    (tmp_path / "topic.yaml~").write_text("backup")
    (tmp_path / "notes.txt").write_text("x")
    assert "topic" in all_tasks([tmp_path])


def test_yaml_int_raw_labels_map_like_text_labels(tmp_path):
    path = tmp_path / "sst.yaml"
    path.write_text(yaml.safe_dump(USER_TASK) + "label_map: {0: sports, 1: politics}\n")
    task = load_task(str(path))
    assert task.label_map == {"0": "sports", "1": "politics"}
    from ftgen.data import normalise_record

    assert normalise_record({"text": "goal", "output": 0}, task, 0, "f")["output"] == "sports"


# ---------------------------------------------------------------- in-domain test sets (the paper's Table 1)

TABLE_1_IN_DOMAIN = {
    "summary": ["xsum", "xlsum"],
    "question": ["socialqa"],
    "sentiment": ["amazon", "amazonfood"],
    "detection": ["paws"],
    "inference": ["multinli", "multinli2"],
}


def test_builtin_tasks_list_their_in_domain_sets_as_table_1():
    for name, sets in TABLE_1_IN_DOMAIN.items():
        task = load_task(name)
        assert task.in_domain == sets and task.default_train_set == sets[0]


def test_in_domain_takes_a_list_or_one_name_and_refuses_duplicates_and_paths():
    assert parse_task({**USER_TASK, "in_domain": "news"}, "t.yaml").in_domain == ["news"]  # the older form
    assert parse_task({**USER_TASK, "in_domain": ["news", "wire"]}, "t.yaml").default_train_set == "news"
    assert parse_task(USER_TASK, "t.yaml").in_domain == [] and parse_task(USER_TASK, "t.yaml").default_train_set is None
    for bad, message in ((["news", "news"], "duplicate test sets"), (["ok", "../x"], "must be a plain name")):
        with pytest.raises(UserError, match=f"field 'in_domain': {message}"):
            parse_task({**USER_TASK, "in_domain": bad}, "t.yaml")


def test_a_study_trains_on_the_first_in_domain_set_and_lists_in_domain_sets_first(paper_data):
    from ftgen.config import parse_study
    from ftgen.validate import validate_study

    cfg = parse_study({"name": "s", "train": [{"task": "inference", "sizes": [2000]}]})
    resolved = validate_study(cfg, paper_data)
    assert resolved.train_sets == ["multinli"]
    assert resolved.test_sets["inference"] == ["multinli", "multinli2", "gptnli", "rte", "snli"]
    assert resolved.test_sets["summary"][:2] == ["xsum", "xlsum"]
