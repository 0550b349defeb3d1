import json

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
