"""What to do next, with the evidence: turns the quality, pattern and error-type analyses into suggestions.

Each suggestion names its target (a cluster, segment or error type), the numbers behind it and a priority.
Priority is roughly the number of disliked answers the suggestion could address (for too_little_data, a
value below 1), so it orders suggestions of different kinds; it is not a probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from feedback_pipeline.analysis.patterns import ErrorCluster, ErrorPatterns
from feedback_pipeline.analysis.quality import UNKNOWN, fmt_ci, fmt_pct, md_cell, segment_values

FRAME_COLUMNS = ["kind", "target", "title", "evidence", "metrics", "priority"]


@dataclass(frozen=True)
class Suggestion:
    kind: str  # sft_candidates | length_gap | error_type | too_little_data | cluster_trend
    target: str
    title: str
    evidence: str
    metrics: dict = field(default_factory=dict)
    priority: float = 0.0


def _prompt_keys(df: pd.DataFrame) -> pd.Series:
    # The prompt as datasets/preference.py pairs thumbs: history + query, lower-cased, whitespace collapsed.
    def key(history, query) -> str:
        turns = list(history) if isinstance(history, (list, tuple, np.ndarray)) else []
        messages = [(m.get("role"), m.get("content")) for m in turns if isinstance(m, dict)] + [("user", query)]
        return json.dumps([[r, " ".join(str(c).lower().split())] for r, c in messages], ensure_ascii=False)
    history = df["history"] if "history" in df else pd.Series([None] * len(df), index=df.index)
    return pd.Series([key(h, q) for h, q in zip(history, df["query"])], index=df.index, dtype=object)


def _sft_candidates(df: pd.DataFrame, clusters: Sequence[ErrorCluster]) -> list[Suggestion]:
    usable = df[~df["exclude_from_training"].astype(bool)] if "exclude_from_training" in df else df
    keys = _prompt_keys(usable)
    liked_per_prompt = keys[usable["label"] == "liked"].value_counts()
    out = []
    for c in clusters:
        member_keys = keys[usable["id"].isin(c.ids) & (usable["label"] == "disliked")]
        per_member = member_keys.map(liked_per_prompt).fillna(0).astype(int)
        pairs, prompts = int(per_member.sum()), int(member_keys[per_member > 0].nunique())
        found = f"{c.liked_nearby} liked answers on the same topic and {pairs} liked/disliked pairs to the same " \
                f"prompt ({prompts} prompts)"
        actions = [f"add {c.liked_nearby} liked answers to the next SFT set"] if c.liked_nearby else []
        actions += [f"{pairs} preference pair{'s' if pairs > 1 else ''} available"] if pairs else []
        title = f"Cluster '{c.name}': " + (", ".join(actions) or "no good answer on record, write reference answers")
        evidence = f"{c.size} disliked answers (dislike rate {fmt_pct(c.dislike_rate)}, 95% CI " \
                   f"{fmt_ci(c.ci_low, c.ci_high)}); {found}."
        if c.example_queries:
            evidence += f" Example question: \"{c.example_queries[0]}\"."
        metrics = {"cluster_id": c.id, "disliked": c.size, "liked_nearby": c.liked_nearby, "preference_pairs": pairs,
                   "prompts_with_pairs": prompts, "dislike_rate": c.dislike_rate}
        out.append(Suggestion("sft_candidates", f"cluster {c.id}: {c.name}", title, evidence, metrics,
                              float(c.size) * (1.0 if c.liked_nearby or pairs else 0.5)))
    return out


def _length_gaps(df: pd.DataFrame, columns: Sequence[str], min_count: int, min_ratio: float) -> list[Suggestion]:
    rated = df[df["label"].isin(["liked", "disliked"])]
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
            how = f"{ratio:.1f}x shorter" if ratio > 1 else f"{1 / ratio:.1f}x longer"
            evidence = f"median {md:.0f} characters in {len(disliked)} disliked vs {ml:.0f} in {len(liked)} liked " \
                       f"answers (Mann-Whitney p={p_value:.2g})."
            metrics = {"column": column, "segment": segment, "median_liked_chars": ml, "median_disliked_chars": md,
                       "ratio": ratio, "n_liked": len(liked), "n_disliked": len(disliked), "p_value": p_value}
            gap = 1 - min(ratio, 1 / ratio)
            out.append(Suggestion("length_gap", f"{column}={segment}",
                                  f"Disliked answers for {column} '{segment}' are {how} than liked ones",
                                  evidence, metrics, len(disliked) * gap))
    return out


def _error_types(summary: pd.DataFrame, min_flagged: int, min_ratio: float) -> list[Suggestion]:
    out = []
    for r in summary.to_dict("records"):
        # tool_failure counts "tools called and disliked" as a failure: its dislike rate is high by definition.
        if not r["checked"] or r["type"] == "tool_failure" or pd.isna(r["n_flagged"]) or r["n_flagged"] < min_flagged:
            continue
        n, k = int(r["n_flagged"]), int(r["n_disliked_flagged"])
        flagged, others = r["dislike_rate_flagged"], r["dislike_rate_unflagged"]
        if not (flagged >= min_ratio * others and r["p_value"] < 0.05):
            continue
        evidence = f"{k} of {n} flagged answers disliked: {fmt_pct(flagged)} (95% " \
                   f"CI {fmt_ci(r['ci_low_flagged'], r['ci_high_flagged'])}) vs {fmt_pct(others)} (95% CI " \
                   f"{fmt_ci(r['ci_low_unflagged'], r['ci_high_unflagged'])}) of the rest; p={r['p_value']:.2g}."
        if r["examples"]:
            evidence += f" Example: \"{r['examples'][0]}\""
        metrics = {"n_flagged": n, "n_disliked_flagged": k, "dislike_rate_flagged": flagged,
                   "dislike_rate_unflagged": others, "p_value": r["p_value"]}
        title = f"'{r['type']}' answers are disliked {flagged / max(others, 1e-9):.1f}x as often as the rest"
        out.append(Suggestion("error_type", r["type"], title, evidence, metrics, float(n * (flagged - others))))
    return out


def _too_little_data(tables: Mapping[str, pd.DataFrame], min_count: int) -> list[Suggestion]:
    return [Suggestion("too_little_data", f"{column}={r['segment']}",
                       f"{column} '{r['segment']}' has too little feedback to judge (n={r['n_rated']})",
                       f"{r['n_rated']} rated answers; its like rate means little below {min_count}.",
                       {"column": column, "segment": r["segment"], "n_rated": int(r["n_rated"])},
                       (min_count - int(r["n_rated"])) / min_count)
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
        if mine.min() >= split:
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
    """new / growing / shrinking / stable per cluster id, from its members' weekly counts over ``weeks`` weeks.

    Compares the later half of the window with the earlier half, the earlier count scaled by how overall
    feedback volume changed (more traffic is not a growing problem). Growing or shrinking needs a factor of 1.5
    and a change of at least 3 answers; new means no member older than the later half. Clusters none of whose
    members are in ``df`` are left out.
    """
    return {cid: d["trend"] for cid, d in _trend_details(df, clusters, weeks).items()}


def _cluster_trend_suggestions(df: pd.DataFrame, clusters: Sequence[ErrorCluster], weeks: int) -> list[Suggestion]:
    out, details = [], _trend_details(df, clusters, weeks)
    for c in clusters:
        d = details.get(c.id)
        if d is None or d["trend"] == "stable":
            continue
        trend, later = d["trend"], d["later"]
        evidence = f"disliked answers per week, oldest first: {d['weekly_counts']}; {later} in the last {weeks // 2} " \
                   f"weeks vs {d['expected']:.1f} expected from the weeks before at today's traffic."
        if not any(d["weekly_counts"]):
            evidence = f"no disliked answer on this topic in the last {weeks} weeks (last seen in the week of " \
                       f"{d['last_seen']})."
        priority = {"new": later, "growing": later - d["expected"], "shrinking": 0.1}[trend]
        out.append(Suggestion("cluster_trend", f"cluster {c.id}: {c.name}", f"Cluster '{c.name}' is {trend}",
                              evidence, {"cluster_id": c.id, **d}, float(priority)))
    return out


def suggest(
    df: pd.DataFrame,
    patterns: ErrorPatterns | Sequence[ErrorCluster],
    error_summary: pd.DataFrame,
    quality_tables: Mapping[str, pd.DataFrame],
    min_count: int = 20,
    length_columns: Sequence[str] = ("intent",),
    length_ratio: float = 2.0,
    error_ratio: float = 1.5,
    min_flagged: int = 5,
    weeks: int = 4,
) -> list[Suggestion]:
    """All suggestions, highest priority first.

    ``error_summary`` is :func:`error_types.error_type_summary` output, ``quality_tables`` is
    ``QualityReport.tables``. A length gap needs ``min_count`` rated answers in the segment, 5 of each label,
    medians ``length_ratio`` apart and Mann-Whitney p < 0.05; an error type needs ``min_flagged`` flagged
    answers, a dislike rate ``error_ratio`` times the rest and Fisher p < 0.05.
    """
    clusters = patterns.clusters if isinstance(patterns, ErrorPatterns) else list(patterns)
    found = _sft_candidates(df, clusters) + _length_gaps(df, length_columns, min_count, length_ratio) \
        + _error_types(error_summary, min_flagged, error_ratio) + _too_little_data(quality_tables, min_count) \
        + _cluster_trend_suggestions(df, clusters, weeks)
    return sorted(found, key=lambda s: -s.priority)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def suggestions_frame(suggestions: Sequence[Suggestion]) -> pd.DataFrame:
    """Rows for the improvement_suggestions table; ``metrics`` as a JSON string."""
    rows = [[s.kind, s.target, s.title, s.evidence, json.dumps(s.metrics, sort_keys=True, default=_plain), s.priority]
            for s in suggestions]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def suggestions_markdown(suggestions: Sequence[Suggestion]) -> str:
    lines = ["## Suggestions", ""]
    if not suggestions:
        return "\n".join(lines + ["Nothing stands out: no suggestion has enough evidence yet."]) + "\n"
    lines += [f"{i}. **{md_cell(s.title)}** ({s.kind}, priority {s.priority:.1f})  \n   {md_cell(s.evidence)}"
              for i, s in enumerate(suggestions, start=1)]
    return "\n".join(lines) + "\n"
