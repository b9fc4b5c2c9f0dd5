import math

import pandas as pd
import pytest

from feedback_pipeline.analysis.drift import COLUMNS, detect_drops, drops_markdown, lower_cusum

MONDAY = pd.Timestamp("2024-04-01", tz="UTC")


def weeks(segment, liked_per_week, n_per_week, start_week=0):
    """Exact counts: in week i, ``liked_per_week[i]`` of ``n_per_week`` ratings are likes, spread over the week."""
    rows = []
    for w, liked in enumerate(liked_per_week, start=start_week):
        for i in range(n_per_week):
            at = MONDAY + pd.Timedelta(days=7 * w) + pd.Timedelta(hours=(i * 167) // n_per_week)
            rows.append({"intent": segment, "created_at": at, "label": "liked" if i < liked else "disliked"})
    return rows


def table_for(*segments, **kwargs):
    df = pd.DataFrame([row for seg in segments for row in seg])
    return detect_drops(df, "intent", **kwargs).set_index("segment")


def test_planted_drop_is_flagged_stable_and_small_segments_are_not():
    t = table_for(
        weeks("billing", [48, 48, 48, 48, 30], 60),  # 80% -> 50% in the last week
        weeks("coding", [48, 48, 48, 48, 47], 60),  # stable
        weeks("poetry", [4, 4, 4, 4, 1], 5),  # 80% -> 20%, but 5 ratings a week
    )
    billing = t.loc["billing"]
    assert billing["alarm"] and billing["n_recent"] == 60 and billing["n_baseline"] == 240
    assert billing["baseline_rate"] == pytest.approx(0.8) and billing["recent_rate"] == pytest.approx(0.5)
    assert billing["drop"] == pytest.approx(0.3) and billing["p_value"] < 1e-4
    assert billing["window_start"] == pd.Timestamp("2024-04-29", tz="UTC")
    assert "down 30.0 points" in billing["reason"]
    assert not t.loc["coding"]["alarm"] and "below" in t.loc["coding"]["reason"]
    assert not t.loc["poetry"]["alarm"] and t.loc["poetry"]["reason"].startswith("too little data")
    assert list(t.index)[0] == "billing"  # alarms first


def test_cusum_catches_a_steady_decline_the_weekly_test_misses():
    t = table_for(weeks("search", [85, 80, 75, 70, 65], 100))
    row = t.loc["search"]
    assert row["p_value"] > 0.01  # 65% vs a pooled 77.5% baseline is not significant on its own
    assert row["cusum"] == pytest.approx(4.638, abs=1e-3)  # z = -1.80, -0.60, 0.60, 1.80, 2.99 (se 0.0418), k 0.25
    assert row["cusum"] > 4 and row["alarm"] and "CUSUM" in row["reason"]


def test_lower_cusum_by_hand():
    # p0 = 0.8, n = 100, se = 0.04: z = 0, 2.5, 5 -> S = 0, 2.0, 6.5 with k = 0.5
    assert lower_cusum([80, 70, 60], [100, 100, 100], 0.8, k=0.5) == pytest.approx(6.5)
    assert lower_cusum([80, 70, 60], [100, 100, 100], 0.8) == pytest.approx(7.0)  # default k = 0.25
    assert lower_cusum([90, 90], [100, 100], 0.8) == 0.0  # improvements never accumulate
    assert lower_cusum([0, 50], [0, 100], 0.8, k=0.5) == pytest.approx(7.0)  # an empty period is skipped
    assert lower_cusum([5], [10], 1.0) == 0.0


def test_latest_window_is_shared_and_old_segments_are_left_out():
    t = table_for(
        weeks("billing", [48, 48, 48, 48, 30], 60),
        weeks("retired", [40] * 4, 60, start_week=-10),  # nothing in the last five weeks
        weeks("silent", [48] * 4, 60),  # no feedback in the latest week
    )
    assert "retired" not in t.index
    assert t.loc["silent"]["n_recent"] == 0 and math.isnan(t.loc["silent"]["recent_rate"])
    assert not t.loc["silent"]["alarm"]


def test_daily_periods_and_neutral_rows():
    rows = weeks("billing", [48, 48, 48, 48, 30], 60)
    df = pd.DataFrame(rows)
    df["created_at"] = [MONDAY + pd.Timedelta(days=i // 60, minutes=i % 60) for i in range(len(df))]
    df = pd.concat([df, df.tail(10).assign(label="neutral")], ignore_index=True)  # neutral never counts
    t = detect_drops(df, "intent", freq="D").set_index("segment")
    assert t.loc["billing"]["n_recent"] == 60 and t.loc["billing"]["alarm"]
    assert t.loc["billing"]["window_start"] == pd.Timestamp("2024-04-05", tz="UTC")


def test_empty_frame_and_markdown():
    empty = detect_drops(pd.DataFrame(columns=["intent", "created_at", "label"]), "intent")
    assert list(empty.columns) == COLUMNS and empty.empty
    assert "No rated feedback" in drops_markdown(empty)
    t = detect_drops(pd.DataFrame(weeks("billing", [48, 48, 48, 48, 30], 60) + weeks("coding", [48] * 5, 60)), "intent")
    md = drops_markdown(t)
    assert "| billing | 80.0% | 50.0% | 30.0 |" in md and "- coding: no drop" in md
    quiet = drops_markdown(t[t["segment"] == "coding"])
    assert "No segment's like rate dropped significantly." in quiet


def test_no_baseline_period_is_said_once_not_as_too_little_data():
    # A first import: everything in the latest week, thousands of ratings, nothing before it.
    t = detect_drops(pd.DataFrame(weeks("billing", [2000], 3000) + weeks("coding", [2900], 2982)), "intent")
    assert set(t["reason"]) == {"no baseline period yet"} and not t["alarm"].any()
    md = drops_markdown(t)
    assert md.count("No baseline period yet") == 1 and "too little data" not in md
    assert "all 5982 rated answers fall in the latest period (from 2024-04-01)" in md
    # A segment new this week beside ones with history: named once, apart from the judged ones.
    mixed = detect_drops(pd.DataFrame(weeks("billing", [48, 48, 48, 48, 47], 60)
                                      + weeks("fresh", [30], 40, start_week=4)), "intent")
    md = drops_markdown(mixed)
    assert "- billing: drop" in md and "No baseline period yet (new since 2024-04-29): fresh" in md
    assert mixed.set_index("segment").loc["fresh", "reason"] == "no baseline period yet"


def test_no_baseline_said_once_across_segment_columns():
    df = pd.DataFrame(weeks("billing", [40], 50) + weeks("coding", [45], 50)).assign(model="m1")
    table = pd.concat([detect_drops(df, column).assign(column=column) for column in ("intent", "model")])
    md = drops_markdown(table)
    assert md.count("No baseline period yet") == 1 and "all 100 rated answers" in md  # not 200: one row, two columns
    history = pd.DataFrame(weeks("billing", [48, 48, 48, 48, 47], 60)).assign(model="m1")
    both = pd.concat([detect_drops(history, c).assign(column=c) for c in ("intent", "model")])
    assert "- intent=billing: drop" in drops_markdown(both) and "- model=m1: drop" in drops_markdown(both)
