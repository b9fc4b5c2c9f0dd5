"""What to do next, with the evidence: turns the quality, pattern and error-type analyses into suggestions.

One suggestion per finding: a topic cluster (``failure_cluster``: what tells its disliked answers from its liked
ones, its trend and the training data at hand, in one entry), a segment whose disliked answers are much shorter
or longer (``length_gap``), a rule-based error type (``error_type``), a segment with too little feedback
(``too_little_data``). Findings are ranked by *excess dislikes*: dislikes observed minus those expected at the
dislike rate of the other rated answers of the same scope, with a Newcombe 95% interval
(:mod:`feedback_pipeline.analysis.contrast`). ``status`` is "failing" when the interval lies above zero,
"watch" when only the estimate does, "note" for too_little_data; findings at or below the baseline are dropped,
so a topic disliked less often than the average never shows up as failing.

``priority`` orders the stored rows: failing findings carry their excess dislikes (> 0), notes 0, watch findings
the lower end of their interval (<= 0), so every failing finding ranks above every other. It is not a
probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from feedback_pipeline.analysis.contrast import Excess, contrast, excess_dislikes
from feedback_pipeline.analysis.patterns import ErrorCluster, ErrorPatterns
from feedback_pipeline.analysis.quality import UNKNOWN, fmt_ci, fmt_pct, md_cell, segment_values

FRAME_COLUMNS = ["kind", "target", "title", "evidence", "metrics", "priority"]


@dataclass(frozen=True)
class Suggestion:
    kind: str  # failure_cluster | length_gap | error_type | too_little_data
    target: str
    title: str
    evidence: str
    metrics: dict = field(default_factory=dict)
    priority: float = 0.0  # excess dislikes for failing findings; see the module docstring
    status: str = "failing"  # failing | watch | note


def _prompt_keys(df: pd.DataFrame) -> pd.Series:
    # The prompt as datasets/preference.py pairs thumbs: history + query, lower-cased, whitespace collapsed.
    def key(history, query) -> str:
        turns = list(history) if isinstance(history, (list, tuple, np.ndarray)) else []
        messages = [(m.get("role"), m.get("content")) for m in turns if isinstance(m, dict)] + [("user", query)]
        return json.dumps([[r, " ".join(str(c).lower().split())] for r, c in messages], ensure_ascii=False)
    history = df["history"] if "history" in df else pd.Series([None] * len(df), index=df.index)
    return pd.Series([key(h, q) for h, q in zip(history, df["query"])], index=df.index, dtype=object)


def _rated(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["label"].isin(["liked", "disliked"])]


def _pairs(df: pd.DataFrame, c: ErrorCluster) -> tuple[int, int]:
    """Liked/disliked pairs to the same prompt among the cluster's disliked rows, and the prompts they span."""
    usable = df[~df["exclude_from_training"].astype(bool)] if "exclude_from_training" in df else df
    keys = _prompt_keys(usable)
    liked_per_prompt = keys[usable["label"] == "liked"].value_counts()
    member_keys = keys[usable["id"].isin(c.ids) & (usable["label"] == "disliked")]
    per_member = member_keys.map(liked_per_prompt).fillna(0).astype(int)
    return int(per_member.sum()), int(member_keys[per_member > 0].nunique())


