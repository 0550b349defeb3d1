#!/usr/bin/env python3
"""A standing mutation check: does the fast test suite notice the bugs that would change ftgen's numbers?

Each mutation below changes the library the way a real bug would (Rouge-L computed as Rouge-1, a loss mask off
by one, a field dropped from a unit's key, ...). For each one this script copies `src/` to a temp dir, applies
the mutation to the COPY (the working tree is never edited), puts the copy first on PYTHONPATH and runs the
few fast tests meant to catch it. A mutation is caught when one of them fails. The check fails (exit 1) on:

    SURVIVED     every test passed with the mutation in place
    NOT FOUND    the text a mutation replaces is no longer in its file exactly once (the list must not rot:
                 re-point the mutation at the code as it is now)
    ERROR        the tests could not run (collection error, timeout, the copy was not the code imported)
    BASELINE     a listed test fails without any mutation (it would "catch" everything)

    python tools/mutants.py              # all mutations, 2 at a time, with the unmutated baseline first
    python tools/mutants.py -k rouge     # those whose name contains "rouge"
    python tools/mutants.py --list       # the mutations and their tests, without running anything

No pytest plugin, no mutation framework: an explicit list is easier to read and to keep pointed at what the
numbers rest on than generated mutants (mutmut and cosmic-ray mutate every operator; most of those mutants are
equivalent or trivially caught, and a full run takes hours on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ftgen"
TIMEOUT_S = 600  # per mutation: a mutant that hangs is an ERROR, not a catch


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # under src/ftgen/
    edits: tuple[tuple[str, str], ...]  # (text found exactly once in the file, its replacement)
    tests: tuple[str, ...]  # pytest node ids meant to catch it, fast tests only, cheapest first


def M(name: str, file: str, edits: list[tuple[str, str]], tests: list[str]) -> Mutation:
    return Mutation(name, file, tuple(edits), tuple(tests))


T_REF = "tests/test_references.py::"
T_FACTS = "tests/test_study_facts.py::"
T_FIELDS = "tests/test_result_fields.py::"
T_DAMAGED = T_FACTS + "test_status_check_fails_on_a_damaged_study"
T_POSITIONS = T_REF + "test_tokens_after_the_cached_prefix_get_the_positions_of_the_unpadded_sequence"

MUTATIONS = [
    # ---------------------------------------------------------------- metrics
    M(
        "Rouge-L computed as Rouge-1",
        "metrics.py",
        [('RougeScorer(["rougeL"]', 'RougeScorer(["rouge1"]'), ('["rougeL"].fmeasure', '["rouge1"].fmeasure')],
        ["tests/test_metrics.py::test_rouge_l_is_the_longest_common_subsequence_not_unigram_overlap"],
    ),
    M(
        "generation scored on the whole output, not its first paragraph",
        "metrics.py",
        [('return text.strip().split("\\n\\n", 1)[0].strip()', "return text.strip()")],
        ["tests/test_metrics.py::test_first_paragraph_strips_and_cuts_at_the_first_blank_line"],
    ),
    M(
        "a classification cell scored by macro-F1 instead of accuracy",
        "evaluate.py",
        [('task_metrics["accuracy" if task.kind', 'task_metrics["macro_f1" if task.kind')],
        [T_FACTS + "test_each_cell_score_is_its_metric_over_its_stored_predictions"],
    ),
    # ---------------------------------------------------------------- label scoring
    M(
        "first-token scoring uses the label's last token",
        "evaluate.py",
        [("return token_logprobs[0]", "return token_logprobs[-1]")],
        [T_REF + "test_the_rules_pick_different_labels_where_they_should"],
    ),
    M(
        "mean scoring is the sum (no length normalisation)",
        "evaluate.py",
        [("return sum(token_logprobs) / len(token_logprobs)", "return sum(token_logprobs)")],
        [T_REF + "test_the_rules_pick_different_labels_where_they_should"],
    ),
    M(
        "a two-label task's scores assigned to the wrong labels",
        "evaluate.py",
        [
            (
                "scores = {lab: label_score(lp, scoring) for lab, lp in zip(task.labels, lps, strict=True)}",
                "scores = {lab: label_score(lp, scoring) for lab, lp in zip(task.labels[::-1] "
                "if len(task.labels) == 2 else task.labels, lps, strict=True)}",
            )
        ],
        [T_REF + "test_the_preferred_label_wins_in_every_label_order[sentiment-sst2-True]"],
    ),
    M(
        "label tree: a label's tokens see the other labels",
        "evaluate.py",
        [("allowed = causal & (sk >= 0) & ((sk == 0) | (sk == sq))", "allowed = causal & (sk >= 0)")],
        [T_REF + "test_every_scoring_rule_equals_a_plain_forward_pass[bpe-inference-0]"],  # every label multi-token
    ),
    M(
        "label tree: each label token read one position late",
        "evaluate.py",
        [
            (
                "src = [last_query] + list(range(offset, offset + len(lab) - 1))",
                "src = list(range(offset, offset + len(lab)))",
            )
        ],
        [T_REF + "test_every_scoring_rule_equals_a_plain_forward_pass[tiny-inference-0]"],
    ),
    M(
        "plain scoring: each label token read one position late",
        "evaluate.py",
        [("src = list(range(keep - len(lab) - 1, keep - 1))", "src = list(range(keep - len(lab), keep))")],
        [T_REF + "test_every_scoring_rule_equals_a_plain_forward_pass[tiny-inference-0]"],
    ),
    M(
        "KV prefix: the labels' position offset off by one",
        "evaluate.py",
        [("    position_ids += n_prefix\n", "    position_ids += n_prefix + 1\n")],
        [T_POSITIONS + "[classification]"],
    ),
    M(
        "KV prefix: generation's position offset off by one",
        "evaluate.py",
        [
            (
                "position_ids = n_prefix + (attn[:, n_prefix:].cumsum(1) - 1).clamp(min=0)",
                "position_ids = n_prefix + 1 + (attn[:, n_prefix:].cumsum(1) - 1).clamp(min=0)",
            )
        ],
        [T_POSITIONS + "[generation]"],
    ),
    M(
        "KV prefix: decoding steps not moved one position on",
        "evaluate.py",
        [("        last_pos = last_pos + 1\n", "")],
        [T_POSITIONS + "[generation]"],
    ),
    M(
        "generation stops at a single newline",
        "evaluate.py",
        [('STOP = "\\n\\n"', 'STOP = "\\n"')],
        ["tests/test_evaluate.py::test_stop_rule_needs_content_before_the_blank_line"],
    ),
    # ---------------------------------------------------------------- prompts and data
    M(
        "prompt: an in-context example ends with one newline, not a blank line",
        "prompts.py",
        [('shot["output"] + task.shot_separator)', 'shot["output"] + "\\n")')],
        ["tests/test_prompts.py::test_few_shot_prompt_is_built_like_the_papers_code"],
    ),
    M(
        "prompt: the answer separator added after a template ending in a space (its whitespace not moved)",
        "prompts.py",
        [("return stripped, query[len(stripped) :] or task.answer_separator", "return query, task.answer_separator")],
        ["tests/test_scoring_rules.py::test_trailing_whitespace_moves_into_the_answer"],
    ),
    M(
        "in-context examples: the pool's last k, not its first k",
        "prompts.py",
        [("return list(pool[:k])", "return list(pool[len(pool) - k :])")],
        ["tests/test_prompts.py::test_shot_selection"],
    ),
    M(
        "a record limit applied after dropping unscorable records",
        "data.py",
        [
            ("    if limit is not None:\n        raw = raw[:limit]\n", ""),
            ("    report.kept = len(records)\n", "    records = records[:limit]\n    report.kept = len(records)\n"),
        ],
        ["tests/test_data.py::test_multinli_dash_label_is_dropped_and_counted"],
    ),
    M(
        "prompt: the tokenizer's BOS left out of the shared context",
        "prompts.py",
        [
            (
                "special_prefix(tokenizer) + encode_text(tokenizer, prompt.context)",
                "encode_text(tokenizer, prompt.context)",
            )
        ],
        [T_REF + "test_every_scoring_rule_equals_a_plain_forward_pass[bpe-inference-0]"],
    ),
    # ---------------------------------------------------------------- what a study's cell evaluates
    M(
        "cell: the study's scoring rule not handed to the evaluation",
        "units.py",
        [('scoring=p.scoring or "sum",', 'scoring="sum",')],
        [T_FACTS + "test_each_cell_evaluated_what_its_config_asks_for"],
    ),
    M(
        "cell: one in-context example fewer than its shots",
        "units.py",
        [("records, p.shots) if p.shots else []", "records, p.shots - 1) if p.shots else []")],
        [T_FACTS + "test_each_cell_evaluated_what_its_config_asks_for"],
    ),
    M(
        "cell: the record limit not handed to the test-set loader",
        "units.py",
        [("limit=p.limit, skip_invalid=p.skip_invalid)", "limit=None, skip_invalid=p.skip_invalid)")],
        [T_FACTS + "test_each_cell_evaluated_what_its_config_asks_for"],
    ),
    M(
        "cell: evaluated in the auto dtype, not the cell's",
        "units.py",
        [("models.get(job.model_path, p.dtype)", 'models.get(job.model_path, "auto")')],
        [T_FACTS + "test_stored_log_probs_are_those_of_the_model_the_cell_names"],
    ),
    M(
        "cell: a trained model's cells evaluate the base model",
        "driver.py",
        [
            (
                "self.submit_cells(self.plan.cells_of(run.key), str(self.model_dir(run)))",
                "self.submit_cells(self.plan.cells_of(run.key), run.model)",
            )
        ],
        [T_FACTS + "test_stored_log_probs_are_those_of_the_model_the_cell_names"],
    ),
    # ---------------------------------------------------------------- training
    M(
        "loss mask: the first answer token is not trained",
        "train.py",
        [("len(enc.context) + len(enc.query)))", "len(enc.context) + len(enc.query) + 1))")],
        ["tests/test_train.py::test_label_mask_on_a_real_record"],
    ),
    M(
        "loss mask: each position trained on its own token (shift lost)",
        "batching.py",
        [("targets[row, e.n_prompt - 1 : n - 1] =", "targets[row, e.n_prompt : n] =")],
        ["tests/test_train.py::test_label_mask_on_a_real_record"],
    ),
    M(
        "loss mask: the EOS that ends the answer is not trained",
        "batching.py",
        [
            (
                "targets[row, e.n_prompt - 1 : n - 1] = torch.tensor(e.ids[e.n_prompt :])",
                "targets[row, e.n_prompt - 1 : n - 2] = torch.tensor(e.ids[e.n_prompt : -1])",
            )
        ],
        ["tests/test_train.py::test_label_mask_on_a_real_record"],
    ),
    M(
        "loss: a mean per micro-batch instead of the window's sum over its tokens",
        "loss.py",
        [('reduction="sum")', 'reduction="mean")')],
        ["tests/test_train.py::test_accumulation_gives_the_full_batch_gradient"],
    ),
    M(
        "data order ignores the seed",
        "batching.py",
        [('random.Random(f"ftgen-train:{seed}:{epoch}")', 'random.Random(f"ftgen-train:{epoch}")')],
        ["tests/test_train.py::test_length_grouping_plan"],
    ),
    M(
        "FTICL: one in-context example fewer than asked for",
        "train.py",
        [
            (
                "shots = select_shots(pool.records, cfg.fticl_shots)",
                "shots = select_shots(pool.records, cfg.fticl_shots - 1)",
            )
        ],
        ["tests/test_train.py::test_fticl_prompts_hold_the_pool_shots_and_train_only_the_answer"],
    ),
    M(
        "FTICL: a study hands fticl_shots 0 to the trainer while its plan and keys say k = 2",
        "driver.py",
        [
            (
                "job = TrainJob(run.key, run.config,",
                'job = TrainJob(run.key, run.config.model_copy(update={"fticl_shots": 0}),',
            )
        ],
        [T_FACTS + "test_training_runs_used_the_examples_their_config_asks_for"],
    ),
    M(
        "FTICL: a method's own k ignored (the task's default k used)",
        "validate.py",
        [("    if isinstance(method.shots, int):\n        return method.shots\n", "")],
        [T_FACTS + "test_training_runs_used_the_examples_their_config_asks_for"],
    ),
    # ---------------------------------------------------------------- what determines a result (keys)
    M(
        "unit key: `scoring` dropped from an evaluation cell's key",
        "plan.py",
        [
            (
                "    cell = result_part(params)\n",
                '    cell = {k: v for k, v in result_part(params).items() if k != "scoring"}\n',
            )
        ],
        [T_FIELDS + "test_the_cell_key_follows_the_marking_field_by_field[scoring]"],
    ),
    M(
        "unit key: `dtype` dropped from an evaluation cell's key",
        "plan.py",
        [
            (
                "    cell = result_part(params)\n",
                '    cell = {k: v for k, v in result_part(params).items() if k != "dtype"}\n',
            )
        ],
        [T_FIELDS + "test_the_cell_key_follows_the_marking_field_by_field[dtype]"],
    ),
    M(
        "unit key: the task definition left out of a training run's key",
        "plan.py",
        [('"train": train, "task_def": task.model_dump(), "data": data}', '"train": train, "data": data}')],
        [T_FIELDS + "test_a_unit_key_holds_its_task_definition_its_data_and_its_model"],
    ),
    M(
        "unit key: the data files' hashes left out of a cell's key",
        "plan.py",
        [('**cell, "task_def": task.model_dump(), "data": data}', '**cell, "task_def": task.model_dump()}')],
        [T_FIELDS + "test_a_unit_key_holds_its_task_definition_its_data_and_its_model"],
    ),
    M(
        "unit key: RESULT_RULES left out of a cell's key",
        "plan.py",
        [('{"unit": "eval", "rules": RESULT_RULES, "model": model,', '{"unit": "eval", "model": model,')],
        [T_FIELDS + "test_result_rules_go_into_every_identity"],
    ),
    M(
        "unit key: settings (batch sizes, threads, paths) counted as result fields",
        "config.py",
        [('return not (isinstance(extra, dict) and extra.get("result") is False)', "return True")],
        [T_FIELDS + "test_every_field_is_a_result_field_or_a_declared_setting"],
    ),
    # ---------------------------------------------------------------- the store and its check
    M(
        "store: the one-live-row-per-slot index dropped for training runs",
        "store.py",
        [("CREATE UNIQUE INDEX IF NOT EXISTS runs_live_slot ON runs(slot) WHERE status != 'superseded';\n", "")],
        ["tests/test_store.py::test_live_slot_is_unique[runs]"],
    ),
    M(
        "store: stale `running` training runs not reset at start",
        "store.py",
        [
            (
                "n = c.execute(\"UPDATE runs SET status='pending' WHERE status='running'\").rowcount",
                "n = 0",
            )
        ],
        ["tests/test_store.py::test_stale_running_rows_are_reset_under_the_lock"],
    ),
    M(
        "status --check: saved models not compared with their manifests",
        "store.py",
        [("problems += [p for r in kept if (p := self._model_problem(r))]", "pass")],
        [T_DAMAGED + "[byte-flip-full-model]"],
    ),
    M(
        "manifest: the weights files left out",
        "study_files.py",
        [("        if p.is_file():\n", '        if p.is_file() and p.suffix != ".safetensors":\n')],
        [T_DAMAGED + "[byte-flip-lora-adapter]"],
    ),
    M(
        "status --check: a cell's predictions not counted against its n",
        "store.py",
        [("elif len(json.loads(rows)) != n:", "elif False:")],
        [T_DAMAGED + "[one-prediction-deleted]"],
    ),
    M(
        "status --check: a done cell without a score passes",
        "store.py",
        [
            (
                "if not isinstance(score, (int, float)) or not _is_json(metrics, dict):",
                "if not _is_json(metrics, dict):",
            )
        ],
        [T_DAMAGED + "[score-lost]"],
    ),
    M(
        "status --check: exit 0 whatever problems it prints",
        "cli_study.py",
        [
            (
                '        print(f"check: PROBLEM: {problem}")\n    if c["problems"]:\n        raise typer.Exit(1)\n',
                '        print(f"check: PROBLEM: {problem}")\n',
            )
        ],
        [T_DAMAGED + "[score-lost]"],
    ),
    M(
        "atomic writer replaced by an in-place write",
        "files.py",
        [
            (
                'fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")',
                "fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), str(path)",
            )
        ],
        ["tests/test_files.py::test_an_atomic_write_that_fails_leaves_the_old_file_as_it_was[json-rename]"],
    ),
    # ---------------------------------------------------------------- intervals (ftgen.stats)
    M(
        "accuracy interval bootstrapped, not exact binomial",
        "stats.py",
        [
            (
                'if metric == "accuracy":\n        return binomial_interval(',
                'if metric == "":\n        return binomial_interval(',
            )
        ],
        ["tests/test_evaluate.py::test_outputs_are_written_one_line_per_record"],
    ),
    M(
        "a 90% percentile interval printed as 95%",
        "stats.py",
        [("np.quantile(replicates, [alpha / 2, 1 - alpha / 2])", "np.quantile(replicates, [alpha, 1 - alpha])")],
        ["tests/test_stats.py::test_bootstrap_interval_matches_the_normal_approximation_on_large_n"],
    ),
    M(
        "a group mean is its first set's value",
        "stats.py",
        [("per_seed = np.mean([st.point() for st in strata], axis=0)", "per_seed = strata[0].point()")],
        ["tests/test_stats.py::test_group_score_is_the_mean_of_set_scores_with_a_stratified_interval"],
    ),
    M(
        "paired records matched by position, not by id",
        "stats.py",
        [("return r.values[[position[rid] for rid in order]]", "return r.values[: len(order)]")],
        ["tests/test_stats.py::test_records_are_matched_by_id_and_the_unmatched_are_dropped_and_counted"],
    ),
    # ---------------------------------------------------------------- compute dtype
    M(
        "auto dtype: bf16 only with both AVX512_BF16 and AMX",
        "models.py",
        [
            (
                'return "avx512_bf16" in flags or "amx_bf16" in flags',
                'return "avx512_bf16" in flags and "amx_bf16" in flags',
            )
        ],
        ["tests/test_models.py::test_auto_dtype_on_a_cpu_follows_its_bf16_flags[avx512-bf16]"],
    ),
    M(
        "auto dtype on a GPU: fp16 even where bf16 runs",
        "models.py",
        [("return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16", "return torch.float16")],
        ["tests/test_models.py::test_auto_dtype_on_a_gpu_follows_its_bf16_support[bf16]"],
    ),
]


# ---------------------------------------------------------------- running


@dataclass
class Outcome:
    mutation: Mutation
    status: str  # caught, SURVIVED, NOT FOUND, ERROR
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "caught"


def locate(m: Mutation) -> str | None:
    """None if every edit's text is in the file exactly once; else what is wrong."""
    path = PACKAGE / m.file
    if not path.is_file():
        return f"no file src/ftgen/{m.file}"
    text = path.read_text()
    for old, _ in m.edits:
        n = text.count(old)
        if n != 1:
            return f"{'not found' if n == 0 else f'found {n} times'}: {old.strip()[:70]!r}"
    return None


