"""The promotion gate: paired intervals of challenger - champion, a length-controlled win rate, and the policy.

Pure functions over per-example scores (no models, no Dagster), so the same code decides in the pipeline, in the
simulations that measure its false-promotion rate, and in tests.

The rule: promote only when the paired 95% interval of (challenger - champion) on the family's primary metric lies
above the policy's margin (0 = superiority; a negative margin = non-inferiority), no segment with enough data
regresses significantly beyond its tolerance, and no guardrail is worse beyond its tolerance. An interval that
crosses the margin proves nothing yet: the champion stays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import special

from feedback_pipeline.analysis.stats import bootstrap_interval

Decision = Literal["promote", "keep", "needs_review"]


@dataclass(frozen=True)
class Interval:
    """Mean paired difference (challenger - champion) with its bootstrap interval."""

    champion: float
    challenger: float
    diff: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class Evidence:
    """One row of the evidence table a decision carries."""

    name: str
    role: Literal["primary", "secondary", "segment", "guardrail"]
    champion: float
    challenger: float
    diff: float
    ci_low: float
    ci_high: float
    n: int
    passed: bool | None  # None: informative only (secondary metrics)
    note: str = ""


@dataclass(frozen=True)
class Guardrail:
    """A property of generated answers that must not get worse beyond ``tolerance``.

    ``worse_if``: "higher" (refusals, repetition), "lower", or "either" (length: verbose and terse both count).
    ``relative``: tolerance as a fraction of the champion's value (length) instead of an absolute difference (rates).
    """

    name: str
    champion: float
    challenger: float
    worse_if: Literal["higher", "lower", "either"]
    tolerance: float
    relative: bool = False

    def breached(self) -> bool:
        if not (math.isfinite(self.champion) and math.isfinite(self.challenger)):
            return True  # an unmeasurable guardrail never passes
        scale = abs(self.champion) if self.relative else 1.0
        change = (self.challenger - self.champion) / scale if scale else self.challenger - self.champion
        if self.worse_if == "higher":
            return change > self.tolerance
        if self.worse_if == "lower":
            return change < -self.tolerance
        return abs(change) > self.tolerance


@dataclass(frozen=True)
class GatePolicy:
    """What a family must show to be promoted (one per family, in config)."""

    primary_metric: str
    margin: float = 0.0
    segment_tolerance: float = 0.05
    min_segment_size: int = 30
    require_review: bool = False  # a person approves every promotion (`feedback-pipeline models approve`)
    min_examples: int = 20  # fewer paired examples decide nothing: a bootstrap of 4 wins out of 4 has zero width


@dataclass(frozen=True)
class GateDecision:
    decision: Decision
    reasons: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    policy: GatePolicy

    def to_dict(self) -> dict:
        return {"decision": self.decision, "reasons": list(self.reasons), "policy": asdict(self.policy),
                "evidence": [asdict(e) for e in self.evidence]}

    def markdown(self) -> str:
        lines = [f"**Decision: {self.decision}**", ""] + [f"- {r}" for r in self.reasons] + [
            "", "| metric | role | champion | challenger | diff | 95% CI | n | passed |", "|---|---|---|---|---|---|---|---|"]
        for e in self.evidence:
            passed = "" if e.passed is None else ("yes" if e.passed else "**no**")
            interval = f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}]" if math.isfinite(e.ci_low) else "-"
            lines.append(f"| {e.name} | {e.role} | {e.champion:.4f} | {e.challenger:.4f} | {e.diff:+.4f} | "
                         f"{interval} | {e.n} | {passed} |")
        return "\n".join(lines)


def paired_interval(champion: Sequence[float], challenger: Sequence[float], confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0, groups: Sequence[Any] | None = None) -> Interval:
    """Mean of challenger - champion over paired examples, with a percentile bootstrap interval (scipy).

    ``groups`` (one id per example, e.g. its prompt): examples of one group are resampled together (a cluster
    bootstrap of the ratio sum of differences / number of examples). Preference pairs of one prompt share answers,
    so they are not independent, and resampling them one by one would make the interval too narrow."""
    a, b = np.asarray(champion, dtype=float), np.asarray(challenger, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("champion and challenger scores must be non-empty 1-d arrays of the same length (paired)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_interval: scores must be finite")
    diff = b - a
    if groups is None:
        low, high = bootstrap_interval([diff], np.mean, confidence=confidence, n_resamples=n_resamples, seed=seed)
    else:
        codes = group_codes(groups, a.size)
        sums, counts = np.bincount(codes, weights=diff), np.bincount(codes).astype(float)
        low, high = bootstrap_interval([sums, counts], _ratio_of_sums, paired=True, confidence=confidence,
                                       n_resamples=n_resamples, seed=seed)
    return Interval(float(a.mean()), float(b.mean()), float(diff.mean()), low, high, int(a.size))


def factorize(values: np.ndarray) -> np.ndarray:
    """Integer codes 0..G-1 in order of first appearance (so distinct items keep their positions as codes)."""
    if values.size == 0:
        return np.empty(0, dtype=int)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=int)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.ravel()]


def group_codes(groups: Sequence[Any] | None, n: int) -> np.ndarray:
    """Integer codes 0..G-1 of ``groups`` (None: every item its own group)."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"groups: expected {n} group ids (one per item), got {len(groups)}")
    return factorize(np.asarray([str(g) for g in groups]))


