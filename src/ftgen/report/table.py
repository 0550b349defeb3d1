"""The computed table of a study: every cell's score and its delta vs the base model, its flags, every group
mean, every FT-vs-FTICL comparison and the headline, each with its 95% interval, computed once (ftgen.stats)
for the renderers (ftgen.report.text, .html, .figures), which only format them.

Rows (`Model`): a base model, or the training runs of one configuration over its seeds (mean ± sd across
seeds; the interval accounts for seeds and records). Columns: test sets, grouped per train task as in-domain
(the sets the run's task definition lists), out-of-domain (the task's other sets) and cross-task (every other
task's sets). A setting is the rank of the shot count within its test task (0-shot, then the first k-shot, ...)
and a prompt format, so tasks with different k (sentiment 2, question 1) share the "k-shot" tables.

Rules (each stated again in the report):
- a delta vs the base is a paired difference on the same records, at the same shots and prompt format;
- a cell of several seeds is shown once every seed's cell is done;
- a group mean (ID / OOD / cross-task) is the mean of the per-set deltas, blank unless every cell of the group
  is done, for the row and for its base;
- FT vs FTICL compares matched runs only: the same model, train task and set, size, seeds, lr, epochs and every
  other training option, one trained plainly and one with in-context examples; a group enters the comparison
  only when all its cells are done on both sides;
- the headline pools, per setting and group, the complete matched comparisons; FT − base and FTICL − base use
  the same matched runs (every complete run when the study has no matched pair);
- an interpolated model (WiSE-FT, method `ft@0.5`: θ = (1−α)·θ_base + α·θ_tuned of a trained run) is a row of
  the tables with its own group means, but never an FT or FTICL run: it enters no FT-vs-FTICL pair, no headline,
  no claim, no pooled figure (`Table.trained` are the rows that do); its trade-off is ftgen.report.interpolation.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ftgen import stats
from ftgen.report.view import CellData, StudyView, TestSet
from ftgen.tasks import in_domain_list

GROUPS = ("ID", "OOD", "cross")
GROUP_NAMES = {"ID": "in-domain", "OOD": "out-of-domain", "cross": "cross-task"}
DEGENERATE_SHARE = 50.0  # % of a generation cell's outputs empty, or bare label words, that marks it to distrust
NOT_MATCHED = ("seed", "fticl_shots", "fticl_pool")  # what may differ between an FT run and its FTICL partner
INTERVALS = (
    "95% intervals (ftgen.stats, seeded: a rerun prints the same). A cell's score: Clopper-Pearson (exact binomial) "
    "for accuracy, percentile bootstrap over records (2000 resamples) for Rouge-L and BLEU. A delta vs the base and "
    "FTICL − FT: paired bootstrap over the same records, p-value by a paired sign-flip permutation test. A group "
    "mean: mean of per-set deltas, stratified bootstrap. Several seeds: mean ± sd across seeds, bootstrap over seeds "
    "then records. ± in a table is the larger half of the interval; * marks a delta whose interval excludes 0."
)


@dataclass(frozen=True, order=True)
class Setting:
    rank: int  # of the shot count within its test task: 0 = 0-shot, 1 = the first k-shot, ...
    fmt: int


@dataclass(frozen=True)
class Model:
    """A table row: a base model (no runs), or the runs of one configuration, one per seed (in seed order)."""

    model: str
    run_keys: tuple[str, ...] = ()
    train_task: str | None = None
    train_set: str | None = None
    size: int | None = None
    method: str = "base"
    lr: float | None = None
    epochs: float | None = None
    seeds: tuple[int, ...] = ()
    fticl: bool = False
    alpha: float | None = None  # an interpolated model's α (None: a base model or a trained run)

    @property
    def is_base(self) -> bool:
        return not self.run_keys

    @property
    def interpolated(self) -> bool:
        return self.alpha is not None


@dataclass
class Cell:
    """One model on one test set in one setting: its parts (one store cell per seed) and what they give."""

    model: Model
    test: TestSet
    setting: Setting
    group: str | None
    shots: int
    parts: list[CellData]
    score: stats.Estimate | None = None
    delta: stats.Estimate | None = None
    distrust: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.parts) == max(len(self.model.seeds), 1) and all(p.done for p in self.parts)

    @property
    def records(self) -> list[stats.Records]:
        return [p.records for p in self.parts]

    @property
    def metric(self) -> str | None:
        return next((p.metric for p in self.parts if p.metric), None)

    @property
    def status(self) -> str:
        if self.done:
            return "done"
        states = {p.status for p in self.parts}
        return "failed" if "failed" in states else "done (not scorable)" if states == {"done"} else "pending"


@dataclass(frozen=True)
class Pair:
    """A matched comparison: an FTICL row and the FT row trained exactly like it but for the examples."""

    ft: Model
    fticl: Model


class Table:
    """The whole computed table of a study (see the module docstring for its rules)."""

    def __init__(self, view: StudyView):
        self.view = view
        self._shot_ranks()
        self.models = self._models()
        self.trained = [m for m in self.models if not m.is_base and not m.interpolated]  # FT and FTICL runs
        self.test_sets = self._test_sets()
        self.cells: dict[tuple[Model, TestSet, Setting], Cell] = {}
        self._fill_cells()
        self.group_means = {
            (m, s, g): self._group_mean(m, s, g)
            for m in self.models
            if not m.is_base
            for s in self.settings
            for g in GROUPS
        }
        self.pairs = self._pairs()
        self.pair_cells = {
            (p, t, s): self._pair_cell(p, t, s) for p in self.pairs for t in self.test_sets for s in self.settings
        }
        self.pair_groups = {
            (p, s, g): self._pair_group(p, s, g) for p in self.pairs for s in self.settings for g in GROUPS
        }
        self.headlines = {(s, g): self._headline(s, g) for s in self.settings for g in GROUPS}

    # ------------------------------------------------------------------ rows, columns, settings

    def _shot_ranks(self) -> None:
        shots: dict[str, set[int]] = {}
        for c in self.view.cells:
            shots.setdefault(c.test.task, set()).add(c.shots)
        self.shot_rank = {t: {k: i for i, k in enumerate(sorted(s))} for t, s in shots.items()}
        ranks = sorted({r for t in self.shot_rank.values() for r in t.values()})
        self.fmts = sorted({c.fmt for c in self.view.cells})
        self.settings = [Setting(r, f) for r in ranks for f in self.fmts]

    def _models(self) -> list[Model]:
        """Base models (by name), then the runs grouped over seeds, in the study's order."""
        bases = sorted({c.row.model for c in self.view.cells if c.row.run_key is None})
        groups: dict[tuple, list] = {}
        for run in self.view.runs.values():
            r = run.row
            groups.setdefault((r.model, r.train_task, r.train_set, r.size, r.method, r.lr, r.epochs), []).append(run)
        models = [Model(b) for b in bases]
        for coords, runs in groups.items():
            runs.sort(key=lambda run: run.row.seed or 0)
            fticl = bool(runs[0].train.get("fticl_shots")) if runs[0].train else coords[4].startswith("fticl")
            seeds = tuple(r.row.seed or 0 for r in runs)
            models.append(
                Model(coords[0], tuple(r.key for r in runs), *coords[1:], seeds, fticl, interpolation(runs[0]))
            )
        self.train_tasks = list(dict.fromkeys(m.train_task for m in models if not m.is_base))
        return models

    def _test_sets(self) -> list[TestSet]:
        """Train tasks' test sets first (in the study's order), each task's in-domain sets first."""
        found = list(dict.fromkeys(c.test for c in self.view.cells))
        tasks = [t for t in self.train_tasks if any(s.task == t for s in found)]
        tasks += [t for t in dict.fromkeys(s.task for s in found) if t not in tasks]

        def order(s: TestSet) -> tuple:
            domain = in_domain_list(self.view.task_def(s.task)) or []
            return (tasks.index(s.task), domain.index(s.name) if s.name in domain else len(domain), s.name)

        return sorted(found, key=order)

    def in_domain(self, model: Model) -> list[str]:
        """A run's in-domain test sets: those its stored task definition lists (else its train set)."""
        return in_domain_list(self.view.run_task_def(model.run_keys[0])) or [model.train_set]

    def group_of(self, model: Model, test: TestSet) -> str | None:
        if model.is_base:
            return None
        if test.task != model.train_task:
            return "cross"
        return "ID" if test.name in self.in_domain(model) else "OOD"

    def columns(self, train_task: str, setting: Setting | None = None) -> list[tuple[str, TestSet]]:
        """(group, test set) for the tables of a train task, in the order ID, OOD, cross-task; with a setting,
        only the test sets the grid evaluates in it (a test task without k-shot cells has no k-shot column)."""
        model = next(m for m in self.models if m.train_task == train_task)
        sets = [t for t in self.test_sets if setting is None or any((m, t, setting) in self.cells for m in self.models)]
        cols = [(self.group_of(model, t), t) for t in sets]
        return sorted(cols, key=lambda c: GROUPS.index(c[0]))

    def shots_of(self, task: str, setting: Setting) -> int | None:
        return next((k for k, r in self.shot_rank.get(task, {}).items() if r == setting.rank), None)

    def setting_label(self, setting: Setting) -> str:
        shots = sorted({k for t in self.shot_rank.values() for k, r in t.items() if r == setting.rank})
        if shots == [0]:
            label = "0-shot"
        elif len(shots) == 1:
            label = f"{shots[0]}-shot"
        else:  # k differs between test tasks: shown beside each test set
            label = "k-shot" if max(s.rank for s in self.settings) == 1 else f"k-shot #{setting.rank}"
        return label + (f", format {setting.fmt}" if len(self.fmts) > 1 else "")

    def parent(self, m: Model) -> Model | None:
        """The trained row an interpolated row was built from (its runs' `of`; else the same coordinates with the
        method before `@`); None for other rows."""
        if not m.interpolated:
            return None
        of = self.view.runs[m.run_keys[0]].config.get("of")
        if of is not None:
            return next((p for p in self.trained if of in p.run_keys), None)
        method = m.method.split("@")[0]
        same = (m.model, m.train_task, m.train_set, m.size, method, m.lr, m.epochs, m.seeds)
        return next((p for p in self.trained if (*_coords(p), p.seeds) == same), None)

    @property
    def swept(self) -> list[str]:
        runs = self.trained
        return [f for f in ("lr", "epochs") if len({getattr(m, f) for m in runs}) > 1]

    def label(self, m: Model, with_task: bool = True) -> str:
        """`n=32 fticl` (with the train task, swept parameters, seeds and model as needed)."""
        several_models = len({x.model for x in self.models}) > 1
        if m.is_base:
            return f"base ({m.model})" if several_models else "base"
        parts = ([m.train_task] if with_task else []) + [f"n={m.size}", m.method]
        parts += [f"{f}={getattr(m, f):g}" for f in self.swept]
        if len(m.seeds) > 1:
            parts.append(f"({len(m.seeds)} seeds)")
        return " ".join(([m.model] if several_models else []) + parts)

    def base_of(self, m: Model) -> Model | None:
        return next((b for b in self.models if b.is_base and b.model == m.model), None)

    def runs_of(self, train_task: str) -> list[Model]:
        return [m for m in self.models if m.train_task == train_task]

    # ------------------------------------------------------------------ cells

    def _fill_cells(self) -> None:
        by_unit: dict[tuple, CellData] = {
            (c.row.run_key or c.row.model, c.test, c.shots, c.fmt): c for c in self.view.cells
        }
        for m in self.models:
            units = m.run_keys or (m.model,)
            for t in self.test_sets:
                for s in self.settings:
                    k = self.shots_of(t.task, s)
                    parts = [by_unit.get((u, t, k, s.fmt)) for u in units]
                    if k is None or not any(parts):
                        continue  # not planned (no pool for k-shot, another grid)
                    cell = Cell(m, t, s, self.group_of(m, t), k, [p for p in parts if p is not None])
                    self.cells[(m, t, s)] = cell
        for cell in self.cells.values():
            if cell.done:
                cell.score = self._score(cell)
            if cell.parts and all(p.status == "done" for p in cell.parts):
                cell.distrust = distrust_reasons(cell)
        for cell in self.cells.values():
            base = self.base_cell(cell)
            if cell.done and base is not None and base.done:
                cell.delta = _safe(stats.seeds_difference, [(r, base.records[0]) for r in cell.records])

    def _score(self, cell: Cell) -> stats.Estimate | None:
        if len(cell.records) == 1:
            return _safe(stats.score_interval, cell.metric, cell.records[0])
        return _safe(stats.seeds_score, cell.records)

    def cell(self, m: Model, t: TestSet, s: Setting) -> Cell | None:
        return self.cells.get((m, t, s))

    def base_cell(self, cell: Cell) -> Cell | None:
        base = self.base_of(cell.model) if not cell.model.is_base else None
        return self.cell(base, cell.test, cell.setting) if base else None

    def vs_base(self, m: Model, t: TestSet, s: Setting) -> list[tuple] | None:
        """Per seed (run, base) records of one cell, or None unless both are done."""
        cell = self.cell(m, t, s)
        base = self.base_cell(cell) if cell else None
        if cell is None or base is None or not (cell.done and base.done):
            return None
        return [(r, base.records[0]) for r in cell.records]

    def group_sets(self, m: Model, s: Setting, g: str) -> list[TestSet]:
        """The test sets of group g that the model has a cell for (done or not) in setting s."""
        return [t for t in self.test_sets if self.group_of(m, t) == g and (m, t, s) in self.cells]

    def holds(self, s: Setting, g: str) -> bool:
        """Whether the grid has any fine-tuned row's cell of group g in setting s (done or not)."""
        return any(self.group_sets(m, s, g) for m in self.models if not m.is_base)

    def _group_mean(self, m: Model, s: Setting, g: str) -> stats.Estimate | None:
        sets = [self.vs_base(m, t, s) for t in self.group_sets(m, s, g)]
        return _safe(stats.group_difference, sets) if sets else None

    def pooled(self, models: list[Model], s: Setting, g: str) -> stats.Estimate | None:
        """Mean delta vs base over every cell of group g of several rows (blank unless all are done)."""
        sets = [self.vs_base(m, t, s) for m in models for t in self.group_sets(m, s, g)]
        return _safe(stats.group_difference, sets) if sets else None

    # ------------------------------------------------------------------ FT vs FTICL

    def match_key(self, m: Model) -> tuple:
        """What an FT row and its FTICL partner share: every training option but the in-context examples."""
        train = self.view.runs[m.run_keys[0]].train
        if train:
            options = tuple(sorted((k, repr(v)) for k, v in train.items() if k not in NOT_MATCHED))
        else:  # a store without stored configs: the coordinates
            options = (m.train_task, m.train_set, m.size, m.lr, m.epochs)
        return (m.model, m.seeds, options)

    def _pairs(self) -> list[Pair]:
        ft = {}
        for m in self.trained:
            if not m.fticl:
                ft.setdefault(self.match_key(m), m)
        return [Pair(ft[k], m) for m in self.trained if m.fticl and (k := self.match_key(m)) in ft]

    def pair_label(self, p: Pair | None = None) -> str:
        labels = {(q.fticl.method, q.ft.method) for q in self.pairs}
        if p is None or len(labels) == 1:
            return "FTICL − FT"
        return f"{p.fticl.method} − {p.ft.method}"

    def fticl_vs_ft(self, p: Pair, t: TestSet, s: Setting) -> list[tuple] | None:
        a, b = self.cell(p.fticl, t, s), self.cell(p.ft, t, s)
        if a is None or b is None or not (a.done and b.done):
            return None
        return list(zip(a.records, b.records, strict=True))

    def _pair_cell(self, p: Pair, t: TestSet, s: Setting) -> stats.Estimate | None:
        sets = self.fticl_vs_ft(p, t, s)
        return _safe(stats.seeds_difference, sets) if sets else None

    def _pair_group(self, p: Pair, s: Setting, g: str) -> stats.Estimate | None:
        sets = [self.fticl_vs_ft(p, t, s) for t in self.group_sets(p.ft, s, g)]
        return _safe(stats.group_difference, sets) if sets else None

    # ------------------------------------------------------------------ the headline

    def _headline(self, s: Setting, g: str) -> list[stats.Headline]:
        """FTICL − FT, FT − base, FTICL − base over the complete matched cells of one setting and group."""
        complete = [p for p in self.pairs if self.pair_groups[(p, s, g)] is not None]
        out = [
            pooled_headline(
                self.pair_label(), [self.fticl_vs_ft(p, t, s) for p in complete for t in self.group_sets(p.ft, s, g)]
            )
        ]
        for fticl, name in ((False, "FT − base"), (True, "FTICL − base")):
            if self.pairs:
                rows = list(dict.fromkeys(p.fticl if fticl else p.ft for p in complete))
            else:
                rows = [m for m in self.trained if m.fticl == fticl]
            rows = [m for m in rows if self.group_means[(m, s, g)] is not None]
            out.append(pooled_headline(name, [self.vs_base(m, t, s) for m in rows for t in self.group_sets(m, s, g)]))
        return out

    # ------------------------------------------------------------------ summaries for the renderers

    def distrusted(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.distrust]

    def drift(self, m: Model) -> dict | None:
        """A row's drift from its base (mean over its seeds): mean |Δw|, relative change, KL on the probe set."""
        per_seed = [self.view.runs[k].summary.get("drift") or {} for k in m.run_keys]
        out = {}
        for name in ("mean_abs_change", "rel_change", "kl_mean"):
            values = [d[name] for d in per_seed if isinstance(d.get(name), (int, float))]
            if len(values) == len(per_seed) and values:
                out[name] = sum(values) / len(values)
        return out or None

    def counts(self) -> dict[str, int]:
        done = sum(c.done for c in self.cells.values())
        return {"cells": len(self.cells), "done": done, "distrusted": len(self.distrusted())}


