"""Excess dislikes over a baseline (with a Newcombe interval), and what tells disliked from liked answers apart.

A finding (a topic cluster, an error type, the short answers of a segment) holds ``n`` rated answers, ``k`` of
them disliked; its baseline is the dislike rate of the *other* rated answers of the same scope. Excess dislikes
are ``k - n * baseline_rate``; the interval is ``n`` times Newcombe's hybrid-score interval for the difference
of the two rates (method 10 of Newcombe 1998, built from two Wilson intervals), so it stays sensible for small
findings and rates near 0 or 1. A finding is *failing* only when that interval lies wholly above zero; one whose
rate is above the baseline but not beyond chance is *watch*; one at or below the baseline is nothing to report.

:func:`contrast` compares disliked with liked answers of one topic: length, the rule-based error types, the
query-answer similarity, missing retrieved context and the words of the raters' comments. Each difference
needs p < ``alpha``; the words need more (many are tried at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from feedback_pipeline.analysis.stats import wilson_interval

# Comments say what is wrong with negations ("not relevant", "doesn't answer"): keep them, drop the rest.
_NEGATIONS = {"not", "no", "nothing", "never", "without", "only", "too", "more",
              "less", "few", "enough", "much", "very"}
_COMMENT_STOP = sorted((ENGLISH_STOP_WORDS - _NEGATIONS)
                       | {"answer", "answers", "question", "information", "info", "does", "did", "doesn", "didn",
                          "isn", "just", "talks", "says", "provides", "gives", "response"})
_FUNCTION = _NEGATIONS | {"does", "did", "doesn", "didn", "isn"}  # a term of these words alone names nothing
_TOKEN = r"(?u)\b[^\W\d_]\w+\b"


@dataclass(frozen=True)
class Excess:
    n: int
    disliked: int
    baseline_n: int
    baseline_disliked: int
    rate: float
    baseline_rate: float
    diff: float  # rate - baseline_rate
    diff_low: float
    diff_high: float

    @property
    def excess(self) -> float:
        return self.n * self.diff

    @property
    def excess_low(self) -> float:
        return self.n * self.diff_low

    @property
    def excess_high(self) -> float:
        return self.n * self.diff_high

    @property
    def status(self) -> str:
        if math.isnan(self.diff) or self.diff <= 0:
            return "fine"
        return "failing" if self.diff_low > 0 else "watch"

    def metrics(self) -> dict:
        return {"n": self.n, "disliked": self.disliked, "dislike_rate": self.rate, "baseline_n": self.baseline_n,
                "baseline_disliked": self.baseline_disliked, "baseline_rate": self.baseline_rate,
                "excess_dislikes": self.excess, "excess_low": self.excess_low, "excess_high": self.excess_high,
                "status": self.status}

    def describe(self) -> str:
        return (f"{self.disliked} of {self.n} disliked ({self.rate:.1%}) vs {self.baseline_rate:.1%} of the other "
                f"{self.baseline_n}: {self.excess:+.1f} dislikes over the baseline (95% CI {self.excess_low:+.1f} "
                f"to {self.excess_high:+.1f})")


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(p1 - p2, low, high)``: Newcombe's hybrid-score interval for a difference of two independent rates."""
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, confidence), wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def excess_dislikes(disliked: int, n: int, rest_disliked: int, rest_n: int, confidence: float = 0.95) -> Excess:
    """Excess dislikes of a finding (``disliked`` of ``n``) over the rest of its scope (``rest_disliked`` of
    ``rest_n``)."""
    d, low, high = newcombe_interval(disliked, n, rest_disliked, rest_n, confidence)
    return Excess(int(n), int(disliked), int(rest_n), int(rest_disliked), disliked / n if n else math.nan,
                  rest_disliked / rest_n if rest_n else math.nan, d, low, high)


@dataclass(frozen=True)
class Difference:
    feature: str  # length | query_similarity | no_context | comment_terms | an error type
    text: str  # what goes wrong, in words
    disliked_value: float
    liked_value: float
    p_value: float
    terms: tuple[str, ...] = ()


def _fisher(k1: int, n1: int, k2: int, n2: int) -> float:
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue)


