"""The WiSE-FT trade-off of a study: what each interpolated model keeps of its run's in-domain gain, and what it
costs out of domain and across tasks, read from the study's results store.

    result = tradeoff(Store.open_reader(out))
    result["points"]     one per (train task, method, α, shots setting, prompt format): group-mean scores and
                         deltas vs the base model, averaged over the runs of that method (sizes, lrs, seeds)
    result["best"]       per setting: interpolate.best_alphas (the α that keeps the most in-domain gain for the
                         least cross-task loss) and its one-sentence reading

Groups (the paper's Table 1, as `ftgen report` draws them): in-domain = the train task's `in_domain` test sets
(from the task definition stored with the trained run; the set named like the train set in a store without
one); out-of-domain = the train task's other test sets; cross-task = every other task's test sets.
A delta is a cell's score minus the base
model's at the same test set, shots and format; a group's value is the mean over its test sets, counted only
where both cells are done. α = 1 is the trained run itself (or its α = 1 interpolation, equal to it), α = 0 the
base model (deltas 0) unless an α = 0 interpolation was evaluated. A shots setting is the rank of the shot count
within its test task (0-shot, then the first k-shot), as in the report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from statistics import mean

from ftgen.analysis.interpolate import best_alphas
from ftgen.store import Store
from ftgen.tasks import in_domain_list

GROUP_KEYS = ("id", "ood", "cross")


def _group(train_task: str, in_domain: list[str], test_task: str, test_set: str) -> str:
    if test_task != train_task:
        return "cross"
    return "id" if test_set in in_domain else "ood"


def _in_domain(trained: dict) -> list[str]:
    """The trained run's in-domain test sets, from the task definition it was trained under (an older store
    holds one name, a store without a definition none)."""
    return in_domain_list(_identity(trained).get("task_def")) or [trained["train_set"]]


def _identity(row: dict) -> dict:
    try:
        identity = json.loads(row["config"] or "{}")
    except ValueError:
        return {}
    return identity if isinstance(identity, dict) else {}


def interpolated_models(store: Store) -> dict[str, list[tuple[float, dict]]]:
    """Trained run key -> [(α, the model's runs row)] for every done run that was interpolated; α = 1 is the run
    itself unless an α = 1 interpolation is there."""
    runs = {r["key"]: r for r in store.rows("runs", "status = 'done'")}
    models: dict[str, dict[float, dict]] = defaultdict(dict)
    for row in runs.values():
        identity = _identity(row)
        if identity.get("unit") == "interpolate" and identity.get("of") in runs:
            models[identity["of"]][float(identity["alpha"])] = row
    for key, by_alpha in models.items():
        by_alpha.setdefault(1.0, runs[key])
    return {key: sorted(by_alpha.items()) for key, by_alpha in models.items()}


def _settings(cells: list[dict]) -> dict[tuple[str, int], int]:
    """(test task, shots) -> the rank of the shot count within its test task."""
    shots: dict[str, set[int]] = defaultdict(set)
    for c in cells:
        shots[c["test_task"]].add(c["shots"])
    return {(t, k): i for t, ks in shots.items() for i, k in enumerate(sorted(ks))}


def setting_label(rank: int, fmt: int, fmts: int = 1) -> str:
    return ("0-shot" if rank == 0 else "k-shot" if rank == 1 else f"k-shot #{rank}") + (
        f", format {fmt}" if fmts > 1 else ""
    )


def _group_means(cells: list[dict], base: dict[tuple, float], trained: dict) -> dict[tuple, dict]:
    """(shots rank, fmt) -> {group: mean score, group_delta: mean delta} of one model's cells."""
    raw: dict[tuple, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    in_domain = _in_domain(trained)
    for c in cells:
        b = base.get((c["model"], c["test_task"], c["test_set"], c["shots"], c["fmt"]))
        if b is None or c["score"] is None:
            continue
        g = _group(trained["train_task"], in_domain, c["test_task"], c["test_set"])
        raw[(c["rank"], c["fmt"])][g].append((c["score"], c["score"] - b))
    return {
        setting: {g: mean(s for s, _ in v) for g, v in groups.items()}
        | {f"{g}_delta": mean(d for _, d in v) for g, v in groups.items()}
        for setting, groups in raw.items()
    }


def tradeoff(store: Store) -> dict:
    """The interpolation trade-off of a study (see the module docstring): {"points": [...], "best": [...]}."""
    cells = store.rows("cells", "status = 'done'")
    ranks = _settings(cells)
    for c in cells:
        c["rank"] = ranks[(c["test_task"], c["shots"])]
    base = {
        (c["model"], c["test_task"], c["test_set"], c["shots"], c["fmt"]): c["score"] for c in cells if not c["run_key"]
    }
    by_model: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        if c["run_key"]:
            by_model[c["run_key"]].append(c)
    runs = {r["key"]: r for r in store.rows("runs", "status = 'done'")}
    collected: dict[tuple, list[dict]] = defaultdict(list)  # (train task, method, α, rank, fmt) -> per run
    for key, models in interpolated_models(store).items():
        trained = runs[key]
        for alpha, row in models:
            for (rank, fmt), means in _group_means(by_model.get(row["key"], []), base, trained).items():
                collected[(trained["train_task"], trained["method"], alpha, rank, fmt)].append(means)
    fmts = len({k[4] for k in collected})
    points = []
    for (task, method, alpha, rank, fmt), per_run in sorted(collected.items()):
        point = {"train_task": task, "method": method, "alpha": alpha, "setting": setting_label(rank, fmt, fmts)}
        point |= {"shots_rank": rank, "fmt": fmt, "runs": len(per_run)}
        for g in GROUP_KEYS:
            deltas = [m[f"{g}_delta"] for m in per_run if f"{g}_delta" in m]
            scores = [m[g] for m in per_run if g in m]
            point[g] = mean(deltas) if deltas else None  # the delta: what best_alphas reads
            point[f"{g}_score"] = mean(scores) if scores else None
        points.append(point)
    best = []
    for setting in dict.fromkeys(p["setting"] for p in points):
        chosen = best_alphas([p for p in points if p["setting"] == setting])
        best.append({"setting": setting, **chosen})
    return {"points": points, "best": best}


def tradeoff_rows(result: dict) -> list[dict]:
    """The points as table rows (strings), with the best α of each curve marked."""
    best = {(b["setting"], e["train_task"], e["method"]): e["alpha"] for b in result["best"] for e in b["best"]}

    def cell(p: dict, g: str) -> str:
        if p[g] is None:
            return "-"
        return f"{p[f'{g}_score']:.1f} ({p[g]:+.1f})"

    return [
        {
            "setting": p["setting"],
            "train task": p["train_task"],
            "method": p["method"],
            "α": f"{p['alpha']:g}"
            + (" *" if best.get((p["setting"], p["train_task"], p["method"])) == p["alpha"] else ""),
            "runs": p["runs"],
            "in-domain (Δ)": cell(p, "id"),
            "out-of-domain (Δ)": cell(p, "ood"),
            "cross-task (Δ)": cell(p, "cross"),
        }
        for p in result["points"]
    ]
