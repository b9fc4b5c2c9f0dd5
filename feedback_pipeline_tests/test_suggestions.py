import json

import pandas as pd
import pytest

from feedback_pipeline.analysis.error_types import SUMMARY_COLUMNS
from feedback_pipeline.analysis.patterns import ErrorCluster, ErrorPatterns
from feedback_pipeline.analysis.quality import like_rate_by
from feedback_pipeline.analysis.stats import wilson_interval
from feedback_pipeline.analysis.suggestions import (
    FRAME_COLUMNS,
    Suggestion,
    cluster_trends,
    suggest,
    suggestions_frame,
    suggestions_markdown,
)

MONDAY = pd.Timestamp("2024-04-01", tz="UTC")  # week 0; the frame runs to week 5, the trend window is weeks 2-5
FIX = "How do I fix my printer?"


def row(id, week, label, query=None, response="x" * 300, **extra):
    return {"id": id, "created_at": MONDAY + pd.Timedelta(days=7 * week, hours=10), "query": query or f"question {id}",
            "response": response, "history": [], "intent": "support", "subject": "general", "label": label,
            "exclude_from_training": False} | extra


def planted() -> pd.DataFrame:
    rows = [row("p0", 0, "disliked", FIX), row("p1", 2, "disliked", FIX), row("p2", 3, "disliked", "Printer offline")]
    rows += [row(f"p{i}", w, "disliked") for i, w in zip(range(3, 8), (4, 4, 5, 5, 5))]
    rows += [row(f"fix-liked{i}", 5, "liked", "how do I FIX my   printer?") for i in range(3)]  # same prompt, normalised
    rows += [row("offline-liked", 5, "liked", "Printer offline")]
    rows += [row("spam-liked", 5, "liked", FIX, exclude_from_training=True)]  # excluded: no pair
    rows += [row("other-turn", 5, "liked", FIX, history=[{"role": "user", "content": "hi"}])]  # another prompt
    rows += [row(f"o{i}", 5, "disliked") for i in range(6)]  # poem cluster: all in the last week
    rows += [row(f"t{i}", w, "disliked") for i, w in enumerate((2, 2, 3, 3, 4, 4, 5, 5))]  # tax: steady
    rows += [row(f"w{i}", w, "disliked") for i, w in enumerate((2, 2, 2, 2, 3, 3, 3, 3))]  # weather: gone lately
    rows += [row(f"c-liked{i}", 1, "liked", intent="coding", subject="programming", response="y" * 600) for i in range(12)]
    rows += [row(f"c-bad{i}", 1, "disliked", intent="coding", subject="programming", response="y" * 200) for i in range(10)]
    rows += [row(f"g{i}", 1, "liked" if i % 3 else "disliked", subject="gardening") for i in range(12)]
    rows += [row(f"u{i}", 1, "liked", subject=None) for i in range(3)]
    df = pd.DataFrame(rows)
    # Same overall traffic in both halves of the trend window, so counts compare directly.
    week = (df["created_at"] - MONDAY).dt.days // 7
    gap = int((week.isin([2, 3])).sum() - (week.isin([4, 5])).sum())
    fill = [row(f"f{i}", 4 if gap > 0 else 2, "liked") for i in range(abs(gap))]
    return pd.concat([df, pd.DataFrame(fill)], ignore_index=True)


class _Cluster(ErrorCluster):
    def __or__(self, changes):  # cluster(...) | {"liked_ids": [...]}
        for key, value in changes.items():
            setattr(self, key, value)
        return self


def cluster(cid, name, ids, liked_nearby=0):
    return _Cluster(id=cid, name=name, terms=name.split(", "), size=len(ids), liked_nearby=liked_nearby,
                        dislike_rate=len(ids) / (len(ids) + liked_nearby), ci_low=0.1, ci_high=0.9,
                        example_queries=["How do I fix my printer?"], example_responses=["Turn it off."],
                        sample_comments=[], ids=ids)