def copy_source(dest: Path) -> Path:
    """A copy of src/ (no bytecode) under dest; returns the copy's src dir."""
    src = dest / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


def apply(m: Mutation, src: Path) -> None:
    path = src / "ftgen" / m.file
    text = path.read_text()
    for old, new in m.edits:
        text = text.replace(old, new, 1)
    path.write_text(text)


def env_for(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")  # two mutants run at once on a small CPU
    env["FTGEN_QUIET"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imports_the_copy(src: Path, env: dict[str, str]) -> bool:
    """The tests will import ftgen from the copy, not from an installed tree."""
    code = "import ftgen, sys; sys.stdout.write(ftgen.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    return out.returncode == 0 and Path(out.stdout).resolve().is_relative_to(src.resolve())


def run_tests(tests: list[str], src: Path, first_failure: bool) -> tuple[int, str]:
    env = env_for(src)
    if not imports_the_copy(src, env):
        return -1, "the tests would not import ftgen from the mutated copy (check PYTHONPATH / the install)"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--no-header"]
    cmd += ["-x"] if first_failure else []
    try:
        proc = subprocess.run(cmd + tests, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -2, f"timed out after {TIMEOUT_S}s"
    return proc.returncode, proc.stdout + proc.stderr


def failed_tests(output: str) -> list[str]:
    """Node ids of the failed tests (or tests whose fixture failed) in pytest's short summary."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+?)(?: - |$)", output, flags=re.M)


def run_mutation(m: Mutation) -> Outcome:
    t0 = time.perf_counter()
    problem = locate(m)
    if problem:
        return Outcome(m, "NOT FOUND", problem, 0.0)
    with tempfile.TemporaryDirectory(prefix="ftgen-mutant-") as tmp:
        src = copy_source(Path(tmp))
        apply(m, src)
        code, output = run_tests(list(m.tests), src, first_failure=True)
    seconds = time.perf_counter() - t0
    if code == 0:
        return Outcome(m, "SURVIVED", "all its tests passed", seconds)
    if code == 1:
        caught = failed_tests(output)
        return Outcome(m, "caught", caught[0] if caught else "(a test failed)", seconds)
    tail = " | ".join(line for line in output.strip().splitlines()[-3:])
    return Outcome(m, "ERROR", f"exit {code}: {tail[:300]}", seconds)


def baseline(mutations: list[Mutation]) -> tuple[bool, str, float]:
    """Every listed test passes on the unmutated source (else a failing test would 'catch' every mutation)."""
    t0 = time.perf_counter()
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="ftgen-baseline-") as tmp:
        code, output = run_tests(tests, copy_source(Path(tmp)), first_failure=False)
    if code == 0:
        return True, f"{len(tests)} tests pass on the unmutated source", time.perf_counter() - t0
    failed = failed_tests(output) or [output.strip().splitlines()[-1] if output.strip() else f"exit {code}"]
    return False, "failing without a mutation: " + ", ".join(failed), time.perf_counter() - t0


# rough seconds a test file's fixtures take (a study, model loads); the rest is pytest's start-up
SETUP_COST = {"test_study_facts.py": 30, "test_references.py": 15, "test_evaluate.py": 10, "test_train.py": 10}


def cost(m: Mutation) -> int:
    return max(SETUP_COST.get(t.split("::")[0].rsplit("/", 1)[-1], 0) for t in m.tests)


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("#", "mutation", "file", "result", "caught by / why", "s")]
    for i, o in enumerate(outcomes, 1):
        shown = o.detail.removeprefix("tests/")
        rows.append((str(i), o.mutation.name, o.mutation.file, o.status, shown, f"{o.seconds:.0f}"))
    widths = [min(max(len(r[c]) for r in rows), 80) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell[:80].ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", help="only mutations whose name contains this text (case-insensitive)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the tests without mutations")
    args = parser.parse_args(argv)

    mutations = [m for m in MUTATIONS if not args.select or args.select.lower() in m.name.lower()]
    if not mutations:
        print(f"no mutation matches {args.select!r}", file=sys.stderr)
        return 2
    if args.list:
        for i, m in enumerate(mutations, 1):
            print(f"{i:2}. {m.name} [{m.file}]\n      " + "\n      ".join(m.tests))
        return 0
    t0 = time.perf_counter()
    print(f"mutation check: {len(mutations)} mutations of src/ftgen, {args.jobs} at a time", flush=True)
    ok_baseline = True
    if not args.no_baseline:
        ok_baseline, message, seconds = baseline(mutations)
        print(f"baseline: {'ok' if ok_baseline else 'BASELINE FAILS'}: {message} ({seconds:.0f}s)", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # the slowest first, so that the last ones to finish are short
        futures = {m: pool.submit(run_mutation, m) for m in sorted(mutations, key=cost, reverse=True)}
        for done in as_completed(futures.values()):
            o = done.result()
            print(f"  {o.status:9} {o.mutation.name} ({o.seconds:.0f}s)", flush=True)
        outcomes = [futures[m].result() for m in mutations]
    print()
    print_table(outcomes)
    bad = [o for o in outcomes if not o.ok]
    total = time.perf_counter() - t0
    print(
        f"\n{len(outcomes) - len(bad)} of {len(outcomes)} mutations caught"
        + (f"; {len(bad)} not: " + ", ".join(o.status for o in bad) if bad else "")
        + f" ({total:.0f}s)"
    )
    return 0 if ok_baseline and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