def _cluster_findings(df: pd.DataFrame, clusters: Sequence[ErrorCluster], fraction: float, weeks: int,
                      flags: pd.DataFrame | None, similarity: pd.Series | None) -> list[Suggestion]:
    """One finding per topic cluster: its excess dislikes over the other rated answers, and what tells its
    disliked answers from its liked ones (what goes wrong), plus the trend and the training data at hand."""
    rated, trends = _rated(df), _trend_details(df, clusters, weeks) if len(df) else {}
    disliked_all = int((rated["label"] == "disliked").sum())
    out = []
    for c in clusters:
        inside = rated["id"].isin(c.ids) | rated["id"].isin(c.liked_ids)
        k, n = c.size, c.size + c.liked_nearby
        excess = excess_dislikes(k, n, disliked_all - k, len(rated) - n)  # baseline: every other rated answer
        if excess.status == "fine":
            continue
        diffs = contrast(rated[inside], flags, similarity)
        pairs, prompts = _pairs(df, c)
        what = "; ".join(d.text for d in diffs) or "nothing measured tells its disliked answers from its liked ones"
        actions = [f"add {c.liked_nearby} liked answers on this topic to the next SFT set"] if c.liked_nearby else \
            ["no liked answer on this topic: write reference answers"]
        actions += [f"{pairs} liked/disliked pairs to the same prompt ({prompts} prompts) for preference training"] \
            if pairs else []
        scale = f" Counts are from a {fraction:.0%} sample: about {excess.excess / fraction:.0f} excess dislikes " \
                "in all." if fraction < 1 else ""
        trend = trends.get(c.id, {})
        evidence = f"{excess.describe()}.{scale} What differs: {what}. To do: {'; '.join(actions)}."
        if trend.get("trend") in ("new", "growing", "shrinking"):
            evidence += f" Trend over {weeks} weeks: {trend['trend']} (weekly disliked {trend['weekly_counts']})."
        if c.example_queries:
            evidence += f" Example question: \"{c.example_queries[0]}\"."
        headline = diffs[0].text if diffs else "disliked more often than the rest"
        metrics = {"cluster_id": c.id, **excess.metrics(), "liked_nearby": c.liked_nearby, "preference_pairs": pairs,
                   "prompts_with_pairs": prompts, "sample_fraction": fraction, "trend": trend.get("trend"),
                   "differences": [{"feature": d.feature, "disliked": d.disliked_value, "liked": d.liked_value,
                                    "p_value": d.p_value, "terms": list(d.terms)} for d in diffs]}
        out.append(Suggestion("failure_cluster", f"cluster {c.id}: {c.name}", f"Topic '{c.name}': {headline}",
                              evidence, metrics, _priority(excess, fraction), excess.status))
    return out


def _length_gaps(df: pd.DataFrame, columns: Sequence[str], min_count: int, min_ratio: float) -> list[Suggestion]:
    """Segments whose disliked answers are much shorter (or longer) than liked ones. The finding's rows are the
    segment's answers on the disliked side of the geometric mean of the two medians; its baseline the others."""
    rated = _rated(df)
    length = rated["response"].fillna("").astype(str).str.strip().str.len()
    out = []
    for column in columns:
        for segment, idx in rated.groupby(segment_values(rated[column])).groups.items():
            labels = rated.loc[idx, "label"]
            liked, disliked = length[idx][labels == "liked"], length[idx][labels == "disliked"]
            if len(idx) < min_count or min(len(liked), len(disliked)) < 5 or segment == UNKNOWN:
                continue
            ml, md = float(liked.median()), float(disliked.median())
            ratio = ml / max(md, 1.0)
            p_value = float(stats.mannwhitneyu(liked, disliked).pvalue)
            if p_value >= 0.05 or 1 / min_ratio < ratio < min_ratio:
                continue
            cut = float(np.sqrt(max(ml, 1.0) * max(md, 1.0)))
            side = length[idx] < cut if ratio > 1 else length[idx] > cut
            k = int((labels[side] == "disliked").sum())
            excess = excess_dislikes(k, int(side.sum()), len(disliked) - k, int((~side).sum()))
            if excess.status == "fine":
                continue
            how = f"{ratio:.1f}x shorter" if ratio > 1 else f"{1 / ratio:.1f}x longer"
            evidence = f"median {md:.0f} characters in {len(disliked)} disliked vs {ml:.0f} in {len(liked)} liked " \
                       f"answers (Mann-Whitney p={p_value:.2g}). Answers {'under' if ratio > 1 else 'over'} " \
                       f"{cut:.0f} characters: {excess.describe()}."
            metrics = {"column": column, "segment": segment, "median_liked_chars": ml, "median_disliked_chars": md,
                       "ratio": ratio, "cut_chars": cut, "n_liked": len(liked), "n_disliked": len(disliked),
                       "p_value": p_value, **excess.metrics()}
            out.append(Suggestion("length_gap", f"{column}={segment}",
                                  f"Disliked answers for {column} '{segment}' are {how} than liked ones",
                                  evidence, metrics, _priority(excess), excess.status))
    return out