def prompt_groups(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One id per preference pair: its prompt (the whole message list), so that the pairs of one prompt form one
    bootstrap group (``groups`` of ``paired_interval``)."""
    return [json.dumps(p["prompt"], sort_keys=True, ensure_ascii=False, default=str) for p in pairs]


def _ratio_of_sums(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def win_outcomes(champion_scores: Sequence[float], challenger_scores: Sequence[float]) -> np.ndarray:
    """Per prompt: 1 when the judge scores the challenger's answer higher, 0.5 on a tie, 0 otherwise."""
    a, b = np.asarray(champion_scores, dtype=float), np.asarray(challenger_scores, dtype=float)
    return np.where(b > a, 1.0, np.where(b == a, 0.5, 0.0))


def _lc_intercepts(wins: np.ndarray, length_feature: np.ndarray, l2: float = 1e-3, iterations: int = 50) -> np.ndarray:
    """Logistic regression of the judge's verdict on the length feature, one fit per row of the (..., n) arrays (the
    sample itself, or scipy's bootstrap resamples); returns the intercepts, the log-odds of a challenger win at equal
    length. Newton's method, vectorised over the rows; a small L2 keeps the fit finite when every verdict goes one
    way. Ties are fractional targets (0.5)."""
    wins, feature = np.asarray(wins, dtype=float), np.asarray(length_feature, dtype=float)
    shape = wins.shape[:-1]
    wins, feature = wins.reshape(-1, wins.shape[-1]), feature.reshape(-1, feature.shape[-1])
    x = np.stack([np.ones_like(feature), feature], axis=-1)  # (B, n, 2)
    theta = np.zeros((x.shape[0], 2))
    weight = 1.0 / x.shape[1]
    for _ in range(iterations):
        p = special.expit(np.einsum("bni,bi->bn", x, theta))
        grad = np.einsum("bn,bni->bi", weight * (p - wins), x) + 2 * l2 * theta
        hess = np.einsum("bn,bni,bnj->bij", weight * p * (1 - p), x, x) + 2 * l2 * np.eye(2)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:, 0].reshape(shape)


def _lc_win_rate(wins: np.ndarray, length_feature: np.ndarray, axis: int = -1) -> np.ndarray:
    """The predicted win rate at zero length difference (a vectorised statistic for scipy's bootstrap)."""
    return special.expit(_lc_intercepts(np.moveaxis(wins, axis, -1), np.moveaxis(length_feature, axis, -1)))


def length_controlled_win_rate(champion_scores: Sequence[float], challenger_scores: Sequence[float],
                               champion_lengths: Sequence[float], challenger_lengths: Sequence[float],
                               confidence: float = 0.95, n_resamples: int = 500, seed: int = 0) -> dict[str, float]:
    """Raw and length-controlled win rate of the challenger over the champion, with paired bootstrap intervals.

    Length control as in AlpacaEval 2.0: regress the judge's verdict on tanh(length difference / its std) and
    report the predicted win rate at zero length difference (sigmoid of the intercept). A judge that prefers longer
    answers then cannot promote a model only for being verbose.
    """
    wins = win_outcomes(champion_scores, challenger_scores)
    delta = np.asarray(challenger_lengths, dtype=float) - np.asarray(champion_lengths, dtype=float)
    if delta.shape != wins.shape:
        raise ValueError("lengths must be paired with the scores")
    spread = float(delta.std())
    feature = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    raw = paired_interval(np.full(wins.size, 0.5), wins, confidence, n_resamples, seed)
    point = float(_lc_win_rate(wins, feature))
    if np.ptp(wins) > 0:  # verdicts that all agree leave nothing to resample
        low, high = bootstrap_interval([wins, feature], _lc_win_rate, paired=True, confidence=confidence,
                                       n_resamples=n_resamples, seed=seed)
    else:
        low = high = point
    longer = float(np.mean(delta > 0)) if delta.size else math.nan
    return {"win_rate": raw.challenger, "win_rate_ci_low": raw.ci_low + 0.5, "win_rate_ci_high": raw.ci_high + 0.5,
            "lc_win_rate": point, "lc_win_rate_ci_low": low, "lc_win_rate_ci_high": high,
            "challenger_longer_share": longer, "n": float(wins.size)}