def comment_terms(disliked: pd.Series, liked: pd.Series, top_k: int = 5, min_count: int = 3,
                  alpha: float = 0.01) -> list[tuple[str, float, float, float]]:
    """Words and two-word phrases found in more disliked than liked comments: ``(term, share disliked, share
    liked, p)``, the largest gap first. Each needs ``min_count`` disliked comments and one-sided Fisher p <
    ``alpha``; a phrase hides the single words it contains when it is as frequent."""
    bad = [c for c in disliked if isinstance(c, str) and c.strip()]
    good = [c for c in liked if isinstance(c, str) and c.strip()]
    if len(bad) < min_count or len(good) < min_count:  # words of one topic are no contrast without liked ones
        return []
    try:
        vec = CountVectorizer(stop_words=_COMMENT_STOP, token_pattern=_TOKEN, ngram_range=(1, 2), binary=True,
                              min_df=min_count)
        counts = vec.fit_transform(bad + good)
    except ValueError:  # nothing but stop words, or no term often enough
        return []
    in_bad = np.asarray(counts[: len(bad)].sum(axis=0)).ravel()
    in_good = np.asarray(counts[len(bad):].sum(axis=0)).ravel()
    found = []
    for term, kb, kg in zip(vec.get_feature_names_out(), in_bad, in_good):
        share_b, share_g = kb / len(bad), kg / max(len(good), 1)
        if kb < min_count or share_b <= share_g or set(str(term).split()) <= _FUNCTION:
            continue
        p = _fisher(int(kb), len(bad), int(kg), len(good))
        if p < alpha:
            found.append((str(term), share_b, share_g, p))
    # Largest gap first, single words before phrases at equal gaps; a term sharing a word with one kept before
    # it says nothing new ("irrelevant" hides "irrelevant refuses"; "not relevant" hides "relevant").
    found.sort(key=lambda t: (-(t[1] - t[2]), len(t[0].split()), t[0]))
    kept: list[tuple[str, float, float, float]] = []
    for term in found:
        if not any(set(term[0].split()) & set(k[0].split()) for k in kept):
            kept.append(term)
    return kept[:top_k]


def _has_context(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0


def contrast(
    rows: pd.DataFrame,
    flags: pd.DataFrame | None = None,
    similarity: pd.Series | None = None,
    alpha: float = 0.05,
    min_each: int = 3,
    min_ratio: float = 1.5,
) -> list[Difference]:
    """How the disliked rows of ``rows`` (one topic, labels liked/disliked) differ from its liked rows.

    ``flags`` is :func:`error_types.classify_errors` output and ``similarity`` the query-answer cosine, both
    indexed like ``rows`` (or a superset). Differences need ``min_each`` rows of each label; the largest
    effect comes first within each feature kind.
    """
    bad, good = rows[rows["label"] == "disliked"], rows[rows["label"] == "liked"]
    out: list[Difference] = []
    if len(bad) < min_each or len(good) < min_each:
        return out
    length = rows["response"].fillna("").astype(str).str.strip().str.len()
    lb, lg = length[bad.index], length[good.index]
    mb, mg = float(lb.median()), float(lg.median())
    p = float(stats.mannwhitneyu(lb, lg).pvalue)
    ratio = max(mb, 1.0) / max(mg, 1.0)
    if p < alpha and (ratio >= min_ratio or ratio <= 1 / min_ratio):
        how = f"{ratio:.1f}x longer" if ratio > 1 else f"{1 / ratio:.1f}x shorter"
        out.append(Difference("length", f"disliked answers are {how} (median {mb:.0f} vs {mg:.0f} characters)",
                              mb, mg, p))
    if similarity is not None:
        sb, sg = similarity.reindex(bad.index).dropna(), similarity.reindex(good.index).dropna()
        if len(sb) >= min_each and len(sg) >= min_each:
            p = float(stats.mannwhitneyu(sb, sg, alternative="less").pvalue)
            if p < alpha:
                out.append(Difference("query_similarity", f"disliked answers are further from their question "
                                      f"(median similarity {sb.median():.2f} vs {sg.median():.2f})",
                                      float(sb.median()), float(sg.median()), p))
    if "retrieved_context" in rows:
        has = rows["retrieved_context"].map(_has_context)
        if has.any():
            kb, kg = int((~has[bad.index]).sum()), int((~has[good.index]).sum())
            p = _fisher(kb, len(bad), kg, len(good))
            if p < alpha:
                out.append(Difference("no_context", f"{kb / len(bad):.0%} of disliked answers had no retrieved "
                                      f"context vs {kg / len(good):.0%} of liked", kb / len(bad), kg / len(good), p))
    for kind in flags.columns if flags is not None else []:
        column = flags[kind].reindex(rows.index)
        fb, fg = column[bad.index].dropna().astype(bool), column[good.index].dropna().astype(bool)
        if len(fb) < min_each or len(fg) < min_each or fb.sum() < min_each:
            continue
        p = _fisher(int(fb.sum()), len(fb), int(fg.sum()), len(fg))
        if p < alpha:
            out.append(Difference(kind, f"{fb.mean():.0%} of disliked answers are '{kind}' vs {fg.mean():.0%} of "
                                  "liked", float(fb.mean()), float(fg.mean()), p))
    return out + _comment_difference(bad, good)


def _comment_difference(bad: pd.DataFrame, good: pd.DataFrame) -> list[Difference]:
    if "comment" not in bad:
        return []
    terms = comment_terms(bad["comment"], good["comment"])
    if not terms:
        return []
    shown = ", ".join(f"'{t}' ({b:.0%} vs {g:.0%})" for t, b, g, _ in terms[:3])
    return [Difference("comment_terms", f"raters' comments on disliked vs liked answers say {shown}",
                       terms[0][1], terms[0][2], terms[0][3], tuple(t for t, *_ in terms))]