def interpolation(run) -> float | None:
    """α of an interpolated model's run (its stored identity: unit "interpolate"; else a method `ft@0.5`)."""
    if run.config.get("unit") == "interpolate" and isinstance(run.config.get("alpha"), (int, float)):
        return float(run.config["alpha"])
    method = run.row.method or ""
    if "@" in method:
        try:
            return float(method.rsplit("@", 1)[1])
        except ValueError:
            return math.nan  # still an interpolated model (kept out of every comparison), α unknown
    return None


def _coords(m: Model) -> tuple:
    return (m.model, m.train_task, m.train_set, m.size, m.method, m.lr, m.epochs)


def max_delta(t: Table) -> float:
    """The one colour range of every heatmap and table shading: the largest |change| in the study (>= 1 point)."""
    return max([1.0, *(abs(c.delta.estimate) for c in t.cells.values() if c.delta is not None)])


def _safe(fn, *args):
    """A statistic, or None when the compared cells share no record (a damaged or foreign store)."""
    try:
        return fn(*args)
    except ValueError:
        return None


def pooled_headline(label: str, cells: list[list[tuple] | None]) -> stats.Headline:
    """stats.headline over complete cells of the most common number of seeds (a pooled mean needs one)."""
    cells = [c for c in cells if c]
    if cells:
        seeds = Counter(len(c) for c in cells).most_common(1)[0][0]
        cells = [c for c in cells if len(c) == seeds]
    try:
        return stats.headline(label, cells)
    except ValueError:
        return stats.Headline(label, None, 0, 0, 0)


def distrust_reasons(cell: Cell) -> list[str]:
    """Why a cell's score should not be read as a result: a collapsed classifier, degenerate generations, or no
    per-record values (stats.classification_flags / generation_flags; one reason per kind, any seed)."""
    reasons = []
    for part in cell.parts:
        f = part.flags
        if part.problem:
            reasons.append(part.problem)
        elif isinstance(f, stats.ClassificationFlags):
            if f.constant:
                label = max(f.pred_share, key=f.pred_share.get) if any(f.pred_share.values()) else "outside the labels"
                reasons.append(f"constant predictions ('{label}')")
            elif f.near_majority:
                reasons.append(f"score within its interval of the majority rate {f.majority_rate:.1f}")
        elif isinstance(f, stats.GenerationFlags):
            if f.empty_share >= DEGENERATE_SHARE:
                reasons.append(f"{f.empty_share:.0f}% empty outputs")
            if f.label_word_share >= DEGENERATE_SHARE:
                reasons.append(f"{f.label_word_share:.0f}% outputs are a bare label word")
    return list(dict.fromkeys(reasons))
