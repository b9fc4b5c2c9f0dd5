"""Preference accuracy views, the "longer answer wins" rule and the length strata, on hand-made pairs whose answers
are known (no model: the scores are written down)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feedback_pipeline.evaluation.preference_eval import (
    PairScores,
    compare_scores,
    length_strata,
    stratified_accuracies,
)

# Pairs 0-1: the preferred answer is the longer one; 2-4: it is the shorter one; 5: same length.
CHOSEN_LEN = [10, 12, 3, 4, 2, 6]
REJECTED_LEN = [5, 4, 8, 9, 7, 6]


def test_length_strata_masks():
    s = length_strata(CHOSEN_LEN, REJECTED_LEN)
    assert s["longer"].tolist() == [True, True, False, False, False, False]
    assert s["shorter"].tolist() == [False, False, True, True, True, False]
    assert s["tie"].tolist() == [False] * 5 + [True]
    with pytest.raises(ValueError):
        length_strata([1, 2], [1])


def test_a_view_that_only_likes_length_matches_the_rule_and_fails_the_shorter_stratum():
    always_longer = [1.0, 1.0, 0.0, 0.0, 0.0, 0.5]  # ranks the longer answer first; tie on equal length
    m = stratified_accuracies({"view": always_longer}, CHOSEN_LEN, REJECTED_LEN,
                              prefers_longer={"view": [1, 1, -1, -1, -1, 0]}, bootstrap=200)
    assert m["n_pairs"] == 6 and (m["n_longer"], m["n_shorter"], m["n_tie"]) == (2, 3, 1)
    for suffix, expected in (("", 2.5 / 6), ("_longer", 1.0), ("_shorter", 0.0), ("_tie", 0.5)):
        assert m[f"view{suffix}"] == pytest.approx(expected)
        assert m[f"length_rule_accuracy{suffix}"] == pytest.approx(expected)
    # Constant within a stratum: the interval collapses onto the value.
    assert m["view_shorter_ci_low"] == m["view_shorter_ci_high"] == 0.0
    assert m["view_longer_ci_low"] == m["view_longer_ci_high"] == 1.0
    assert m["view_prefers_longer"] == 1.0
    assert m["view_ci_low"] <= m["view"] <= m["view_ci_high"]


def test_a_view_that_is_right_everywhere_wins_the_shorter_stratum():
    m = stratified_accuracies({"view": [1.0] * 6}, CHOSEN_LEN, REJECTED_LEN,
                              prefers_longer={"view": [1, 1, 1, 1, 1, 1]}, bootstrap=200)
    assert m["view"] == m["view_shorter"] == m["view_shorter_ci_low"] == 1.0
    assert m["length_rule_accuracy"] == pytest.approx(2.5 / 6)
    assert m["view_prefers_longer"] == pytest.approx(2 / 5)  # chosen is the longer answer in 2 of 5 unequal pairs


def test_differences_are_paired_and_empty_strata_are_nan():
    a = [1.0, 0.0, 1.0, 1.0]
    m = stratified_accuracies({"a": a, "b": a}, [5, 5, 1, 1], [1, 1, 5, 5], differences={"d": ("a", "b")},
                              bootstrap=300)
    assert m["d"] == m["d_ci_low"] == m["d_ci_high"] == 0.0  # identical views: every paired resample gives 0
    assert m["n_tie"] == 0 and math.isnan(m["a_tie"]) and math.isnan(m["a_tie_ci_low"])
    assert m["a_longer"] == 0.5 and m["a_longer_ci_low"] <= 0.5 <= m["a_longer_ci_high"]
    no_ci = stratified_accuracies({"a": a}, [5, 5, 1, 1], [1, 1, 5, 5], bootstrap=0)
    assert math.isnan(no_ci["a_ci_low"]) and no_ci["a"] == 0.75


def _scores(chosen_sum, rejected_sum, chosen_tokens, rejected_tokens) -> PairScores:
    return PairScores(*(np.asarray(v, dtype=float) for v in (chosen_sum, rejected_sum, chosen_tokens, rejected_tokens)))


def test_compare_scores_raw_and_length_normalised_views_differ_as_defined():
    # Pair 0: chosen 10 tokens, rejected 2. Pair 1: chosen 2 tokens, rejected 10.
    tokens_c, tokens_r = [10, 2], [2, 10]
    base = _scores([-20.0, -4.0], [-4.0, -20.0], tokens_c, tokens_r)  # -2 nats/token everywhere
    # Candidate: chosen gains +2 nats in total (0.2/token) in pair 0, rejected +1 (0.5/token): raw reward prefers
    # chosen, per-token reward prefers rejected. Pair 1: chosen +1 (0.5/token), rejected +2 (0.2/token).
    cand = _scores([-18.0, -3.0], [-3.0, -18.0], tokens_c, tokens_r)
    m = compare_scores(base, cand, tokens_c, tokens_r, bootstrap=100)
    assert m["implicit_accuracy_longer"] == 1.0 and m["implicit_norm_accuracy_longer"] == 0.0
    assert m["implicit_accuracy_shorter"] == 0.0 and m["implicit_norm_accuracy_shorter"] == 1.0
    assert m["implicit_accuracy_prefers_longer"] == 1.0 and m["implicit_norm_accuracy_prefers_longer"] == 0.0
    assert m["implicit_margin"] == pytest.approx(0.0)  # +1 and -1
    assert m["base_accuracy"] == 0.5  # equal per-token log-probs: ties count half
    assert m["base_sum_accuracy_longer"] == 0.0 and m["base_sum_accuracy_shorter"] == 1.0  # raw sums like short
    # The candidate's own per-token log-probs: pair 0 chosen -1.8 vs rejected -1.5, pair 1 chosen -1.5 vs -1.8.
    assert m["candidate_accuracy_longer"] == 0.0 and m["candidate_accuracy_shorter"] == 1.0
    assert m["accuracy_difference_longer"] == -0.5 and m["accuracy_difference_shorter"] == 0.5
    assert m["length_rule_accuracy"] == 0.5 and m["n_pairs"] == 2
    # Per-token margins: base 0 and 0; candidate -0.3 and +0.3; their paired difference is the same here.
    assert m["candidate_logp_margin"] == pytest.approx(0.0) and m["logp_margin_difference"] == pytest.approx(0.0)
    shifted = compare_scores(base, _scores([-18.0, -3.0], [-5.0, -21.0], tokens_c, tokens_r), tokens_c, tokens_r,
                             bootstrap=100)
    # chosen -1.8 vs rejected -2.5 (+0.7), chosen -1.5 vs rejected -2.1 (+0.6): mean +0.65 over a base margin of 0
    assert shifted["logp_margin_difference"] == pytest.approx(0.65)
    assert 0.6 - 1e-9 <= shifted["logp_margin_difference_ci_low"] <= shifted["logp_margin_difference_ci_high"] <= 0.7 + 1e-9
    with pytest.raises(ValueError, match="same pairs"):
        compare_scores(base, _scores([-1.0, -1.0], [-1.0, -1.0], [1, 1], [1, 1]), tokens_c, tokens_r)


def test_one_group_per_pair_is_the_plain_pair_bootstrap():
    rng = np.random.default_rng(3)
    wins = rng.integers(0, 2, size=40).astype(float)
    c, r = rng.integers(1, 50, size=40), rng.integers(1, 50, size=40)
    plain = stratified_accuracies({"v": wins}, c, r, bootstrap=500)
    grouped = stratified_accuracies({"v": wins}, c, r, bootstrap=500, groups=[f"p{i}" for i in range(40)])
    for key, value in plain.items():
        assert grouped[key] == pytest.approx(value, nan_ok=True), key
    assert grouped["n_groups"] == 40


def test_pairs_of_one_prompt_are_resampled_together_and_widen_the_interval():
    # 12 prompts; each prompt's 6 pairs share one verdict (as pairs sharing answers tend to). Resampled one by one,
    # the 72 pairs look like 72 independent trials; resampled by prompt they are 12.
    verdicts = np.repeat([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1], 6).astype(float)
    prompts = np.repeat([f"prompt {i}" for i in range(12)], 6)
    c, r = np.full(72, 9), np.full(72, 3)
    by_pair = stratified_accuracies({"v": verdicts}, c, r, bootstrap=2000)
    by_prompt = stratified_accuracies({"v": verdicts}, c, r, bootstrap=2000, groups=prompts.tolist())
    assert by_prompt["v"] == by_pair["v"] == pytest.approx(8 / 12)
    width = lambda m: m["v_ci_high"] - m["v_ci_low"]  # noqa: E731
    assert width(by_prompt) > 1.8 * width(by_pair)  # ~sqrt(6) = 2.4x in theory
    assert by_prompt["n_groups"] == 12 and by_prompt["n_groups_longer"] == 12 and by_prompt["n_groups_tie"] == 0
    with pytest.raises(ValueError, match="group ids"):
        stratified_accuracies({"v": verdicts}, c, r, groups=["a"])


def test_compare_scores_passes_the_groups_to_every_interval():
    tokens = [5.0] * 8
    base = _scores([-10.0] * 8, [-10.0] * 8, tokens, tokens)
    cand = _scores([-9.0, -9.0, -9.0, -9.0, -11.0, -11.0, -11.0, -11.0], [-10.0] * 8, tokens, tokens)
    two_prompts = ["a"] * 4 + ["b"] * 4
    m = compare_scores(base, cand, tokens, [4.0] * 8, bootstrap=400, groups=two_prompts)
    assert m["implicit_accuracy"] == 0.5 and m["n_groups"] == 2
    # Two groups: a resample holds a, b, or both: the accuracy's interval spans 0 .. 1, the margin's -0.2 .. +0.2.
    assert m["implicit_accuracy_ci_low"] == 0.0 and m["implicit_accuracy_ci_high"] == 1.0
    assert m["logp_margin_difference_ci_low"] == pytest.approx(-0.2)
    assert m["logp_margin_difference_ci_high"] == pytest.approx(0.2)
