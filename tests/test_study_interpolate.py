"""`interpolate` in a study: the config and its checks, the plan's keyed interpolated models, the driver's order and
model retention (fast, with stand-in units), and a real tiny study where the α = 0 / α = 1 cells score exactly as
the base / fine-tuned cells (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftgen.config import parse_study
from ftgen.driver import Driver
from ftgen.errors import UserError
from ftgen.executors import LocalExecutor
from ftgen.plan import InterpolationSpec, build_plan, check_changes
from ftgen.store import Store, manifest
from ftgen.units import InterpolateJob
from ftgen.validate import validate_study

STUDY = {
    "name": "interp",
    "train": [{"task": "sentiment", "sizes": [8]}],
    "methods": [{"name": "ft"}, {"name": "fticl", "shots": 2}, {"name": "interpolate", "of": "ft", "alphas": [0.5]}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "eval": {"test_sets": {"sentiment": ["amazon"], "detection": ["paws"]}, "shots": [0], "limit": 8},
}


def plan_for(data: dict, paper_data: Path):
    return build_plan(validate_study(parse_study(data, "s.yaml"), paper_data, "s.yaml"))


def with_methods(*methods: dict, **changes) -> dict:
    return STUDY | {"methods": list(methods)} | changes


# ---------------------------------------------------------------- config and validation


@pytest.mark.parametrize(
    ("method", "needle"),
    [
        ({"name": "interpolate", "of": "ft", "alphas": [1.5]}, "field 'methods.1.alphas.0'"),
        ({"name": "interpolate", "of": "ft", "alphas": [-0.1]}, "field 'methods.1.alphas.0'"),
        ({"name": "interpolate", "of": "ft", "alphas": [".nan"]}, "field 'methods.1.alphas.0'"),
        ({"name": "interpolate", "of": "ft", "alphas": []}, "field 'methods.1.alphas'"),
        ({"name": "interpolate", "of": "ft", "alphas": [0.5, 0.5]}, "duplicate alphas"),
        ({"name": "interpolate", "alphas": [0.5]}, "interpolate needs 'of'"),
        ({"name": "interpolate", "of": "ft"}, "interpolate needs 'of'"),
        ({"name": "interpolate", "of": "ft", "alphas": [0.5], "lora_r": 8}, "interpolate trains nothing"),
        ({"name": "ft", "alphas": [0.5]}, "'alphas' is a field of the method 'interpolate' only"),
        ({"name": "interpolate", "of": "fticl", "alphas": [0.5]}, "field 'methods.1.of': 'fticl' is not a method"),
        ({"name": "interpolate", "of": "interpolate-ft", "alphas": [0.5]}, "field 'methods.1.of'"),
    ],
)
def test_a_bad_interpolate_method_is_one_line_naming_its_field(paper_data, method, needle):
    with pytest.raises(UserError) as e:
        plan_for(with_methods({"name": "ft"}, method), paper_data)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_one_method_interpolated_twice_is_refused(paper_data):
    twice = [{"name": "interpolate", "of": "ft", "alphas": [a], "label": f"i{i}"} for i, a in enumerate((0.2, 0.4))]
    with pytest.raises(UserError, match=r"field 'methods.2.of': 'ft' is interpolated twice"):
        plan_for(with_methods({"name": "ft"}, *twice), paper_data)


# ---------------------------------------------------------------- the plan


def test_each_trained_run_of_the_method_gets_one_keyed_model_per_alpha(paper_data):
    data = with_methods(
        {"name": "ft"},
        {"name": "fticl", "shots": 2, "lora_r": 4},
        {"name": "interpolate", "of": "fticl+lora", "alphas": [0.25, 0.75]},
        hyper={"lr": [1e-4, 2e-4], "epochs": [1], "seeds": [0]},
    )
    plan = plan_for(data, paper_data)
    trained = [r for r in plan.runs if not isinstance(r, InterpolationSpec)]
    interps = [r for r in plan.runs if isinstance(r, InterpolationSpec)]
    assert len(trained) == 4 and len(interps) == 2 * 2
    assert plan.runs == trained + interps  # built after the runs they read
    for i in interps:
        assert i.of.method == "fticl+lora" and i.method == f"fticl+lora@{i.alpha:g}"
        assert (i.train_task, i.size, i.lr, i.epochs, i.seed) == (i.of.train_task, i.of.size, i.of.lr, 1, 0)
        assert i.identity == {"unit": "interpolate", "rules": i.identity["rules"], "of": i.of.key, "alpha": i.alpha}
        assert i in plan.interpolations_of(i.of.key)
        # its cells: the same test sets, shots and formats as its trained run's, keyed by its own key
        mine, theirs = plan.cells_of(i.key), plan.cells_of(i.of.key)
        assert [c.params for c in mine] == [c.params for c in theirs]
        assert all(c.identity["model"] == i.key for c in mine)
    rows = [r.row() for r in plan.runs]
    assert len({r["slot"] for r in rows}) == len({r.dir_name for r in plan.runs}) == len({r.key for r in plan.runs})
    assert len(plan.runs) == 8
    # a key changes with α and with the trained run, and with nothing else
    again = plan_for(data | {"eval": STUDY["eval"] | {"limit": 4}}, paper_data)
    assert [r.key for r in again.runs] == [r.key for r in plan.runs]
    assert len({(i.of.key, i.alpha) for i in interps}) == len({i.key for i in interps}) == 4


# ---------------------------------------------------------------- the driver, with stand-in units


class FakeUnits:
    """Stand-ins for ftgen.units.Units: record calls, write a model file, fail on demand."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple[str, object]] = []
        self.fail = set(fail)

    def train(self, job) -> dict:
        self.calls.append(("interpolate" if isinstance(job, InterpolateJob) else "train", job))
        if job.key in self.fail:
            raise RuntimeError("no room")
        if isinstance(job, InterpolateJob):  # the model it reads is there
            assert (Path(job.tuned_dir) / "model" / "weights.bin").is_file()
        model = Path(job.out_dir) / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "weights.bin").write_bytes(job.key.encode())
        return {"summary": {}, "manifest": manifest(model), "seconds": 0.1}

    def eval(self, job) -> dict:
        self.calls.append(("eval", job))
        if job.key in self.fail:
            raise RuntimeError("boom")
        assert (Path(job.model_path) / "weights.bin").is_file() or job.model_path == "default"
        metrics = {"metric": "accuracy", "score": 50.0, "n": 8}
        return {"metrics": metrics, "predictions": [{"id": str(i)} for i in range(8)], "seconds": 0.1}