def _error_types(summary: pd.DataFrame, min_flagged: int) -> list[Suggestion]:
    out = []
    for r in summary.to_dict("records"):
        # tool_failure counts "tools called and disliked" as a failure: its dislike rate is high by definition.
        if not r["checked"] or r["type"] == "tool_failure" or pd.isna(r["n_flagged"]) or r["n_flagged"] < min_flagged:
            continue
        n, k = int(r["n_flagged"]), int(r["n_disliked_flagged"])
        rest_n = int(r["n_unflagged"])
        excess = excess_dislikes(k, n, int(round(r["dislike_rate_unflagged"] * rest_n)) if rest_n else 0, rest_n)
        if excess.status == "fine":
            continue
        flagged, others = r["dislike_rate_flagged"], r["dislike_rate_unflagged"]
        evidence = f"{k} of {n} flagged answers disliked: {fmt_pct(flagged)} (95% " \
                   f"CI {fmt_ci(r['ci_low_flagged'], r['ci_high_flagged'])}) vs {fmt_pct(others)} (95% CI " \
                   f"{fmt_ci(r['ci_low_unflagged'], r['ci_high_unflagged'])}) of the rest; p={r['p_value']:.2g}; " \
                   f"{excess.excess:+.1f} dislikes over the baseline (95% CI {excess.excess_low:+.1f} to " \
                   f"{excess.excess_high:+.1f})."
        if r["examples"]:
            evidence += f" Example: \"{r['examples'][0]}\""
        metrics = {"n_flagged": n, "n_disliked_flagged": k, "dislike_rate_flagged": flagged,
                   "dislike_rate_unflagged": others, "p_value": r["p_value"], **excess.metrics()}
        title = f"'{r['type']}' answers are disliked {flagged / max(others, 1e-9):.1f}x as often as the rest"
        out.append(Suggestion("error_type", r["type"], title, evidence, metrics, _priority(excess), excess.status))
    return out


def _too_little_data(tables: Mapping[str, pd.DataFrame], min_count: int) -> list[Suggestion]:
    return [Suggestion("too_little_data", f"{column}={r['segment']}",
                       f"{column} '{r['segment']}' has too little feedback to judge (n={r['n_rated']})",
                       f"{r['n_rated']} rated answers; its like rate means little below {min_count}.",
                       {"column": column, "segment": r["segment"], "n_rated": int(r["n_rated"]), "status": "note"},
                       0.0, "note")
            for column, table in tables.items() for r in table.to_dict("records")
            if r["n_rated"] < min_count and r["segment"] != UNKNOWN]


def _weeks(created_at: pd.Series) -> pd.Series:
    ts = pd.to_datetime(created_at, utc=True)
    return (ts - pd.to_timedelta(ts.dt.weekday, unit="D")).dt.normalize()  # Monday 00:00 UTC, as weekly_trend


