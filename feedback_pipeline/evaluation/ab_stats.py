"""A/B test statistics on thumbs ratings: per-arm like-rates, tests, always-valid p-values, SRM, power, decision.

Pure functions over the ``arm_outcomes`` frame (one row per served response: ``arm``, ``unit``, ``served_at``,
``rating_thumb``, ``intent``, ``project``); the Dagster asset and the benchmark call them.

The analysed unit is the *rated response* (its latest thumb): like-rate = likes / rated answers per arm.
Assignment is by user (or session), so answers of one user are correlated; the tests below treat responses as
independent and ignore that clustering. With a few answers per user this understates variances a little (a design
effect of 1 + (m - 1) * ICC for m answers per user); the SRM check counts units, where the independence holds.

The decision reads only the mixture SPRT (mSPRT): its p-value is *always valid*, so the result may be read every
day (or after every answer) and stopped whenever it is significant without inflating false positives. The z,
chi-square and Fisher p-values are reported for reference: read repeatedly, they are not valid (see
bench/results/ab_simulation.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, proportions_ztest

from feedback_pipeline.analysis.stats import wilson_interval

AbDecision = Literal["deploy_test_model", "keep_baseline", "continue"]
DEPLOY, KEEP, CONTINUE = get_args(AbDecision)
SEGMENT_COLUMNS = ("intent", "project")


@dataclass(frozen=True)
class AbPolicy:
    """How an experiment is judged. The asset's config takes its defaults from here."""

    alpha: float = 0.05  # on the mSPRT always-valid p-value; Bonferroni-split over test arms when there are several
    mde: float = 0.03  # minimum detectable effect (absolute like-rate difference) for the power figures
    power: float = 0.8  # target power of the fixed-horizon sample size
    mixing_variance: float | None = None  # tau^2 of the mSPRT normal mixture; None = mde^2 (weight on effects ~MDE)
    min_rated_per_arm: int = 100  # below this, no decision: the plug-in variance of the mSPRT is unreliable
    max_rated_per_arm: int | None = None  # no significance by then -> keep_baseline; None = 2 x fixed-horizon n
    srm_threshold: float = 0.001  # SRM chi-square p below this blocks the decision

    @property
    def tau2(self) -> float:
        return self.mde ** 2 if self.mixing_variance is None else self.mixing_variance


# ------------------------------------------------------------------------------------------------ per arm

def liked_column(thumbs: pd.Series) -> pd.Series:
    """The store's ``rating_thumb`` (1 up, -1 down, 0 neutral, NULL) as 1.0 / 0.0 / NaN; "up"/"down" work too.

    A neutral thumb (e.g. 3 of 5 stars) is neither a like nor a dislike: not rated, as in the store's rated counts."""
    mapping = {"up": 1.0, "down": 0.0, 1: 1.0, -1: 0.0}
    return thumbs.map(lambda v: np.nan if pd.isna(v) else mapping.get(v.lower() if isinstance(v, str) else v, np.nan),
                      na_action=None).astype(float)