def session(plan, out: Path, units: FakeUnits) -> dict:
    with Store.open_writer(out) as store:
        check_changes(store, plan)
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        return Driver(plan, store, LocalExecutor(units)).run()


def test_interpolations_follow_their_run_and_keep_its_model_until_built(paper_data, tmp_path):
    plan = plan_for(STUDY | {"keep_models": False}, paper_data)
    ft, fticl, interp = plan.runs
    units = FakeUnits()
    counts = session(plan, tmp_path, units)
    assert counts == {"runs done": 3, "cells done": 2 * 4}
    order = [(kind, job.key) for kind, job in units.calls]
    assert order.index(("interpolate", interp.key)) > order.index(("train", ft.key))
    job = next(j for k, j in units.calls if k == "interpolate")
    assert (job.tuned_dir, job.base, job.alpha) == (str(tmp_path / "runs" / ft.dir_name), "default", 0.5)
    evals = [j for k, j in units.calls if k == "eval" and j.key in {c.key for c in plan.cells_of(interp.key)}]
    assert {j.model_path for j in evals} == {str((tmp_path / "runs" / interp.dir_name / "model").absolute())}
    # keep_models: false: every model is gone once nothing reads it, the runs stay done
    with Store.open_reader(tmp_path) as s:
        assert all(r["model_deleted"] for r in s.rows("runs"))
    assert not any((tmp_path / "runs" / r.dir_name / "model").exists() for r in plan.runs)
    # a new α: its trained run (deleted) is trained again first, then it is built and its cells run
    data = STUDY | {"keep_models": False}
    data["methods"] = [*STUDY["methods"][:2], {"name": "interpolate", "of": "ft", "alphas": [0.5, 1.0]}]
    plan2 = plan_for(data, paper_data)
    new = plan2.runs[-1]
    units = FakeUnits()
    assert session(plan2, tmp_path, units) == {"runs done": 2, "cells done": 2}
    assert [(k, j.key) for k, j in units.calls][:2] == [("train", ft.key), ("interpolate", new.key)]


