"""The paper's claims checked on constructed studies whose answer is known: each verdict (confirmed, refuted,
inconclusive, not covered by this study) is reached, and the evidence equals ftgen.stats computed directly."""

from __future__ import annotations

import random

import pytest
from report_helpers import SyntheticStudy, generation_predictions, with_accuracy

from ftgen import stats
from ftgen.report import StudyView, Table, check_claims, write_report
from ftgen.report.claims import VERDICTS

CONFIRMED, REFUTED, INCONCLUSIVE, NOT_COVERED = VERDICTS
N = 100
SENT = ["positive", "negative"]
GOLD = [f"what did person {i} want to do after the long day at work" for i in range(N)]


def questions(kept: int, seed: int = 0) -> list[dict]:
    """Generated questions keeping the first `kept` of the gold's 12 words (a little noise per record)."""
    rng = random.Random(seed)
    outs = [" ".join(g.split()[: max(1, kept + rng.choice((-1, 0, 1)))]) for g in GOLD]
    return generation_predictions(GOLD, outs)


def label_words(share: float) -> list[dict]:
    """Outputs that are a bare label word for `share` of the records, a question otherwise."""
    outs = ["Positive." if i < share * N else " ".join(g.split()[:6]) for i, g in enumerate(GOLD)]
    return generation_predictions(GOLD, outs)


def generation_study(out, fticl_cross: int, *, drift_ratio: float = 0.8, seeds=(0, 1), fticl_done=True) -> None:
    """Trained on question (generation), FT and FTICL over `seeds`. Cross-task (sentiment) accuracy: base 50,
    FT 60, FTICL 60 + `fticl_cross`. FT 0-shot writes better questions than the base with 1 example in-domain,
    worse ones out-of-domain; k-shot never changes a fine-tuned model's outputs. `fticl_done=False`: the FTICL
    runs and their cells are not run yet (an unfinished study)."""
    s = SyntheticStudy()
    cells = [("question", "socialqa", (0, 1)), ("question", "tweetqa", (0, 1)), ("sentiment", "amazon", (0, 2))]
    cells += [("sentiment", "sst2", (0, 2))]
    runs = [(None, "base", 0)]
    for seed in seeds:
        for method, ratio in (("ft", 1.0), ("fticl", drift_ratio)):
            drift = {"mean_abs_change": 1e-4 * ratio * (1 + seed / 20)}
            done = fticl_done or method == "ft"
            run = s.run(f"r{method}{seed}", "question", 64, method, seed=seed, drift=drift, done=done)
            runs.append((run, method, seed))
    for run, method, seed in runs:
        for task, test_set, shots in cells:
            for k in shots:
                if task == "sentiment":
                    correct = {"base": 50, "ft": 60, "fticl": 60 + fticl_cross}[method] + (
                        10 if run is None and k else 0
                    )
                    p = with_accuracy(SENT, N, correct, seed=hash((test_set, seed)) % 1000)
                elif test_set == "socialqa":
                    p = questions({"base": 3 + 2 * k, "ft": 11, "fticl": 11}[method], seed)
                else:
                    p = questions({"base": 9, "ft": 5, "fticl": 5}[method], seed)
                s.cell(run, task, test_set, k, p if fticl_done or method != "fticl" else None)
    s.write(out)


def classification_study(out, *, fticl_gain: int = 0, label_share: float = 0.8, sizes=(32,)) -> None:
    """Trained on sentiment, FT and FTICL (FTICL = FT + `fticl_gain` points everywhere). Out-of-domain (sst2): base
    50, FT 70. On question generation the tuned models answer with a bare label word for `label_share` of the
    records, the base never. A larger train size is worse on every sentiment set."""
    s = SyntheticStudy()
    runs = [(None, "base", 0)]
    for size in sizes:
        for method in ("ft", "fticl"):
            runs.append((s.run(f"r{method}{size}", "sentiment", size, method), method, size))
    for run, method, size in runs:
        for test_set, shots in (("amazon", (0, 2)), ("sst2", (0, 2))):
            for k in shots:
                correct = 50 if run is None else 70 + (fticl_gain if method == "fticl" else 0) - (size - 32)
                s.cell(run, "sentiment", test_set, k, with_accuracy(SENT, N, correct, seed=k))
        for k in (0, 1):
            s.cell(run, "question", "socialqa", k, questions(6) if run is None else label_words(label_share))
    s.write(out)


def verdicts(out) -> dict[str, str]:
    return {c.number: c.verdict for c in check_claims(Table(StudyView(out)))}


@pytest.mark.parametrize(
    ("effect", "verdict"), [(30, CONFIRMED), (-30, REFUTED), (0, INCONCLUSIVE)], ids=["better", "worse", "same"]
)
def test_ftic_vs_ft_cross_task_for_generation_tasks(tmp_path, effect, verdict):
    generation_study(tmp_path, effect)
    got = verdicts(tmp_path)
    assert got["11"] == verdict
    assert got["10"] == INCONCLUSIVE  # FTICL = FT out-of-domain: a difference of exactly 0
    assert (got["1"], got["2"], got["4"]) == (CONFIRMED, CONFIRMED, CONFIRMED)
    assert (got["3"], got["5"], got["7"], got["13"]) == (NOT_COVERED,) * 4  # one size, no classification training
    assert got["12"] == CONFIRMED  # FTICL's mean |Δw| is 0.8 of FT's in each seed