def arm_table(outcomes: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Per arm: units, responses, rated, liked, like_rate with its Wilson 95% interval (arms in the given order)."""
    liked = liked_column(outcomes["rating_thumb"])
    frame = outcomes.assign(rated=liked.notna().astype(int), liked=liked.fillna(0).astype(int))
    grouped = frame.groupby("arm").agg(units=("unit", "nunique"), responses=("arm", "size"), rated=("rated", "sum"),
                                       liked=("liked", "sum"))
    table = grouped.reindex(arms, fill_value=0).astype(int)
    bounds = [wilson_interval(k, n) for k, n in zip(table["liked"], table["rated"])]
    table["like_rate"] = np.where(table["rated"] > 0, table["liked"] / table["rated"].clip(lower=1), np.nan)
    table["ci_low"], table["ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
    return table.rename_axis("arm").reset_index()


def daily_counts(outcomes: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Cumulative rated/liked per arm at the end of each UTC day of ``served_at`` (the looks of the mSPRT)."""
    liked = liked_column(outcomes["rating_thumb"])
    rated = outcomes[liked.notna()].assign(liked=liked.dropna().astype(int), rated=1)
    if rated.empty:
        return pd.DataFrame(columns=["day", "arm", "rated", "liked"])
    rated = rated.assign(day=pd.to_datetime(rated["served_at"], utc=True).dt.floor("D"))
    per_day = rated.groupby(["day", "arm"])[["rated", "liked"]].sum()
    days = pd.date_range(per_day.index.get_level_values("day").min(), per_day.index.get_level_values("day").max(),
                         freq="D")
    full = per_day.reindex(pd.MultiIndex.from_product([days, arms], names=["day", "arm"]), fill_value=0)
    return full.groupby(level="arm").cumsum().reset_index()


# ------------------------------------------------------------------------------------------------ tests

def msprt_log_lr(k_t, n_t, k_b, n_b, tau2: float) -> np.ndarray:
    """log of the mixture likelihood ratio Lambda for H0: p_t - p_b = 0 (numpy-vectorised over any shape).

    Normal-mixture SPRT of Johari, Pekelis, Walsh (2017, "Peeking at A/B tests", also "Always valid inference"):
    the difference d = k_t/n_t - k_b/n_b is approximately N(theta, v) with v = p(1-p)(1/n_t + 1/n_b); mixing the
    likelihood ratio N(theta, v)/N(0, v) over theta ~ N(0, tau2) gives in closed form

        Lambda = sqrt(v / (v + tau2)) * exp(tau2 * d^2 / (2 v (v + tau2)))

    (with n per arm and sigma^2 = 2p(1-p) this is the paper's sqrt(s2/(s2+n tau2)) exp(n^2 tau2 d^2 / (2 s2 (s2 +
    n tau2)))). v uses the *pooled* rate: under H0 it is the right variance, and it cannot collapse to 0 when one
    small arm happens to have all likes. Lambda is a nonnegative martingale under H0, so by Ville's inequality
    P(sup_n Lambda_n >= 1/alpha) <= alpha: stopping on any look is valid (asymptotically, as v is estimated).
    tau2 is the prior spread of plausible effects: small tau2 is fast on small effects, slow on large ones.
    """
    k_t, n_t, k_b, n_b = (np.asarray(x, dtype=float) for x in (k_t, n_t, k_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = k_t / n_t - k_b / n_b
        pooled = (k_t + k_b) / (n_t + n_b)
        v = pooled * (1 - pooled) * (1 / n_t + 1 / n_b)
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d ** 2 / (2 * v * (v + tau2))
    # No data in an arm, or no variance at all (every answer liked, or none): no evidence either way.
    return np.where((n_t > 0) & (n_b > 0) & (v > 0), log_lr, 0.0)


def msprt_pvalues(k_t, n_t, k_b, n_b, tau2: float) -> np.ndarray:
    """Always-valid p-values along the last axis (the looks, in time order): p_n = min(1, min_{m<=n} 1/Lambda_m).

    Non-increasing by construction; reading it at any look, or stopping when it drops below alpha, keeps the
    false-positive rate at most alpha."""
    p = np.minimum(1.0, np.exp(-msprt_log_lr(k_t, n_t, k_b, n_b, tau2)))
    return np.minimum.accumulate(p, axis=-1)


@dataclass(frozen=True)
class Comparison:
    """One test arm against the baseline arm (difference = test - baseline)."""

    test_arm: str
    baseline_arm: str
    rated_test: int
    liked_test: int
    rated_baseline: int
    liked_baseline: int
    difference: float
    ci_low: float  # Newcombe (hybrid Wilson score) 95% interval of the difference
    ci_high: float
    z_pvalue: float  # pooled two-proportion z-test (statsmodels), fixed horizon
    chi2_pvalue: float  # chi-square on the 2x2 table with Yates' correction (scipy default)
    fisher_pvalue: float  # Fisher's exact test
    msprt_pvalue: float  # always-valid p-value at the latest look
    msprt_path: tuple[float, ...] = ()  # the always-valid p-value at each look (day)


def compare_arms(test_arm: str, baseline_arm: str, daily: pd.DataFrame, tau2: float) -> Comparison:
    """All tests of ``test_arm`` vs ``baseline_arm`` from the cumulative daily counts (the last day is "now")."""
    t, b = (daily[daily["arm"] == arm].sort_values("day") for arm in (test_arm, baseline_arm))
    if t.empty:
        return Comparison(test_arm, baseline_arm, 0, 0, 0, 0, *[math.nan] * 7)
    k_t, n_t, k_b, n_b = (frame[col].to_numpy(dtype=float) for frame, col in
                          ((t, "liked"), (t, "rated"), (b, "liked"), (b, "rated")))
    path = msprt_pvalues(k_t, n_t, k_b, n_b, tau2)
    kt, nt, kb, nb = (int(x[-1]) for x in (k_t, n_t, k_b, n_b))
    if min(nt, nb) == 0:
        return Comparison(test_arm, baseline_arm, nt, kt, nb, kb, *[math.nan] * 6, float(path[-1]), tuple(path))
    low, high = confint_proportions_2indep(kt, nt, kb, nb, method="newcomb", compare="diff")
    table = [[kt, nt - kt], [kb, nb - kb]]
    both_margins = 0 < kt + kb < nt + nb  # a table with a zero margin has no chi-square / z statistic
    z_p = float(proportions_ztest([kt, kb], [nt, nb])[1]) if both_margins else 1.0
    chi2_p = float(stats.chi2_contingency(table).pvalue) if both_margins else 1.0
    return Comparison(test_arm, baseline_arm, nt, kt, nb, kb, kt / nt - kb / nb, float(low), float(high), z_p,
                      chi2_p, float(stats.fisher_exact(table).pvalue), float(path[-1]), tuple(float(p) for p in path))


# ------------------------------------------------------------------------------------------------ SRM and power

@dataclass(frozen=True)
class SrmCheck:
    observed: dict[str, int]  # units per arm
    expected_share: dict[str, float]
    statistic: float
    pvalue: float
    flagged: bool


def srm_check(units: dict[str, int], weights: dict[str, float], threshold: float = 0.001) -> SrmCheck:
    """Sample-ratio mismatch: chi-square goodness of fit of assigned units per arm against the configured weights.

    p < ``threshold`` (0.001, the usual SRM alarm level: it fires rarely by chance, reliably on broken assignment)
    means the split is not the one configured -- a router bug, a crashing arm, bots -- and no outcome comparison
    can be trusted."""
    arms = list(weights)
    total_weight = sum(weights.values())
    share = {arm: weights[arm] / total_weight for arm in arms}
    observed = np.array([units.get(arm, 0) for arm in arms], dtype=float)
    if observed.sum() == 0:
        return SrmCheck({a: 0 for a in arms}, share, math.nan, math.nan, False)
    expected = observed.sum() * np.array([share[a] for a in arms])
    result = stats.chisquare(observed, expected)
    return SrmCheck({a: int(o) for a, o in zip(arms, observed)}, share, float(result.statistic),
                    float(result.pvalue), bool(result.pvalue < threshold))


@dataclass(frozen=True)
class PowerCheck:
    baseline_rate: float
    mde: float
    alpha: float
    target_power: float
    min_rated_per_arm: int  # fixed-horizon rated answers per arm for target_power at baseline_rate + mde
    achieved_power: float  # power of a fixed-horizon test at the current (smallest) arm size


def power_check(baseline_rate: float, mde: float, n_per_arm: int, alpha: float = 0.05,
                power: float = 0.8) -> PowerCheck:
    """Sample size and power for a two-sided two-proportion test (Cohen's h, statsmodels ``NormalIndPower``).

    The mSPRT needs more than this fixed-horizon n for the same power (the price of peeking freely)."""
    rate = 0.5 if not 0 < baseline_rate < 1 else baseline_rate  # no data yet: 0.5 gives the largest n
    target = rate + mde if rate + mde < 1 else rate - mde
    h = abs(proportion_effectsize(target, rate))
    analysis = NormalIndPower()
    n = analysis.solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0, alternative="two-sided")
    achieved = analysis.power(effect_size=h, nobs1=n_per_arm, alpha=alpha, ratio=1.0) if n_per_arm > 0 else 0.0
    return PowerCheck(rate, mde, alpha, power, int(math.ceil(n)), float(achieved))


# ------------------------------------------------------------------------------------------------ segments

def segment_table(outcomes: pd.DataFrame, test_arm: str, baseline_arm: str,
                  columns: tuple[str, ...] = SEGMENT_COLUMNS) -> pd.DataFrame:
    """Like-rates of both arms per intent and per project, with the difference and Fisher's p per segment.

    Exploratory only (many segments, no correction, read at any time): the decision never reads it."""
    rows = []
    for column in columns:
        if column not in outcomes:
            continue
        for value, part in outcomes.groupby(outcomes[column].fillna("(none)").astype(str)):
            table = arm_table(part, [test_arm, baseline_arm]).set_index("arm")
            t, b = table.loc[test_arm], table.loc[baseline_arm]
            ok = t["rated"] > 0 and b["rated"] > 0
            rows.append({"segment": column, "value": value, "rated_test": int(t["rated"]),
                         "like_rate_test": t["like_rate"], "rated_baseline": int(b["rated"]),
                         "like_rate_baseline": b["like_rate"],
                         "difference": t["like_rate"] - b["like_rate"] if ok else math.nan,
                         "fisher_pvalue": float(stats.fisher_exact(
                             [[t["liked"], t["rated"] - t["liked"]], [b["liked"], b["rated"] - b["liked"]]]).pvalue)
                         if ok else math.nan})
    return pd.DataFrame(rows, columns=["segment", "value", "rated_test", "like_rate_test", "rated_baseline",
                                       "like_rate_baseline", "difference", "fisher_pvalue"])


# ------------------------------------------------------------------------------------------------ decision

@dataclass(frozen=True)
class Decision:
    decision: AbDecision
    winner_arm: str | None  # the test arm to deploy (deploy_test_model only)
    reasons: tuple[str, ...]
    blocked_by_srm: bool = False


def decide(comparisons: list[Comparison], srm: SrmCheck, policy: AbPolicy, max_rated_per_arm: int) -> Decision:
    """deploy_test_model / keep_baseline / continue, on the mSPRT always-valid p-value and the difference's sign.

    - SRM flagged: ``continue`` with ``blocked_by_srm``; nothing is decided until the assignment is fixed.
    - Fewer than ``min_rated_per_arm`` rated answers in an arm: ``continue``.
    - A test arm significantly better (p < alpha / number of test arms): deploy the best such arm.
    - Every test arm significantly worse, or every arm at ``max_rated_per_arm`` without significance:
      ``keep_baseline`` (a test model that could not prove itself better by the planned maximum is not deployed).
    - Otherwise ``continue``.
    """
    if srm.flagged:
        return Decision(CONTINUE, None, (f"sample-ratio mismatch (chi-square p={srm.pvalue:.2g} < "
                                         f"{policy.srm_threshold}): units per arm {srm.observed} do not match the "
                                         f"configured split; no decision until the assignment is fixed",), True)
    if not comparisons:
        return Decision(CONTINUE, None, ("no test arm",))
    alpha = policy.alpha / len(comparisons)
    smallest = min(min(c.rated_test, c.rated_baseline) for c in comparisons)
    if smallest < policy.min_rated_per_arm:
        return Decision(CONTINUE, None, (f"{smallest} rated answers in the smallest arm; a decision needs "
                                         f"{policy.min_rated_per_arm}",))
    better = [c for c in comparisons if c.msprt_pvalue < alpha and c.difference > 0]
    worse = [c for c in comparisons if c.msprt_pvalue < alpha and c.difference < 0]
    if better:
        best = max(better, key=lambda c: c.difference)
        return Decision(DEPLOY, best.test_arm, (
            f"{best.test_arm} beats {best.baseline_arm} by {best.difference:+.3f} "
            f"(95% CI {best.ci_low:+.3f}..{best.ci_high:+.3f}); always-valid p={best.msprt_pvalue:.3g} < {alpha:.3g}",))
    if len(worse) == len(comparisons):
        return Decision(KEEP, None, tuple(f"{c.test_arm} is worse than {c.baseline_arm} by {c.difference:+.3f}; "
                                          f"always-valid p={c.msprt_pvalue:.3g} < {alpha:.3g}" for c in worse))
    if smallest >= max_rated_per_arm:
        return Decision(KEEP, None, (f"every arm has {smallest} >= {max_rated_per_arm} rated answers (the planned "
                                     f"maximum) without a significantly better test arm",))
    return Decision(CONTINUE, None, tuple(f"{c.test_arm}: {c.difference:+.3f}, always-valid p={c.msprt_pvalue:.3g} "
                                          f"(needs < {alpha:.3g}); {smallest}/{max_rated_per_arm} rated per arm"
                                          for c in comparisons))


# ------------------------------------------------------------------------------------------------ all together

@dataclass(frozen=True)
class AbResult:
    arms: pd.DataFrame
    daily: pd.DataFrame
    comparisons: list[Comparison]
    srm: SrmCheck
    power: PowerCheck
    segments: pd.DataFrame
    decision: Decision
    policy: AbPolicy
    max_rated_per_arm: int
    units_in_several_arms: int = 0  # > 0 means sticky assignment is broken (also shows up as SRM, usually)
    notes: tuple[str, ...] = field(default=())

    def evidence(self) -> dict:
        """JSON-ready summary: what ``stop_experiment`` stores and the sensor logs."""
        return {"decision": self.decision.decision, "winner_arm": self.decision.winner_arm,
                "reasons": list(self.decision.reasons), "blocked_by_srm": self.decision.blocked_by_srm,
                "arms": self.arms.to_dict(orient="records"),
                "comparisons": [{k: v for k, v in asdict(c).items() if k != "msprt_path"} for c in self.comparisons],
                "srm": asdict(self.srm), "power": asdict(self.power), "policy": asdict(self.policy),
                "max_rated_per_arm": self.max_rated_per_arm, "units_in_several_arms": self.units_in_several_arms}


def evaluate(outcomes: pd.DataFrame, weights: dict[str, float], baseline_arm: str,
             policy: AbPolicy = AbPolicy()) -> AbResult:
    """Everything the asset reports for one experiment. ``weights``: arm -> configured traffic weight."""
    arms = list(weights)
    table = arm_table(outcomes, arms)
    daily = daily_counts(outcomes, arms)
    comparisons = [compare_arms(arm, baseline_arm, daily, policy.tau2) for arm in arms if arm != baseline_arm]
    srm = srm_check(dict(zip(table["arm"], table["units"])), weights, policy.srm_threshold)
    base = table.set_index("arm").loc[baseline_arm]
    rated = [int(r) for r in table["rated"]]
    power = power_check(float(base["like_rate"]) if base["rated"] else math.nan, policy.mde, min(rated, default=0),
                        policy.alpha, policy.power)
    max_rated = policy.max_rated_per_arm or 2 * power.min_rated_per_arm
    segments = pd.concat([segment_table(outcomes, c.test_arm, baseline_arm).assign(test_arm=c.test_arm)
                          for c in comparisons], ignore_index=True) if comparisons else pd.DataFrame()
    several = int((outcomes.groupby("unit")["arm"].nunique() > 1).sum()) if len(outcomes) else 0
    return AbResult(table, daily, comparisons, srm, power, segments, decide(comparisons, srm, policy, max_rated),
                    policy, max_rated, several)


# ------------------------------------------------------------------------------------------------ plot

def like_rate_plot(result: AbResult, title: str) -> bytes:
    """PNG: cumulative like-rate per arm per day with Wilson 95% bands, and the always-valid p-value below it."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")  # Agg canvas, no pyplot: see analysis/plots.py
    FigureCanvasAgg(fig)
    rates, pvalues = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    daily = result.daily
    if daily.empty:
        rates.text(0.5, 0.5, "no rated answers yet", ha="center", va="center", transform=rates.transAxes)
    for arm, part in daily.groupby("arm", sort=False):
        rated, liked = part["rated"].to_numpy(), part["liked"].to_numpy()
        bands = np.array([wilson_interval(int(k), int(n)) for k, n in zip(liked, rated)])
        line, = rates.plot(part["day"], np.where(rated > 0, liked / np.maximum(rated, 1), np.nan), marker="o",
                           markersize=3, label=f"{arm} (n={int(rated[-1])})")
        rates.fill_between(part["day"], bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
    for c in result.comparisons:
        if c.msprt_path:
            days = daily[daily["arm"] == c.test_arm]["day"]
            pvalues.plot(days, c.msprt_path, marker="o", markersize=3, label=f"{c.test_arm} vs {c.baseline_arm}")
    pvalues.axhline(result.policy.alpha, color="0.4", linestyle="--", label=f"alpha {result.policy.alpha}")
    pvalues.set_yscale("log")
    pvalues.set_ylabel("always-valid p")
    rates.set_ylabel("cumulative like rate (95% CI)")
    rates.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.1f}%")
    rates.set_title(f"{title}: {result.decision.decision}")
    for ax in (rates, pvalues):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