def test_a_failed_run_fails_its_interpolations_and_their_cells(paper_data, tmp_path):
    plan = plan_for(STUDY, paper_data)
    ft, _, interp = plan.runs
    counts = session(plan, tmp_path, FakeUnits(fail={ft.key}))
    assert counts == {"runs done": 1, "runs failed": 2, "cells done": 2 + 2, "cells failed": 2 + 2}
    with Store.open_reader(tmp_path) as s:
        assert s.get("runs", interp.key)["error"] == "its trained run failed: RuntimeError: no room"
    # the next session trains it, then builds the interpolation: nothing else
    units = FakeUnits()
    assert session(plan, tmp_path, units) == {"runs done": 2, "cells done": 4}
    assert [k for k, _ in units.calls] == ["train", "eval", "eval", "interpolate", "eval", "eval"]


def test_a_lost_interpolated_model_is_built_again_from_its_kept_run(paper_data, tmp_path):
    plan = plan_for(STUDY, paper_data)
    ft, _, interp = plan.runs
    first = plan.cells_of(interp.key)[0]
    session(plan, tmp_path, FakeUnits(fail={first.key}))
    (tmp_path / "runs" / interp.dir_name / "model" / "weights.bin").write_bytes(b"changed")
    units = FakeUnits()
    assert session(plan, tmp_path, units) == {"runs done": 1, "cells done": 1}
    assert [(k, j.key) for k, j in units.calls] == [("interpolate", interp.key), ("eval", first.key)]


def test_a_lost_interpolated_model_whose_run_was_deleted_trains_the_run_first(paper_data, tmp_path):
    plan = plan_for(STUDY | {"keep_models": False}, paper_data)
    ft, _, interp = plan.runs
    first = plan.cells_of(interp.key)[0]
    session(plan, tmp_path, FakeUnits(fail={first.key}))
    assert not (tmp_path / "runs" / ft.dir_name / "model").exists()  # nothing reads it any more
    (tmp_path / "runs" / interp.dir_name / "model" / "weights.bin").write_bytes(b"changed")
    units = FakeUnits()
    assert session(plan, tmp_path, units) == {"runs done": 2, "cells done": 1}
    assert [(k, j.key) for k, j in units.calls] == [("train", ft.key), ("interpolate", interp.key), ("eval", first.key)]
    assert not any((tmp_path / "runs" / r.dir_name / "model").exists() for r in plan.runs)


def test_the_attention_analysis_reads_the_in_domain_set_with_the_first_k(paper_data, tmp_path):
    from ftgen.units import AttentionSpec, attention_spec

    data = STUDY | {"eval": STUDY["eval"] | {"shots": {"sentiment": [0, 2, 4], "detection": [0]}}}
    data |= {"analysis": {"attention": True, "attention_records": 3}}
    plan = plan_for(data, paper_data)
    assert attention_spec(plan.resolved, "default", "sentiment", "amazon", 3) == AttentionSpec(
        "default", "sentiment", "amazon", 2, 3, 0
    )
    assert attention_spec(plan.resolved, "default", "detection", "paws", 3) is None  # evaluated 0-shot only
    # the driver hands it to every training run (not to the interpolations: they train nothing)
    units = FakeUnits()
    session(plan, tmp_path, units)
    jobs = [j for k, j in units.calls if k == "train"]
    assert len(jobs) == 2 and all(j.attention.test_set == "amazon" and j.attention.shots == 2 for j in jobs)


# ---------------------------------------------------------------- a real tiny study (slow)

