"""A synthetic study store for report tests: real rows written through Store.open_writer / finish_run /
finish_cell, with crafted per-record predictions, so every number of the report is known exactly and checkable
against ftgen.stats computed directly. Fast: no model, no data files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ftgen import metrics as M
from ftgen.store import Store, canonical_json
from ftgen.tasks import load_task


def task_def(name: str) -> dict:
    return load_task(name).model_dump()


def classification_predictions(golds: list[str], correct: list[bool], labels: list[str]) -> list[dict]:
    """Per record: the gold label where `correct`, else the next label (in the task's order)."""
    out = []
    for i, (g, ok) in enumerate(zip(golds, correct, strict=True)):
        pred = g if ok else labels[(labels.index(g) + 1) % len(labels)]
        out.append({"id": f"r{i}", "prediction": pred, "gold": g})
    return out


def generation_predictions(golds: list[str], outputs: list[str]) -> list[dict]:
    return [
        {"id": f"r{i}", "prediction": M.first_paragraph(o), "gold": g, "generated": o}
        for i, (g, o) in enumerate(zip(golds, outputs, strict=True))
    ]


def balanced_golds(labels: list[str], n: int) -> list[str]:
    return [labels[i % len(labels)] for i in range(n)]


def with_accuracy(labels: list[str], n: int, k_correct: int, seed: int) -> list[dict]:
    """n balanced records, k of them right (which ones: a seeded shuffle)."""
    golds = balanced_golds(labels, n)
    correct = [True] * k_correct + [False] * (n - k_correct)
    random.Random(seed).shuffle(correct)
    return classification_predictions(golds, correct, labels)


@dataclass
class SyntheticStudy:
    """Runs and cells of a study, written to a real store with `write(out)`."""

    name: str = "synthetic"
    runs: list[dict] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    done: dict[str, tuple[list[dict], dict]] = field(default_factory=dict)  # cell key -> predictions, metrics
    finished_runs: dict[str, dict] = field(default_factory=dict)  # run key -> summary

    def run(
        self,
        key: str,
        task: str,
        size: int,
        method: str,
        *,
        seed: int = 0,
        lr: float = 1e-4,
        epochs: int = 2,
        train_set: str | None = None,
        drift: dict | None = None,
        done: bool = True,
        model: str = "default",
        in_domain: list[str] | None = None,
    ) -> dict:
        tdef = task_def(task)
        if in_domain is not None:
            tdef["in_domain"] = in_domain
        domain = tdef["in_domain"]
        train_set = train_set or (domain[0] if isinstance(domain, list) else domain)
        fticl = 2 if method.startswith("fticl") else 0
        train = {
            "model": model,
            "task": task,
            "train_set": train_set,
            "train_size": size,
            "lr": lr,
            "epochs": epochs,
            "seed": seed,
            "fticl_shots": fticl,
            "lora_r": None,
            "batch_size": 8,
        }
        row = {
            "key": key,
            "slot": f"{model}|{task}|{size}|{method}|{lr}|{epochs}|{seed}",
            "model": model,
            "train_task": task,
            "train_set": train_set,
            "size": size,
            "method": method,
            "lr": lr,
            "epochs": epochs,
            "seed": seed,
            "config": canonical_json({"unit": "train", "train": train, "task_def": tdef}),
        }
        self.runs.append(row)
        if done:
            summary = {"records": size, "steps": 4, "device": "cpu", "compute_dtype": "fp32"}
            self.finished_runs[key] = summary | ({"drift": drift} if drift else {})
        return row

    def interpolated(self, of: dict, alpha: float, *, key: str | None = None) -> dict:
        """A WiSE-FT model of the trained run `of` (method `ft@0.5`, identity unit "interpolate"), done."""
        method = f"{of['method']}@{alpha:g}"
        names = ("model", "train_task", "train_set", "size", "lr", "epochs", "seed")
        row = {
            "key": key or f"{of['key']}@{alpha:g}",
            "slot": f"{of['slot']}|{method}",
            **{c: of[c] for c in names},
            "method": method,
            "config": canonical_json({"unit": "interpolate", "of": of["key"], "alpha": alpha, "rules": 1}),
        }
        self.runs.append(row)
        self.finished_runs[row["key"]] = {"alpha": alpha, "kind": "full", "method": of["method"]}
        return row

    def cell(
        self,
        run: dict | None,
        test_task: str,
        test_set: str,
        shots: int,
        predictions: list[dict] | None,
        *,
        fmt: int = 0,
        model: str = "default",
        dropped: int = 0,
        failed: bool = False,
    ) -> str:
        """A cell of `run` (None: the base model); `predictions` None = not run yet."""
        names = ("model", "train_task", "train_set", "size", "method", "lr", "epochs", "seed")
        coords = {c: run[c] for c in names} if run else dict.fromkeys(names) | {"model": model, "method": "base"}
        key = f"{run['key'] if run else 'base-' + model}|{test_task}/{test_set}|{shots}|{fmt}"
        tdef = task_def(test_task)
        config = {
            "unit": "eval",
            "model": run["key"] if run else f"base:{model}",
            "task": test_task,
            "test_set": test_set,
            "shots": shots,
            "fmt": fmt,
            "limit": 40,
            "task_def": tdef,
            "scoring": "sum" if tdef["kind"] == "classification" else None,
            "max_new_tokens": None if tdef["kind"] == "classification" else 32,
        }
        self.cells.append(
            {
                "key": key,
                "slot": key,
                "run_key": run["key"] if run else None,
                **coords,
                "test_task": test_task,
                "test_set": test_set,
                "shots": shots,
                "fmt": fmt,
                "config": canonical_json(config),
                "failed": failed,
            }
        )
        if predictions is not None:
            kind = tdef["kind"]
            golds = [p["gold"] for p in predictions]
            preds = [p["prediction"] for p in predictions]
            score = M.accuracy(preds, golds) if kind == "classification" else M.rouge_l(preds, golds)
            metrics = {
                "metric": tdef["metric"],
                "score": score,
                "n": len(predictions),
                "data": {"raw": len(predictions) + dropped, "kept": len(predictions), "invalid": dropped, "ignored": 0},
                "environment": {
                    "device": "cpu",
                    "device_name": "test CPU",
                    "dtype": "fp32",
                    "host": "h",
                    "versions": {"ftgen": "0.test", "torch": "2.x"},
                    "model": {
                        "name": model,
                        "resolved": "SmolLM2-135M-Instruct",
                        "path": "/cache/SmolLM2-135M-Instruct",
                        "sha256": "ab" * 32,
                        "revision": None,
                    }
                    if run is None
                    else None,
                },
            }
            self.done[key] = (predictions, metrics)
        return key

    def write(self, out: Path, yaml_text: str = "name: synthetic\n") -> Path:
        with Store.open_writer(out) as st:
            st.set_meta("study", self.name)
            st.set_meta("config", json.dumps({"name": self.name}))
            st.add(self.runs, [{k: v for k, v in c.items() if k != "failed"} for c in self.cells])
            rows = {r["key"]: r for r in self.runs}
            for key, summary in self.finished_runs.items():
                model_dir = (st.run_dir(rows[key]) / "model").relative_to(out).as_posix()
                st.finish_run(key, model_dir=model_dir, manifest={"w": key}, summary=summary, seconds=1.0)
            for key, (predictions, metrics) in self.done.items():
                st.finish_cell(key, metrics=metrics, predictions=predictions, seconds=0.5)
            for c in self.cells:
                if c["failed"]:
                    st.fail("cells", c["key"], "RuntimeError: boom")
        (out / "study.yaml").write_text(yaml_text)
        return out