def test_claim_evidence_equals_stats_computed_directly(tmp_path):
    generation_study(tmp_path, 30)
    t = Table(StudyView(tmp_path))
    claim = next(c for c in check_claims(t) if c.number == "11")
    cells, compared = [], []
    for s in t.settings:
        for p in t.pairs:
            for test in t.test_sets:
                if test.task == "sentiment":
                    a, b = t.cell(p.fticl, test, s), t.cell(p.ft, test, s)
                    cells.append(list(zip(a.records, b.records, strict=True)))
                    compared += [a, b]
    flagged = sum(1 for c in compared if c.distrust)  # FT's 60% is within its interval of the 50% majority rate
    note = f"; {flagged} of the {len(compared)} cells compared are flagged to distrust (†)" if flagged else ""
    assert claim.evidence == stats.format_headline(stats.headline("FTICL − FT, cross-task", cells)) + note
    assert "interval lies above 0" in claim.rule and claim.text.startswith("for generation tasks")


def test_an_unfinished_study_leaves_its_claims_open_not_uncovered(tmp_path):
    generation_study(tmp_path, 30, fticl_done=False)  # FT and base done, no FTICL run trained yet
    claims = {c.number: c for c in check_claims(Table(StudyView(tmp_path)))}
    for number in ("10", "11", "12"):  # FTICL vs FT: the grid holds them, no cell is complete
        assert claims[number].verdict == INCONCLUSIVE, claims[number]
    assert claims["11"].evidence.startswith("none of its 4 cells is complete")  # 2 cross-task sets x 2 settings
    assert claims["12"].evidence.startswith("the matched runs are not all trained yet")
    assert (claims["1"].verdict, claims["4"].verdict) == (CONFIRMED, CONFIRMED)  # FT vs base: complete
    assert all(claims[n].verdict == NOT_COVERED for n in ("3", "5", "7", "13"))  # not in this grid at all
    assert all(c.evidence.endswith("(the study is not finished)") for c in claims.values())


def test_drift_claim_refuted_and_inconclusive(tmp_path):
    generation_study(tmp_path / "a", 0, drift_ratio=1.5)
    assert verdicts(tmp_path / "a")["12"] == REFUTED
    generation_study(tmp_path / "b", 0, drift_ratio=0.8, seeds=(0,))
    claim = next(c for c in check_claims(Table(StudyView(tmp_path / "b"))) if c.number == "12")
    assert claim.verdict == INCONCLUSIVE and claim.evidence == "FTICL / FT = 0.800 from 1 matched pair"


def test_classification_claims(tmp_path):
    classification_study(tmp_path / "same")
    got = verdicts(tmp_path / "same")
    assert (got["5"], got["7"], got["13"]) == (CONFIRMED, CONFIRMED, CONFIRMED)
    assert (got["1"], got["4"], got["10"], got["11"]) == (NOT_COVERED,) * 4  # sentiment only, no generation run
    classification_study(tmp_path / "helps", fticl_gain=20, label_share=0.0)
    got = verdicts(tmp_path / "helps")
    assert (got["13"], got["7"]) == (REFUTED, REFUTED)  # FTICL helps; tuned models hardly ever emit a label
    classification_study(tmp_path / "some", label_share=0.04)
    assert verdicts(tmp_path / "some")["7"] in (CONFIRMED, INCONCLUSIVE)


def test_more_data_that_is_worse_confirms_claim_3(tmp_path):
    classification_study(tmp_path, sizes=(32, 52))  # the larger size is 20 points worse on every sentiment cell
    assert verdicts(tmp_path)["3"] == CONFIRMED


def test_the_report_lists_every_claim_with_its_rule(tmp_path):
    generation_study(tmp_path / "out", 30)
    r = write_report(tmp_path / "out", tmp_path / "report", figures=False)
    md = (tmp_path / "report" / "claims.md").read_text()
    for claim in r["claims"]:
        assert f"| {claim.number} | {claim.text} | {claim.verdict} |".replace("|Δw|", "\\|Δw\\|") in md
        assert claim.rule.replace("|", "\\|") in md
    assert [c.number for c in r["claims"]] == ["1", "2", "3", "4", "5", "7", "10", "11", "12", "13"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "id='claims'" in page and "verdict-confirmed" in page


def test_a_verdict_says_how_many_of_the_cells_it_compared_are_flagged_to_distrust(tmp_path):
    """The base scores 50% on balanced sentiment sets (the majority rate: flagged), FT 70%: claim 5 compares FT's
    out-of-domain cells with the base's and says how many of those are flagged; a claim on sound cells says
    nothing."""
    classification_study(tmp_path / "cls")
    t = Table(StudyView(tmp_path / "cls"))
    ft = [m for m in t.trained if not m.fticl]
    mine = [t.cell(m, ts, s) for m in ft for s in t.settings for ts in t.group_sets(m, s, "OOD")]
    compared = mine + [t.base_cell(c) for c in mine]
    flagged = [c for c in compared if c.distrust]
    assert len(compared) == 4 and flagged and all(c.model.is_base for c in flagged)
    claim_5 = next(c for c in check_claims(t) if c.number == "5")
    note = f"; {len(flagged)} of the {len(compared)} cells compared are flagged to distrust (†)"
    assert claim_5.evidence.endswith(note)
    generation_study(tmp_path / "gen", 30)
    claims = {c.number: c for c in check_claims(Table(StudyView(tmp_path / "gen")))}
    assert "flagged" not in claims["4"].evidence and "flagged" not in claims["10"].evidence