REAL = {
    "name": "interp-real",
    "train": [{"task": "sentiment", "sizes": [8]}],
    "methods": [{"name": "ft"}, {"name": "interpolate", "of": "ft", "alphas": [0, 0.5, 1]}],
    "hyper": {"lr": [1e-4], "epochs": [1], "seeds": [0]},
    "train_args": {"batch_size": 4, "micro_batch_size": 4, "max_length": 256, "dtype": "fp32"},
    "eval": {"test_sets": {"sentiment": ["amazon"]}, "shots": [0, 2], "limit": 4, "batch_size": 8, "dtype": "fp32"},
    "analysis": {"probe_records": 2, "attention": True, "attention_records": 2},
    "keep_models": False,
    "threads": 1,
}


@pytest.mark.slow
def test_alpha_0_and_1_score_as_the_base_and_the_tuned_model(paper_data, tmp_path):
    """A real study: WiSE-FT models whose ends are the base and the tuned model bit for bit; the run's layer
    profile and attention shares read back from its directory."""
    from ftgen.analysis import analyze_attention
    from ftgen.analysis.study_analyses import study_attention, study_layers
    from ftgen.tasks import load_task
    from ftgen.units import Units

    plan = plan_for(REAL, paper_data)
    with Store.open_writer(tmp_path) as store:
        store.add([r.row() for r in plan.runs], [c.row() for c in plan.cells])
        counts = Driver(plan, store, LocalExecutor(Units())).run()
        assert counts == {"runs done": 4, "cells done": 5 * 2}
        cells = {(r["method"], r["shots"]): r for r in store.rows("cells")}
        scores = {k: r["score"] for k, r in cells.items()}
        probs = {k: [p.get("scores") for p in store.predictions(r["key"])] for k, r in cells.items()}
        summary = {r["method"]: json.loads(r["summary"]) for r in store.rows("runs")}
        layers, attention = study_layers(store), study_attention(store)
    assert {m for m, _ in scores} == {"base", "ft", "ft@0", "ft@0.5", "ft@1"}
    for k in (0, 2):  # bit-identical weights at the ends: the same label scores, not only the same accuracy
        assert probs[("ft@0", k)] == probs[("base", k)] and scores[("ft@0", k)] == scores[("base", k)]
        assert probs[("ft@1", k)] == probs[("ft", k)] and scores[("ft@1", k)] == scores[("ft", k)]
        assert probs[("ft@0.5", k)] not in (probs[("base", k)], probs[("ft", k)])  # a model between them
    assert (summary["ft@0.5"]["alpha"], summary["ft@0.5"]["kind"]) == (0.5, "full")
    assert not any((tmp_path / "runs" / r.dir_name / "model").exists() for r in plan.runs)  # keep_models: false
    # the analyses measured with the training, read back: one FT profile (30 layers, every one moved)
    (profile,) = layers["profiles"]
    assert profile["method"] == "ft" and len(profile["layers"]) == 30
    assert all(e["mean_abs_change"] > 0 for e in profile["layers"]) and "No comparison" in layers["reading"]["sentence"]
    assert summary["ft"]["drift"]["mean_abs_change"] == pytest.approx(profile["total"]["mean_abs_change"])
    base, tuned = attention["models"].values()
    for r in (base, tuned):
        assert (r["test_set"], r["shots"], r["records"]) == ("amazon", 2, 2)
        for e in r["layers"]:  # a softmax row over the prompt, cut into four segments
            assert sum(e[s] for s in ("sink", "examples", "query", "template")) == pytest.approx(
                1.0, abs=1e-6
            )  # fp32 softmax
    direct = analyze_attention(
        "default", task=load_task("sentiment"), test_set="amazon", shots=2, records=2, data_dir=paper_data
    )
    assert base["mean"] == direct["mean"] and tuned["mean"] != base["mean"]
    assert summary["ft"]["attention"]["base"] == base["mean"]


def test_the_disk_estimate_counts_interpolated_models_as_full_ones(paper_data):
    from ftgen.costs import disk_estimate

    data = with_methods(
        {"name": "ft", "lora_r": 4}, {"name": "interpolate", "of": "ft+lora", "alphas": [0.25, 0.5]}, keep_models=False
    )
    d = disk_estimate(plan_for(data, paper_data))
    full = next(line for line in d["models"] if "full fp32" in line)
    assert d["runs"] == 3 and d["models_alive"] == 1 + 2 and "full fp32 checkpoint" in full  # 1 worker + 2 models
    assert d["checkpoints_bytes"] == 0
