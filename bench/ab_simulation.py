"""SIMULATED A/B experiments: does the mSPRT of evaluation/ab_stats.py keep its promise under daily peeking?

    .venv/bin/python bench/ab_simulation.py                       # writes bench/results/ab_simulation.md (+ .png)
    .venv/bin/python bench/ab_simulation.py --experiments 2000 --users-per-day 200 --out /tmp/ab.md

Every experiment runs ``--days`` days; each day ``--users-per-day`` users are split between two arms by a fair coin
(or a planted 52/48 split) and each gives one rated answer, liked with the arm's true probability. The analysis is
read once a day on cumulative counts, exactly as the ab_test_results asset reads it, with the asset's default
policy (alpha 0.05, MDE 0.03, mixing variance MDE^2, at least 100 rated answers per arm, max 2 x the fixed-horizon
sample). One answer per user, so there is no within-user clustering here.

Measured:
- A/A (0.80 vs 0.80): share of experiments the mSPRT ever calls significant (a false positive), and the same for a
  fixed-horizon two-proportion z-test read every day (statsmodels), and once at the end.
- Power (0.80 vs 0.83): share decided ``deploy_test_model`` (correct), ``keep_baseline``, still ``continue`` at
  the end; median users until the decision.
- SRM: share of 52/48 experiments flagged (p < 0.001) at the end and at 20,000 units, and false alarms on fair
  splits.
The decision rules are vectorised here; a sample of experiments is re-decided with ab_stats.decide() to check that
both agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats
from statsmodels.stats.proportion import test_proportions_2indep

from feedback_pipeline.analysis.stats import wilson_interval
from feedback_pipeline.evaluation.ab_stats import (CONTINUE, DEPLOY, KEEP, AbPolicy, Comparison, decide,
                                                   msprt_pvalues, power_check, srm_check)

RESULTS = Path(__file__).parent / "results"


def simulate(rng, runs: int, days: int, users: int, p_test: float, p_base: float, share_test: float = 0.5):
    """Cumulative (n_test, k_test, n_base, k_base), each of shape (runs, days)."""
    n_t = rng.binomial(users, share_test, (runs, days))
    n_b = users - n_t
    k_t, k_b = rng.binomial(n_t, p_test), rng.binomial(n_b, p_base)
    return tuple(np.cumsum(x, axis=1) for x in (n_t, k_t, n_b, k_b))


def decisions(n_t, k_t, n_b, k_b, policy: AbPolicy, max_rated: int):
    """Per experiment, as ab_stats.decide: the decision, the day index it was taken (-1: still continue), the
    always-valid p-values, and whether the decision came from significance (not from the max-sample stop)."""
    p = msprt_pvalues(k_t, n_t, k_b, n_b, policy.tau2)
    diff = k_t / np.maximum(n_t, 1) - k_b / np.maximum(n_b, 1)
    smallest = np.minimum(n_t, n_b)
    eligible = smallest >= policy.min_rated_per_arm
    significant = eligible & (p < policy.alpha)
    stop = significant | (eligible & (smallest >= max_rated))
    decided = stop.any(axis=1)
    day = np.where(decided, stop.argmax(axis=1), -1)
    rows = np.arange(len(day))
    at = np.maximum(day, 0)
    outcome = np.where(~decided, CONTINUE, np.where(significant[rows, at] & (diff[rows, at] > 0), DEPLOY, KEEP))
    return outcome, day, p, decided & significant[rows, at]


def check_against_decide(sample, n_t, k_t, n_b, k_b, p, outcome, day, policy, max_rated) -> int:
    """Re-decide a few experiments day by day with the real decide(); returns how many disagree."""
    fair = srm_check({"t": 1, "b": 1}, {"t": 1, "b": 1})
    wrong = 0
    for i in sample:
        got, got_day = CONTINUE, -1
        for d in range(n_t.shape[1]):
            c = Comparison("t", "b", int(n_t[i, d]), int(k_t[i, d]), int(n_b[i, d]), int(k_b[i, d]),
                           k_t[i, d] / max(n_t[i, d], 1) - k_b[i, d] / max(n_b[i, d], 1), 0, 0, 1, 1, 1, float(p[i, d]))
            verdict = decide([c], fair, policy, max_rated).decision
            if verdict != CONTINUE:
                got, got_day = verdict, d
                break
        wrong += (got, got_day) != (outcome[i], day[i])
    return wrong


def rate(hits: int, n: int) -> str:
    low, high = wilson_interval(int(hits), int(n))
    return f"{100 * hits / n:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%; {hits}/{n})"


def z_pvalues(n_t, k_t, n_b, k_b):
    with np.errstate(divide="ignore", invalid="ignore"):
        p = test_proportions_2indep(k_t, n_t, k_b, n_b, method="score", compare="diff", correction=False).pvalue
    return np.nan_to_num(p, nan=1.0)  # equal to the pooled z-test (proportions_ztest), vectorised


def main(args) -> str:
    rng = np.random.default_rng(args.seed)
    policy = AbPolicy()
    max_rated = 2 * power_check(0.80, policy.mde, 0).min_rated_per_arm
    lines = ["# A/B testing: sequential test vs peeking (SIMULATED)", "",
             f"SIMULATED data, `bench/ab_simulation.py --experiments {args.experiments} --days {args.days} "
             f"--users-per-day {args.users_per_day} --seed {args.seed}`. Each simulated user gives one rated answer; "
             f"the analysis is read once a day on cumulative counts with the asset's default policy: alpha "
             f"{policy.alpha}, MDE {policy.mde}, mixing variance tau^2 = {policy.tau2:.4g}, at least "
             f"{policy.min_rated_per_arm} rated answers per arm, keep_baseline at {max_rated} rated per arm "
             f"(2 x the fixed-horizon n for 0.80 vs 0.83) without significance.", ""]
    started = time.perf_counter()

    # A/A: any significant look is a false positive
    aa = simulate(rng, args.experiments, args.days, args.users_per_day, 0.80, 0.80)
    outcome, day, p_msprt, by_significance = decisions(*aa, policy, max_rated)
    eligible = np.minimum(aa[0], aa[2]) >= policy.min_rated_per_arm
    msprt_any = ((p_msprt < policy.alpha) & eligible).any(axis=1)
    p_z = z_pvalues(*aa)
    z_daily, z_end = (p_z < policy.alpha).any(axis=1), p_z[:, -1] < policy.alpha
    n = args.experiments
    lines += ["## A/A: 0.80 vs 0.80, read every day", "", "| test | false-positive rate |", "|---|---|",
              f"| mSPRT always-valid p < 0.05 at any daily look (30 days, ignoring the max-sample stop) | "
              f"{rate(msprt_any.sum(), n)} |",
              "| mSPRT with the full decision rule: deploy, or keep because significantly worse "
              f"(keep at the max sample is right here) | "
              f"{rate(by_significance.sum(), n)} |",
              f"| fixed-horizon z-test, p < 0.05 at any daily look | {rate(z_daily.sum(), n)} |",
              f"| fixed-horizon z-test, read once on day {args.days} | {rate(z_end.sum(), n)} |", "",
              f"A/A experiments that wrongly deployed the test model: {rate((outcome == DEPLOY).sum(), n)}.", ""]

    # Power: 0.83 vs 0.80
    ab = simulate(rng, args.experiments, args.days, args.users_per_day, 0.83, 0.80)
    outcome_ab, day_ab, p_ab, _ = decisions(*ab, policy, max_rated)
    users_needed = (day_ab[day_ab >= 0] + 1) * args.users_per_day
    deployed = outcome_ab == DEPLOY
    users_deployed = (day_ab[deployed] + 1) * args.users_per_day
    fixed = power_check(0.80, policy.mde, 0)
    z_end_ab = (z_pvalues(*ab)[:, -1] < policy.alpha) & (ab[1][:, -1] / ab[0][:, -1] > ab[3][:, -1] / ab[2][:, -1])
    lines += ["## Power: test 0.83 vs baseline 0.80", "", "| outcome | share of experiments |", "|---|---|",
              f"| deploy_test_model (correct) | {rate(deployed.sum(), n)} |",
              f"| keep_baseline (max sample without significance, or significantly worse) | "
              f"{rate((outcome_ab == KEEP).sum(), n)} |",
              f"| still continue after {args.days} days | {rate((outcome_ab == CONTINUE).sum(), n)} |", "",
              f"Median users until a correct deploy: {np.median(users_deployed):.0f} "
              f"(quartiles {np.percentile(users_deployed, 25):.0f}-{np.percentile(users_deployed, 75):.0f}); "
              f"until any decision: {np.median(users_needed):.0f}. "
              f"A fixed-horizon test needs {fixed.min_rated_per_arm} per arm ({2 * fixed.min_rated_per_arm} users) "
              f"for 80% power, decided once; read once on day {args.days} "
              f"({args.days * args.users_per_day} users) it detects the better arm in "
              f"{rate(z_end_ab.sum(), n)}.", ""]

    # SRM: planted 52/48 vs fair split, on the units counted at the end, and on 20,000 units
    srm_runs = min(args.experiments, 2000)
    flagged = lambda sim: sum(srm_check({"t": int(t), "b": int(b)}, {"t": 1, "b": 1}, policy.srm_threshold).flagged
                              for t, b in zip(sim[0][:, -1], sim[2][:, -1]))
    lines += ["## Sample-ratio mismatch (chi-square p < 0.001 on units per arm)", "",
              "| split | units per experiment | flagged |", "|---|---|---|"]
    for days in (args.days, -(-20_000 // args.users_per_day)):
        planted = simulate(rng, srm_runs, days, args.users_per_day, 0.8, 0.8, share_test=0.52)
        fair = simulate(rng, srm_runs, days, args.users_per_day, 0.8, 0.8)
        units = days * args.users_per_day
        lines += [f"| planted 52/48 | {units} ({days} days) | {rate(flagged(planted), srm_runs)} |",
                  f"| fair 50/50 (false alarms) | {units} ({days} days) | {rate(flagged(fair), srm_runs)} |"]
    lines.append("")

    # Sensitivity to the mixing variance
    lines += ["## Mixing variance tau^2 (same simulated data)", "",
              "| tau | A/A false positives (decision rule) | power (deploy at 0.83) | median users to deploy |",
              "|---|---|---|---|"]
    for tau in (0.01, 0.03, 0.1):
        variant = AbPolicy(mixing_variance=tau ** 2)
        false_positive = decisions(*aa, variant, max_rated)[3]
        o_ab, d_ab, _, _ = decisions(*ab, variant, max_rated)
        wins = o_ab == DEPLOY
        lines.append(f"| {tau} | {rate(false_positive.sum(), n)} "
                     f"| {rate(wins.sum(), n)} | {np.median((d_ab[wins] + 1) * args.users_per_day):.0f} |")

    lines += ["", "Reading: the mSPRT stays below alpha under daily peeking (its guarantee covers looking after every "
                  "answer, so daily looks use only part of it: it is conservative here), while the same z-test read "
                  "daily is wrong several times as often as it claims. Its price is sample size: a median of about "
                  "the fixed-horizon n to deploy, with a long right tail, where a fixed-horizon test must not be read "
                  "before its planned n. tau = MDE (the default) had the best power of the three mixing variances."]
    sample = rng.choice(n, size=min(200, n), replace=False)
    disagree = check_against_decide(sample, *ab, p_ab, outcome_ab, day_ab, policy, max_rated)
    disagree += check_against_decide(sample, *aa, p_msprt, outcome, day, policy, max_rated)
    elapsed = time.perf_counter() - started
    lines += ["", f"Vectorised decisions re-checked with `ab_stats.decide()` on {2 * len(sample)} experiments: "
                  f"{disagree} disagreements. Run time {elapsed:.1f} s on this machine (2 CPU cores).", "",
              f"![false positives by day](ab_simulation.png)", ""]
    _plot(aa, p_msprt, p_z, policy, args.out.with_suffix(".png"))
    return "\n".join(lines)


def _plot(aa, p_msprt, p_z, policy, path: Path) -> None:
    eligible = np.minimum(aa[0], aa[2]) >= policy.min_rated_per_arm
    days = np.arange(1, p_z.shape[1] + 1)
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, hits in (("z-test, peeked daily", np.maximum.accumulate(p_z < policy.alpha, axis=1)),
                        ("mSPRT always-valid p", np.maximum.accumulate((p_msprt < policy.alpha) & eligible, axis=1))):
        share = hits.mean(axis=0)
        bands = np.array([wilson_interval(int(k), hits.shape[0]) for k in hits.sum(axis=0)])
        line, = ax.plot(days, share, marker="o", markersize=3, label=label)
        ax.fill_between(days, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(policy.alpha, color="0.4", linestyle="--", label="alpha = 0.05")
    ax.set_xlabel("day of the experiment (one look per day)")
    ax.set_ylabel("A/A experiments with a false positive so far")
    ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_title("SIMULATED A/A experiments, 0.80 vs 0.80")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000, help="Simulated experiments per scenario.")
    parser.add_argument("--days", type=int, default=30, help="Days per experiment (one look per day).")
    parser.add_argument("--users-per-day", type=int, default=400, help="Users per day, both arms together.")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=RESULTS / "ab_simulation.md", help="Markdown report path.")
    args = parser.parse_args()
    report = main(args)
    args.out.write_text(report, encoding="utf-8")
    print(report)
