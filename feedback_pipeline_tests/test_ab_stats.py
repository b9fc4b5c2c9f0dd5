"""A/B statistics against hand-computed formulas and textbook values (the module itself calls scipy/statsmodels)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from feedback_pipeline.evaluation.ab_stats import (
    CONTINUE, DEPLOY, KEEP, AbPolicy, Comparison, arm_table, compare_arms, daily_counts, decide, evaluate,
    liked_column, msprt_log_lr, msprt_pvalues, power_check, segment_table, srm_check)

DAY0 = pd.Timestamp("2026-03-01", tz="UTC")


def outcomes(rows: list[tuple]) -> pd.DataFrame:
    """rows of (arm, unit, day offset, thumb, intent)."""
    return pd.DataFrame([{"response_id": f"r{i}", "arm": arm, "unit": unit, "served_at": DAY0 + pd.Timedelta(days=day),
                          "rating_thumb": thumb, "intent": intent, "project": "p"}
                         for i, (arm, unit, day, thumb, intent) in enumerate(rows)])


def counts_frame(arm_counts: dict[str, tuple[int, int]], days: int = 1) -> pd.DataFrame:
    """A frame with exactly (liked, rated) per arm, all on day 0, plus one unrated response per arm."""
    rows = []
    for arm, (liked, rated) in arm_counts.items():
        rows += [(arm, f"{arm}{i}", 0, "up" if i < liked else "down", "x") for i in range(rated)]
        rows.append((arm, f"{arm}-silent", 0, None, "x"))
    return outcomes(rows)


def test_liked_column_reads_the_stores_thumbs():
    got = liked_column(pd.Series([1, -1, 0, None, 2], dtype="Int64"))
    assert got.iloc[:2].tolist() == [1.0, 0.0] and got.iloc[2:].isna().all()  # neutral and NULL are not rated
    assert liked_column(pd.Series(["up", "DOWN", None, "meh"])).iloc[:2].tolist() == [1.0, 0.0]


def test_arm_table_counts_and_wilson_intervals():
    table = arm_table(counts_frame({"a": (8, 10), "b": (0, 0)}), ["a", "b", "c"]).set_index("arm")
    assert table.loc["a", ["units", "responses", "rated", "liked"]].tolist() == [11, 11, 10, 8]
    # Wilson 95% for 8/10, by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, p, n = 1.959964, 0.8, 10
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    assert table.loc["a", "ci_low"] == pytest.approx(centre - half, abs=1e-5)
    assert table.loc["a", "ci_high"] == pytest.approx(centre + half, abs=1e-5)
    assert table.loc["b", "rated"] == 0 and np.isnan(table.loc["b", "like_rate"])
    assert table.loc["c"].tolist()[:4] == [0, 0, 0, 0]  # an arm nobody was assigned to is listed with zeros


def test_daily_counts_are_cumulative_per_arm_with_empty_days_filled():
    frame = outcomes([("a", "u1", 0, "up", "x"), ("b", "u2", 0, "down", "x"), ("a", "u3", 2, "down", "x"),
                      ("a", "u4", 2, None, "x")])
    daily = daily_counts(frame, ["a", "b"])
    a = daily[daily["arm"] == "a"]
    assert a["rated"].tolist() == [1, 1, 2] and a["liked"].tolist() == [1, 1, 1]
    assert daily[daily["arm"] == "b"]["rated"].tolist() == [1, 1, 1]


def test_two_proportion_tests_match_hand_computation():
    # test 180/200 liked vs baseline 160/200
    c = compare_arms("t", "b", daily_counts(counts_frame({"t": (180, 200), "b": (160, 200)}), ["t", "b"]), 0.03 ** 2)
    assert c.difference == pytest.approx(0.10)
    pooled = 340 / 400
    z = 0.10 / math.sqrt(pooled * (1 - pooled) * (2 / 200))
    assert c.z_pvalue == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)
    # chi-square with Yates: sum (|O - E| - 0.5)^2 / E over the 2x2 table
    observed = np.array([[180, 20], [160, 40]])
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    chi2 = (((np.abs(observed - expected) - 0.5) ** 2) / expected).sum()
    assert c.chi2_pvalue == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-9)
    # Newcombe's hybrid score interval (method 10) from the two Wilson intervals
    (l1, u1), (l2, u2) = stats.binomtest(180, 200).proportion_ci(method="wilson"), stats.binomtest(
        160, 200).proportion_ci(method="wilson")
    assert c.ci_low == pytest.approx(0.10 - math.sqrt((0.9 - l1) ** 2 + (u2 - 0.8) ** 2), abs=1e-6)
    assert c.ci_high == pytest.approx(0.10 + math.sqrt((u1 - 0.9) ** 2 + (0.8 - l2) ** 2), abs=1e-6)
    assert 0 < c.fisher_pvalue < 0.05


def test_fisher_matches_the_lady_tasting_tea():
    c = compare_arms("t", "b", daily_counts(counts_frame({"t": (3, 4), "b": (1, 4)}), ["t", "b"]), 0.01)
    assert c.fisher_pvalue == pytest.approx(34 / 70)  # Fisher's own example: two-sided p = 0.4857


def test_msprt_closed_form_equals_the_mixture_integral():
    k_t, n_t, k_b, n_b, tau2 = 430, 500, 400, 500, 0.02 ** 2
    d = k_t / n_t - k_b / n_b
    pooled = (k_t + k_b) / (n_t + n_b)
    v = pooled * (1 - pooled) * (1 / n_t + 1 / n_b)
    integrand = lambda theta: (stats.norm.pdf(d, theta, math.sqrt(v)) / stats.norm.pdf(d, 0, math.sqrt(v))
                               * stats.norm.pdf(theta, 0, math.sqrt(tau2)))
    mixture = integrate.quad(integrand, -1, 1, points=[0, d])[0]
    assert math.exp(msprt_log_lr(k_t, n_t, k_b, n_b, tau2)) == pytest.approx(mixture, rel=1e-6)
    # no data or no variance: Lambda = 1, no evidence
    assert msprt_log_lr([0, 10], [0, 10], [5, 10], [10, 10], tau2).tolist() == [0.0, 0.0]


def test_msprt_pvalue_is_non_increasing_over_looks():
    rng = np.random.default_rng(1)
    n = np.arange(1, 61) * 50
    k_t, k_b = np.cumsum(rng.binomial(50, 0.82, 60)), np.cumsum(rng.binomial(50, 0.80, 60))
    path = msprt_pvalues(k_t, n, k_b, n, 0.03 ** 2)
    raw = np.minimum(1, np.exp(-msprt_log_lr(k_t, n, k_b, n, 0.03 ** 2)))
    assert (np.diff(path) <= 0).all() and (path <= raw + 1e-15).all()
    assert not (np.diff(raw) <= 0).all()  # the running minimum is doing something here


def test_msprt_keeps_its_level_under_continuous_peeking_and_the_z_test_does_not():
    """1,000 A/A experiments, 50 looks each: stopping at the first p < 0.05."""
    rng = np.random.default_rng(7)
    looks, per_look, runs = 50, 40, 1000
    k_t = np.cumsum(rng.binomial(per_look, 0.8, (runs, looks)), axis=1)
    k_b = np.cumsum(rng.binomial(per_look, 0.8, (runs, looks)), axis=1)
    n = np.arange(1, looks + 1) * per_look
    msprt_fpr = (msprt_pvalues(k_t, n, k_b, n, 0.03 ** 2)[:, -1] < 0.05).mean()
    pooled = (k_t + k_b) / (2 * n)
    z = (k_t - k_b) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    z_fpr = (2 * stats.norm.sf(np.abs(z)) < 0.05).any(axis=1).mean()
    assert msprt_fpr <= 0.05 and z_fpr > 0.15


def test_srm_flags_52_48_on_20k_units_and_not_50_50():
    planted = srm_check({"a": 10_400, "b": 9_600}, {"a": 1, "b": 1})
    assert planted.flagged and planted.statistic == pytest.approx(32.0) and planted.pvalue < 1e-6
    fair = np.random.default_rng(3).binomial(20_000, 0.5)
    assert not srm_check({"a": fair, "b": 20_000 - fair}, {"a": 1, "b": 1}).flagged
    # unequal configured weights: 90/10 as configured is no mismatch
    assert not srm_check({"a": 18_010, "b": 1_990}, {"a": 0.9, "b": 0.1}).flagged


def test_power_and_sample_size_match_the_arcsine_formula():
    check = power_check(0.80, 0.03, n_per_arm=1000)
    h = 2 * math.asin(math.sqrt(0.83)) - 2 * math.asin(math.sqrt(0.80))
    n = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / h) ** 2  # var(2 asin sqrt p) = 1/n per arm
    assert check.min_rated_per_arm == math.ceil(n)
    assert check.achieved_power == pytest.approx(stats.norm.cdf(h * math.sqrt(1000 / 2) - stats.norm.ppf(0.975)),
                                                 abs=1e-3)
    assert power_check(math.nan, 0.03, 0).baseline_rate == 0.5  # no data: the most demanding rate


def test_segment_table_breaks_down_by_intent():
    frame = outcomes([("t", "u1", 0, "up", "x"), ("t", "u2", 0, "up", "y"), ("b", "u3", 0, "down", "x"),
                      ("b", "u4", 0, "up", "y"), ("b", "u5", 0, "up", None)])
    seg = segment_table(frame, "t", "b").set_index(["segment", "value"])
    assert seg.loc[("intent", "x"), "difference"] == 1.0 and seg.loc[("intent", "y"), "difference"] == 0.0
    assert np.isnan(seg.loc[("intent", "(none)"), "difference"])  # no test answers there
    assert seg.loc[("project", "p"), "rated_baseline"] == 3


def _comparison(diff: float, p: float, n: int = 5000) -> Comparison:
    return Comparison("t", "b", n, 0, n, 0, diff, diff - 0.01, diff + 0.01, p, p, p, p)


def test_decide_rules():
    ok, policy = srm_check({"t": 100, "b": 100}, {"t": 1, "b": 1}), AbPolicy()
    assert decide([_comparison(0.03, 0.001)], ok, policy, 10_000).decision == DEPLOY
    assert decide([_comparison(-0.03, 0.001)], ok, policy, 10_000).decision == KEEP
    assert decide([_comparison(0.03, 0.2)], ok, policy, 10_000).decision == CONTINUE
    assert decide([_comparison(0.01, 0.2, n=10_000)], ok, policy, 10_000).decision == KEEP  # max reached
    assert decide([_comparison(0.03, 0.001, n=50)], ok, policy, 10_000).decision == CONTINUE  # too little data
    # two test arms: alpha is split, so p = 0.03 no longer deploys
    two = [_comparison(0.03, 0.03), Comparison("t2", "b", 5000, 0, 5000, 0, 0.0, -0.01, 0.01, 1, 1, 1, 1)]
    assert decide(two, ok, policy, 10_000).decision == CONTINUE


def test_srm_blocks_an_otherwise_clear_decision():
    rng = np.random.default_rng(5)
    # 52/48 split of 20k users, test arm clearly better: without SRM this would deploy
    arms = np.where(rng.random(20_000) < 0.52, "t", "b")
    thumbs = np.where(rng.random(20_000) < np.where(arms == "t", 0.9, 0.8), "up", "down")
    frame = pd.DataFrame({"response_id": np.arange(20_000), "arm": arms, "unit": np.arange(20_000),
                          "served_at": DAY0 + pd.to_timedelta(rng.integers(0, 20, 20_000), unit="D"),
                          "rating_thumb": thumbs, "intent": "x", "project": "p"})
    blocked = evaluate(frame, {"t": 0.5, "b": 0.5}, "b")
    assert blocked.srm.flagged and blocked.decision.blocked_by_srm and blocked.decision.decision == CONTINUE
    assert blocked.comparisons[0].msprt_pvalue < 1e-6  # the outcome evidence alone would have deployed
    assert evaluate(frame, {"t": 0.52, "b": 0.48}, "b").decision.decision == DEPLOY  # as configured: fine
