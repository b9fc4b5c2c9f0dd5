"""The promotion gate's statistics and policy, on simulated scores whose truth is known."""

import numpy as np
import pytest
from scipy import stats

from feedback_pipeline.evaluation.gate import (Evidence, GatePolicy, Guardrail, decide, length_controlled_win_rate,
                                               paired_interval, segment_evidence, simulate_gate, win_outcomes)

POLICY = GatePolicy(primary_metric="score")


def test_paired_interval_matches_scipy_and_the_mean():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 80)
    b = a + rng.normal(0.3, 0.5, 80)
    iv = paired_interval(a, b, seed=5)
    assert iv.diff == pytest.approx(float(np.mean(b - a)))
    assert iv.ci_low < iv.diff < iv.ci_high
    # same resampling, computed directly: the interval is scipy's percentile bootstrap of the paired differences
    ref = stats.bootstrap((b - a,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(5))
    assert (iv.ci_low, iv.ci_high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


def test_paired_interval_rejects_unpaired_or_non_finite_scores():
    with pytest.raises(ValueError, match="same length"):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_interval([1.0, float("nan")], [1.0, 2.0])


def test_grouped_interval_resamples_whole_prompts():
    rng = np.random.default_rng(4)
    # 15 prompts x 8 pairs; the challenger's gain is shared by a prompt's pairs (plus a little per-pair noise)
    gain = np.repeat(rng.normal(0.05, 0.3, 15), 8) + rng.normal(0, 0.02, 120)
    a = rng.normal(0, 1, 120)
    prompts = np.repeat([f"prompt {i}" for i in range(15)], 8).tolist()
    by_pair, by_prompt = paired_interval(a, a + gain, seed=1), paired_interval(a, a + gain, seed=1, groups=prompts)
    assert by_prompt.diff == by_pair.diff == pytest.approx(gain.mean()) and by_prompt.n == 120
    assert by_prompt.ci_low < by_prompt.diff < by_prompt.ci_high
    assert (by_prompt.ci_high - by_prompt.ci_low) > 2 * (by_pair.ci_high - by_pair.ci_low)  # ~sqrt(8) in theory
    # The same thing by hand: scipy's bootstrap of the ratio sum / count over the 15 prompts, paired.
    sums, counts = gain.reshape(15, 8).sum(axis=1), np.full(15, 8.0)
    ref = stats.bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis), paired=True,
                          n_resamples=2000, method="percentile", rng=np.random.default_rng(1))
    assert (by_prompt.ci_low, by_prompt.ci_high) == pytest.approx((ref.confidence_interval.low,
                                                                    ref.confidence_interval.high))
    with pytest.raises(ValueError, match="one per item"):
        paired_interval(a, a, groups=prompts[:3])


def test_identical_models_give_a_zero_width_interval_and_are_kept():
    scores = np.linspace(0, 1, 50)
    iv = paired_interval(scores, scores.copy())
    assert (iv.diff, iv.ci_low, iv.ci_high) == (0.0, 0.0, 0.0)
    assert decide(POLICY, iv).decision == "keep"


def test_a_a_candidates_are_promoted_at_most_5_percent_of_the_time():
    sim = simulate_gate(effect=0.0, n=100, trials=400, policy=POLICY, seed=11)
    assert sim.promote_rate <= 0.05, sim


def test_worse_candidates_are_never_promoted_and_better_ones_are():
    worse = simulate_gate(effect=-0.3, n=100, trials=100, policy=POLICY, seed=12)
    better = simulate_gate(effect=0.5, n=100, trials=100, policy=POLICY, seed=13)
    assert worse.promotions == 0
    assert better.promote_rate >= 0.95


def test_non_inferiority_margin_promotes_an_equal_candidate():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    b = a + rng.normal(0, 0.1, 400)
    iv = paired_interval(a, b)
    assert decide(POLICY, iv).decision == "keep"
    assert decide(GatePolicy("score", margin=-0.05), iv).decision == "promote"


def _clearly_better():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 200)
    return paired_interval(a, a + rng.normal(0.5, 0.3, 200))


def test_a_breached_guardrail_keeps_the_champion():
    verbose = Guardrail("answer_words", champion=40.0, challenger=80.0, worse_if="either", tolerance=0.5, relative=True)
    refusals = Guardrail("refusal_rate", champion=0.02, challenger=0.03, worse_if="higher", tolerance=0.05)
    assert decide(POLICY, _clearly_better(), [refusals]).decision == "promote"
    result = decide(POLICY, _clearly_better(), [refusals, verbose])
    assert result.decision == "keep"
    assert any("answer_words" in r for r in result.reasons)
    assert Guardrail("x", 1.0, float("nan"), "higher", 1.0).breached()


def test_a_regressing_segment_sends_the_decision_to_a_person():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 60)
    segments = {"intent=billing": (base, base - 0.4 + rng.normal(0, 0.1, 60)),
                "intent=tiny": (base[:5], base[:5] - 1.0)}
    rows = segment_evidence(segments, POLICY)
    by_name = {r.name: r for r in rows}
    assert by_name["segment intent=billing"].passed is False
    assert by_name["segment intent=tiny"].passed is None  # too small to judge
    result = decide(POLICY, _clearly_better(), segments=rows)
    assert result.decision == "needs_review"
    assert "regresses" in " ".join(result.reasons)


def test_policy_can_require_a_person_for_every_promotion():
    result = decide(GatePolicy("score", require_review=True), _clearly_better())
    assert result.decision == "needs_review"
    md = result.markdown()
    assert "needs_review" in md and "| score | primary |" in md


def test_win_outcomes_count_ties_half():
    assert win_outcomes([1, 2, 3], [2, 2, 1]).tolist() == [1.0, 0.5, 0.0]


def test_length_controlled_win_rate_discounts_a_judge_that_only_likes_length():
    rng = np.random.default_rng(4)
    n = 300
    champion_len = rng.integers(20, 200, n).astype(float)
    challenger_len = champion_len + rng.normal(40, 60, n)  # the challenger is usually longer
    judge_champion, judge_challenger = champion_len, challenger_len  # the judge scores length, nothing else
    result = length_controlled_win_rate(judge_champion, judge_challenger, champion_len, challenger_len, seed=1)
    assert result["win_rate"] > 0.65
    assert result["lc_win_rate"] < result["win_rate"] - 0.1
    # a judge that ignores length: length control changes little
    quality = rng.normal(0.3, 1, n)
    fair = length_controlled_win_rate(np.zeros(n), quality, champion_len, challenger_len, seed=1)
    assert abs(fair["lc_win_rate"] - fair["win_rate"]) < 0.06
    assert fair["lc_win_rate_ci_low"] < fair["lc_win_rate"] < fair["lc_win_rate_ci_high"]


def test_evidence_rows_are_serialisable():
    result = decide(POLICY, _clearly_better(), secondary=[Evidence("nll", "secondary", 2.0, 1.9, -0.1, -0.2, 0.0, 10, None)])
    d = result.to_dict()
    assert d["decision"] == "promote" and d["evidence"][1]["name"] == "nll"


def test_too_few_examples_decide_nothing_even_when_every_one_wins():
    iv = paired_interval(np.zeros(4), np.ones(4))
    assert (iv.ci_low, iv.ci_high) == (1.0, 1.0)  # zero width: the bootstrap cannot see the uncertainty
    result = decide(POLICY, iv)
    assert result.decision == "keep" and "fewer than the 20" in result.reasons[0]
    assert decide(GatePolicy("score", min_examples=4), iv).decision == "promote"