def segment_evidence(segments: Mapping[str, tuple[Sequence[float], Sequence[float]]], policy: GatePolicy,
                     seed: int = 0) -> list[Evidence]:
    """Per segment (name -> (champion scores, challenger scores) on the primary metric): a row each; segments
    smaller than ``min_segment_size`` are listed but not judged."""
    rows = []
    for name, (champ, chall) in sorted(segments.items()):
        iv = paired_interval(champ, chall, seed=seed)
        if iv.n < policy.min_segment_size:
            rows.append(Evidence(f"segment {name}", "segment", iv.champion, iv.challenger, iv.diff, iv.ci_low,
                                 iv.ci_high, iv.n, None, f"fewer than {policy.min_segment_size} examples: not judged"))
            continue
        # A regression counts when it is both beyond the tolerance and significant (the interval is below 0).
        regressed = iv.diff < -policy.segment_tolerance and iv.ci_high < 0
        rows.append(Evidence(f"segment {name}", "segment", iv.champion, iv.challenger, iv.diff, iv.ci_low,
                             iv.ci_high, iv.n, not regressed))
    return rows


def decide(policy: GatePolicy, primary: Interval, guardrails: Sequence[Guardrail] = (),
           segments: Sequence[Evidence] = (), secondary: Sequence[Evidence] = ()) -> GateDecision:
    """The decision and its evidence. ``primary`` is the paired interval of the policy's primary metric."""
    enough = primary.n >= policy.min_examples
    primary_ok = enough and primary.ci_low > policy.margin
    evidence = [Evidence(policy.primary_metric, "primary", primary.champion, primary.challenger, primary.diff,
                         primary.ci_low, primary.ci_high, primary.n, primary_ok,
                         f"promote needs the CI above {policy.margin:+g}")]
    reasons = []
    if not enough:
        reasons.append(f"{policy.primary_metric}: only {primary.n} paired examples, fewer than the "
                       f"{policy.min_examples} a decision needs")
    elif primary_ok:
        reasons.append(f"{policy.primary_metric}: interval [{primary.ci_low:+.4f}, {primary.ci_high:+.4f}] lies above "
                       f"{policy.margin:+g}")
    elif primary.ci_high <= policy.margin:
        reasons.append(f"{policy.primary_metric}: interval [{primary.ci_low:+.4f}, {primary.ci_high:+.4f}] is not "
                       f"above {policy.margin:+g}; the challenger is not better")
    else:
        reasons.append(f"{policy.primary_metric}: interval [{primary.ci_low:+.4f}, {primary.ci_high:+.4f}] crosses "
                       f"{policy.margin:+g}; not proven with n={primary.n}")
    breached = [g for g in guardrails if g.breached()]
    for g in guardrails:
        evidence.append(Evidence(f"guardrail {g.name}", "guardrail", g.champion, g.challenger,
                                 g.challenger - g.champion, math.nan, math.nan, primary.n, g not in breached,
                                 f"worse if {g.worse_if} by more than {g.tolerance:g}{' (relative)' if g.relative else ''}"))
    for g in breached:
        reasons.append(f"guardrail {g.name} worse beyond tolerance: {g.champion:.4f} -> {g.challenger:.4f}")
    regressed = [s for s in segments if s.passed is False]
    for s in regressed:
        reasons.append(f"{s.name} regresses: {s.diff:+.4f} [{s.ci_low:+.4f}, {s.ci_high:+.4f}], n={s.n}")
    evidence += list(segments) + list(secondary)

    if not primary_ok or breached:
        decision: Decision = "keep"
    elif regressed:
        decision = "needs_review"  # better overall but worse for someone: a person weighs the trade
    elif policy.require_review:
        decision = "needs_review"
        reasons.append("policy requires a person to approve every promotion")
    else:
        decision = "promote"
    return GateDecision(decision, tuple(reasons), tuple(evidence), policy)


@dataclass(frozen=True)
class GateSimulation:
    """How often the gate promotes when the true difference is ``effect`` (share over ``trials``)."""

    effect: float
    n: int
    trials: int
    promote_rate: float
    promotions: int = field(default=0)


def simulate_gate(effect: float, n: int, trials: int, policy: GatePolicy, noise: float = 1.0,
                  seed: int = 0, n_resamples: int = 1000) -> GateSimulation:
    """Promotion rate of ``decide`` on simulated paired scores whose true mean difference is ``effect``."""
    rng = np.random.default_rng(seed)
    promoted = 0
    for trial in range(trials):
        champion = rng.normal(0.0, noise, n)
        challenger = champion * 0.5 + rng.normal(effect, noise * math.sqrt(0.75), n)  # correlated pairs
        iv = paired_interval(champion, challenger, n_resamples=n_resamples, seed=trial)
        promoted += decide(policy, iv).decision == "promote"
    return GateSimulation(effect, n, trials, promoted / trials, promoted)