def _trend_details(df: pd.DataFrame, clusters: Sequence[ErrorCluster], weeks: int, min_change: int = 3) -> dict:
    if weeks < 2:
        raise ValueError(f"a trend needs at least 2 weeks, got {weeks}")
    if df.empty:
        return {}
    week = _weeks(df["created_at"])
    window = pd.date_range(end=week.max(), periods=weeks, freq="7D")
    split = window[weeks - weeks // 2]  # first week of the later half
    history = week.min() < split  # without feedback before the later half, nothing can be "new"
    totals = (week[week.isin(window)] >= split).value_counts()
    traffic = totals.get(True, 0) / totals.get(False, 0) if totals.get(False, 0) else 1.0
    details = {}
    for c in clusters:
        mine = week[df["id"].isin(c.ids)]
        if mine.empty:
            continue  # members unknown to this frame: nothing to say
        counts = [int((mine == w).sum()) for w in window]
        later = sum(counts[weeks - weeks // 2:])
        expected = (sum(counts) - later) * traffic  # earlier count scaled by the change in overall traffic
        if not history:
            label = "no earlier period"
        elif mine.min() >= split:
            label = "new"
        elif later >= 1.5 * expected and later - expected >= min_change:
            label = "growing"
        elif (later <= expected / 1.5 and expected - later >= min_change) or not any(counts):
            label = "shrinking"
        else:
            label = "stable"
        details[c.id] = {"trend": label, "weekly_counts": counts, "later": later, "expected": expected,
                         "last_seen": mine.max().strftime("%Y-%m-%d")}
    return details


def cluster_trends(df: pd.DataFrame, clusters: Sequence[ErrorCluster], weeks: int = 4) -> dict[int, str]:
    """new / growing / shrinking / stable per cluster id, from its members' weekly counts over ``weeks`` weeks;
    "no earlier period" for all when the frame holds no feedback before the later half of the window.

    Compares the later half of the window with the earlier half, the earlier count scaled by how overall
    feedback volume changed (more traffic is not a growing problem). Growing or shrinking needs a factor of 1.5
    and a change of at least 3 answers; new means no member older than the later half. Clusters none of whose
    members are in ``df`` are left out.
    """
    return {cid: d["trend"] for cid, d in _trend_details(df, clusters, weeks).items()}


def _priority(excess: Excess, scale: float = 1.0) -> float:
    """Excess dislikes for a failing finding; the lower end of the interval (<= 0) for one to watch."""
    return excess.excess / scale if excess.status == "failing" else min(0.0, excess.excess_low / scale)


def _order(s: Suggestion) -> tuple:
    return -s.priority, {"failing": 0, "note": 1, "watch": 2}[s.status]


def suggest(
    df: pd.DataFrame,
    patterns: ErrorPatterns | Sequence[ErrorCluster],
    error_summary: pd.DataFrame,
    quality_tables: Mapping[str, pd.DataFrame],
    min_count: int = 20,
    length_columns: Sequence[str] = ("intent",),
    length_ratio: float = 2.0,
    min_flagged: int = 5,
    weeks: int = 4,
    flags: pd.DataFrame | None = None,
    similarity: pd.Series | None = None,
) -> list[Suggestion]:
    """All suggestions, one per finding: failing ones by excess dislikes, then notes, then watch ones.

    ``error_summary`` is :func:`error_types.error_type_summary` output, ``quality_tables`` is
    ``QualityReport.tables``; ``flags`` (:func:`error_types.classify_errors` on the rated rows) and
    ``similarity`` (query-answer cosine per row) let a cluster say what its disliked answers have that its liked
    ones lack. A length gap needs ``min_count`` rated answers in the segment, 5 of each label, medians
    ``length_ratio`` apart and Mann-Whitney p < 0.05; an error type needs ``min_flagged`` flagged answers.
    """
    clusters = patterns.clusters if isinstance(patterns, ErrorPatterns) else list(patterns)
    fraction = patterns.sample_fraction if isinstance(patterns, ErrorPatterns) else 1.0
    found = _cluster_findings(df, clusters, fraction, weeks, flags, similarity) \
        + _length_gaps(df, length_columns, min_count, length_ratio) + _error_types(error_summary, min_flagged) \
        + _too_little_data(quality_tables, min_count)
    return sorted(found, key=_order)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def suggestions_frame(suggestions: Sequence[Suggestion]) -> pd.DataFrame:
    """Rows for the improvement_suggestions table; ``metrics`` as a JSON string."""
    rows = [[s.kind, s.target, s.title, s.evidence, json.dumps(s.metrics, sort_keys=True, default=_plain), s.priority]
            for s in suggestions]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


_SECTIONS = {"failing": "Failing: more dislikes than the baseline, beyond chance",
             "note": "Notes",
             "watch": "Watch: above the baseline, but within chance (the lower end of the interval first)"}


_QUOTE = (' Example question: "', ' Example: "')


def without_quotes(evidence: str) -> str:
    """The evidence without its quoted example (always its last sentence)."""
    for marker in _QUOTE:
        evidence = evidence.split(marker)[0]
    return evidence


def suggestions_markdown(suggestions: Sequence[Suggestion], quotes: bool = True) -> str:
    """Markdown for analysts; ``quotes=False`` leaves out the quoted examples (for Dagster's metadata)."""
    lines = ["## Suggestions", ""]
    if not suggestions:
        return "\n".join(lines + ["Nothing stands out: no suggestion has enough evidence yet."]) + "\n"
    lines += ["Ranked by excess dislikes: dislikes observed minus those expected at the dislike rate of the other "
              "rated answers in the same scope, with a 95% interval.", ""]
    numbered = list(enumerate(suggestions, start=1))
    for status, heading in _SECTIONS.items():
        mine = [(i, s) for i, s in numbered if s.status == status]
        if mine:
            lines += [f"### {heading}", ""]
            lines += [f"{i}. **{md_cell(s.title)}** ({s.kind}, {s.status}, priority {s.priority:.1f})  \n"
                      f"   {md_cell(s.evidence if quotes else without_quotes(s.evidence))}" for i, s in mine] + [""]
    return "\n".join(lines)