CLUSTERS = [
    cluster(0, "printer, driver", [f"p{i}" for i in range(8)], liked_nearby=12),
    cluster(1, "poem, rhyme", [f"o{i}" for i in range(6)]),
    cluster(2, "tax, return", [f"t{i}" for i in range(8)], liked_nearby=4),
    cluster(3, "weather, forecast", [f"w{i}" for i in range(8)], liked_nearby=2),
]


def error_summary():
    def rates(kind, k1, n1, k2, n2, p_value, checked=True):
        if not checked:
            return {"type": kind, "checked": False, "examples": []}
        (l1, h1), (l2, h2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
        return {"type": kind, "checked": True, "n_flagged": n1, "n_disliked_flagged": k1, "dislike_rate_flagged": k1 / n1,
                "ci_low_flagged": l1, "ci_high_flagged": h1, "n_unflagged": n2, "dislike_rate_unflagged": k2 / n2,
                "ci_low_unflagged": l2, "ci_high_unflagged": h2, "p_value": p_value, "examples": ["I'm sorry, but I can't."]}
    return pd.DataFrame([
        rates("refusal", 30, 40, 50, 200, 1e-8),  # 75% vs 25%: suggested
        rates("repetition", 3, 10, 50, 200, 0.7),  # no real difference
        rates("truncated", 3, 3, 50, 200, 0.01),  # too few flagged
        rates("tool_failure", 20, 20, 50, 200, 1e-9),  # high by construction: never suggested
        rates("slow", 0, 0, 0, 0, 0, checked=False),
    ], columns=SUMMARY_COLUMNS)


@pytest.fixture(scope="module")
def suggestions():
    df = planted()
    tables = {"subject": like_rate_by(df, "subject", min_count=20), "intent": like_rate_by(df, "intent", min_count=20)}
    return suggest(df, ErrorPatterns({}, CLUSTERS, 40, 10), error_summary(), tables, min_count=20)


def by_kind(suggestions, kind):
    return {s.target: s for s in suggestions if s.kind == kind}


def test_cluster_findings_count_liked_neighbours_and_same_prompt_pairs(suggestions):
    found = by_kind(suggestions, "failure_cluster")
    # printer: 8 disliked + 12 liked nearby = 40% disliked, below the others' rate: never a failing finding.
    assert "cluster 0: printer, driver" not in found
    poem = found["cluster 1: poem, rhyme"]
    assert poem.metrics["preference_pairs"] == 0 and "write reference answers" in poem.evidence
    assert poem.metrics["n"] == 6 and poem.metrics["disliked"] == 6 and poem.status == "failing"
    # A cluster above the rest's rate: 8 disliked + 2 liked nearby; pairs to the same (normalised) prompt count.
    printer = cluster(0, "printer, driver", [f"p{i}" for i in range(8)], liked_nearby=2)
    (found,) = by_kind(suggest(planted(), [printer], error_summary().iloc[:0], {}), "failure_cluster").values()
    # p0, p1 x 3 liked answers to the same normalised prompt + p2 x 1; the excluded and other-history rows do not count
    assert found.metrics["preference_pairs"] == 7 and found.metrics["prompts_with_pairs"] == 2
    assert "add 2 liked answers on this topic to the next SFT set" in found.evidence


def test_one_entry_per_finding_and_no_new_on_a_first_run():
    df = planted()
    first_run = df.assign(created_at=MONDAY + pd.Timedelta(hours=3))  # everything in one week: no earlier period
    assert set(cluster_trends(first_run, CLUSTERS).values()) == {"no earlier period"}
    found = suggest(first_run, CLUSTERS, error_summary(), {}, min_count=20)
    targets = [(s.kind, s.target) for s in found]
    assert len(targets) == len(set(targets))  # one entry per finding
    assert sum(s.target.startswith("cluster 1:") for s in found) == 1
    assert not any("new" in s.title or "is new" in s.evidence for s in found)


def test_length_gap_only_where_lengths_differ(suggestions):
    gaps = by_kind(suggestions, "length_gap")
    assert set(gaps) == {"intent=coding"}
    coding = gaps["intent=coding"]
    assert coding.title == "Disliked answers for intent 'coding' are 3.0x shorter than liked ones"
    assert coding.metrics["median_liked_chars"] == 600 and coding.metrics["median_disliked_chars"] == 200
    assert coding.metrics["p_value"] < 0.001
    # the finding: the 10 coding answers under sqrt(600 * 200) characters, all disliked, vs 0 of 12 others
    assert coding.metrics["n"] == 10 and coding.metrics["baseline_rate"] == 0
    assert coding.priority == pytest.approx(10.0) and coding.status == "failing"


def test_error_type_ranked_by_excess_with_interval(suggestions):
    errors = by_kind(suggestions, "error_type")
    assert set(errors) == {"refusal", "repetition"}  # truncated: too few flagged; tool_failure: never
    refusal = errors["refusal"]
    assert refusal.title == "'refusal' answers are disliked 3.0x as often as the rest"
    assert "30 of 40 flagged answers disliked: 75.0%" in refusal.evidence and "vs 25.0%" in refusal.evidence
    assert refusal.priority == pytest.approx(20.0) and refusal.status == "failing"  # 40 flagged x 50 points
    assert refusal.metrics["excess_low"] > 0 and refusal.metrics["excess_high"] > 20
    repetition = errors["repetition"]  # 30% vs 25% of 10: above the baseline, within chance
    assert repetition.status == "watch" and repetition.priority <= 0
    assert repetition.metrics["excess_dislikes"] == pytest.approx(0.5)


def test_too_little_data_names_small_segments(suggestions):
    small = by_kind(suggestions, "too_little_data")
    assert set(small) == {"subject=gardening"}  # "(unknown)" is nobody's to collect
    assert small["subject=gardening"].title == "subject 'gardening' has too little feedback to judge (n=12)"
    assert small["subject=gardening"].status == "note" and small["subject=gardening"].priority == 0


def test_cluster_trends_go_into_the_cluster_finding(suggestions):
    df = planted()
    assert cluster_trends(df, CLUSTERS) == {0: "growing", 1: "new", 2: "stable", 3: "shrinking"}
    assert not by_kind(suggestions, "cluster_trend")
    poem = by_kind(suggestions, "failure_cluster")["cluster 1: poem, rhyme"]
    assert poem.metrics["trend"] == "new" and "Trend over 4 weeks: new (weekly disliked [0, 0, 0, 6])" in poem.evidence
    assert cluster_trends(df, [cluster(9, "ghost", ["nope"])]) == {}


def test_more_traffic_is_not_a_growing_cluster():
    rows = [row(f"m{i}", w, "disliked") for i, w in enumerate((2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5))]
    members = cluster(0, "m", [r["id"] for r in rows])
    steady = pd.DataFrame(rows + [row(f"f{i}", 2 + i % 2, "liked") for i in range(4)])  # 8 rows in each half
    doubled = pd.DataFrame(rows + [row("old", 0, "liked")])  # 4 rows earlier, 8 later: traffic doubled too
    assert cluster_trends(steady, [members]) == {0: "growing"}
    assert cluster_trends(doubled, [members]) == {0: "stable"}


def topic_frame(rates: dict[str, tuple[int, int]]) -> tuple[pd.DataFrame, list[ErrorCluster]]:
    """One topic per key with (disliked, liked) rows; returns the frame and one cluster per topic."""
    rows, clusters = [], []
    for cid, (name, (bad, good)) in enumerate(rates.items()):
        rows += [row(f"{name}-d{i}", 1, "disliked") for i in range(bad)]
        rows += [row(f"{name}-l{i}", 1, "liked") for i in range(good)]
        clusters.append(cluster(cid, name, [f"{name}-d{i}" for i in range(bad)], liked_nearby=good)
                        | {"liked_ids": [f"{name}-l{i}" for i in range(good)]})
    return pd.DataFrame(rows), clusters


def test_below_average_cluster_never_ranks_as_failing_and_excess_orders_the_rest():
    # Overall 240 of 600 disliked (40%). "big" has the most dislikes but a rate below the rest: it must not fail.
    df, clusters = topic_frame({"big": (60, 140), "sharp": (30, 10), "mild": (45, 55), "tiny": (4, 1),
                                "filler": (101, 154)})
    found = suggest(df, clusters, error_summary().iloc[:0], {})
    by_target = {s.target.split(": ")[1]: s for s in found}
    assert "big" not in by_target  # 30% vs 41% of the rest: dropped, whatever its raw count
    sharp, mild = by_target["sharp"], by_target["mild"]
    assert sharp.status == "failing" and mild.status in {"failing", "watch"}
    # excess = observed - n x the others' rate: sharp 30 - 40 x 210/560, mild 45 - 100 x 195/500
    assert sharp.metrics["excess_dislikes"] == pytest.approx(30 - 40 * 210 / 560)
    assert mild.metrics["excess_dislikes"] == pytest.approx(45 - 100 * 195 / 500)
    failing = [s for s in found if s.status == "failing"]
    assert [s.priority for s in failing] == sorted((s.metrics["excess_dislikes"] for s in failing), reverse=True)
    assert all(s.metrics["excess_low"] > 0 for s in failing)
    assert found.index(sharp) < found.index(by_target["tiny"])  # 4 of 5: high rate, tiny excess, wide interval
    assert [s.priority for s in found] == sorted((s.priority for s in found), reverse=True)


def test_cluster_says_what_differs_between_its_disliked_and_liked_answers():
    rows = [row(f"d{i}", 1, "disliked", response="I'm sorry, but I can't help with that." + " " * i,
                comment="irrelevant, it refuses") for i in range(8)]
    rows += [row(f"l{i}", 1, "liked", response="Here is how: " + "step " * 80, comment="clear and complete")
             for i in range(8)]
    rows += [row(f"x{i}", 1, "liked" if i % 4 else "disliked") for i in range(40)]
    df = pd.DataFrame(rows)
    from feedback_pipeline.analysis.error_types import classify_errors

    topic = cluster(0, "help", [f"d{i}" for i in range(8)], 8) | {"liked_ids": [f"l{i}" for i in range(8)]}
    found = suggest(df, [topic], error_summary().iloc[:0], {}, flags=classify_errors(df))
    (topic,) = by_kind(found, "failure_cluster").values()
    features = {d["feature"] for d in topic.metrics["differences"]}
    assert {"length", "refusal", "comment_terms"} <= features
    assert "disliked answers are" in topic.title and "shorter" in topic.evidence
    terms = next(d["terms"] for d in topic.metrics["differences"] if d["feature"] == "comment_terms")
    assert "irrelevant" in terms and "clear" not in terms


def test_sorted_by_priority_and_frame_and_markdown(suggestions):
    assert [s.priority for s in suggestions] == sorted((s.priority for s in suggestions), reverse=True)
    assert {s.kind for s in suggestions} == {"failure_cluster", "length_gap", "error_type", "too_little_data"}
    frame = suggestions_frame(suggestions)
    assert list(frame.columns) == FRAME_COLUMNS and len(frame) == len(suggestions)
    metrics = [json.loads(m) for m in frame["metrics"]]
    assert metrics[0] == json.loads(json.dumps(suggestions[0].metrics, default=str))
    md = suggestions_markdown(suggestions)
    assert md.startswith("## Suggestions") and "1. **'refusal' answers are disliked 3.0x as often as the rest**" in md
    assert "### Failing" in md and "### Watch" in md and "### Notes" in md
    assert "No suggestion" not in md and "Nothing stands out" in suggestions_markdown([])
    assert suggestions_frame([]).columns.tolist() == FRAME_COLUMNS
    with pytest.raises(AttributeError):
        suggestions[0].priority = 0  # frozen
    assert isinstance(suggestions[0], Suggestion)
