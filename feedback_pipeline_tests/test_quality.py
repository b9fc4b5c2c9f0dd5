import math

import pandas as pd
import pytest

from feedback_pipeline.analysis.quality import like_rate_by, quality_report, report_markdown
from feedback_pipeline.analysis.stats import compare_rates, wilson_interval

Z95 = 1.959963984540054  # standard normal 97.5% quantile, written out so the test does not reuse scipy


def wilson_by_hand(k, n, z=Z95):
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


DEFAULTS = {"user_id": "u", "session_id": "s", "model_name": "m", "model_version": "1", "project": "p"}
DEFAULTS |= {"rating_stars": None, "comment": None, "latency_ms": 100, "tools_called": [], "source": "test"}
RATING = {"liked": 1, "disliked": -1, "neutral": 0}
COLUMNS = [*DEFAULTS, "id", "created_at", "query", "response", "intent", "subject", "label", "rating", "rating_thumb"]


def feedback(rows):
    """A cleaned-feedback frame from (segment, label, created_at) tuples; other columns get plain defaults."""
    records = [
        DEFAULTS
        | {"id": str(i), "created_at": pd.Timestamp(created, tz="UTC"), "query": f"q{i}", "response": f"r{i}"}
        | {"intent": segment, "subject": segment, "label": label}
        | {"rating": float(RATING[label]), "rating_thumb": RATING[label]}
        for i, (segment, label, created) in enumerate(rows)
    ]
    return pd.DataFrame(records, columns=COLUMNS)  # columns: so that an empty frame has them too


def segment_rows(segment, liked, disliked, neutral=0, day="2024-03-06"):
    counts = {"liked": liked, "disliked": disliked, "neutral": neutral}
    return [(segment, label, day) for label, count in counts.items() for _ in range(count)]


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (81, 263), (15, 148), (1, 1)])
def test_wilson_matches_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


def test_wilson_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I, score method.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=5e-5)


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    low, high = wilson_interval(3, 10, confidence=0.99)
    low95, high95 = wilson_interval(3, 10)
    assert low < low95 and high > high95
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_compare_rates():
    # Fisher's tea-tasting table: two-sided p = 34/70.
    diff, p = compare_rates(3, 4, 1, 4)
    assert diff == pytest.approx(0.5)
    assert p == pytest.approx(34 / 70)
    assert compare_rates(10, 20, 10, 20) == pytest.approx((0.0, 1.0))
    diff, p = compare_rates(10, 100, 90, 100)
    assert diff == pytest.approx(-0.8) and p < 1e-20
    assert all(math.isnan(x) for x in compare_rates(0, 0, 1, 2))


def test_like_rate_by_orders_worst_first_and_sets_small_aside():
    df = feedback(
        segment_rows("good", 12, 3, neutral=5)
        + segment_rows("bad", 5, 15)
        + segment_rows("tiny", 0, 3)
        + segment_rows(None, 2, 0)
        + segment_rows("  ", 1, 1)
    )
    table = like_rate_by(df, "subject", min_count=10)
    assert table["segment"].tolist() == ["bad", "good", "(unknown)", "tiny"]
    assert table["enough_data"].tolist() == [True, True, False, False]
    good = table.set_index("segment").loc["good"]
    assert (good["n_rated"], good["liked"], good["disliked"]) == (15, 12, 3)  # neutral rows not counted
    assert good["like_rate"] == pytest.approx(0.8)
    assert (good["ci_low"], good["ci_high"]) == pytest.approx(wilson_by_hand(12, 15))
    # (unknown) merges None and blank: 3 liked of 4.
    assert table.set_index("segment").loc["(unknown)", "n_rated"] == 4

    ranked = like_rate_by(df, "subject", min_count=3)
    assert ranked["segment"].tolist()[:2] == ["tiny", "bad"]  # 0/3 is now ranked, and worst


def test_segment_with_only_neutral_rows_has_no_rate():
    table = like_rate_by(feedback(segment_rows("quiet", 0, 0, neutral=4) + segment_rows("x", 10, 0)), "subject")
    quiet = table.set_index("segment").loc["quiet"]
    assert quiet["n_rated"] == 0 and math.isnan(quiet["like_rate"]) and not quiet["enough_data"]


def test_quality_report_and_markdown():
    df = feedback(
        segment_rows("billing", 3, 9, day="2024-03-04")  # a Monday
        + segment_rows("search", 8, 2, neutral=2, day="2024-03-10")  # the Sunday of the same week
        + segment_rows("tiny", 1, 0, day="2024-03-20")  # two weeks later: one empty week between
    )
    report = quality_report(df, segments=("subject", "model_name"), min_count=10)
    assert report.overall["rows"] == 25 and report.overall["rated"] == 23 and report.overall["liked"] == 12
    assert report.overall["ci"] == pytest.approx(wilson_by_hand(12, 23))
    assert list(report.tables) == ["subject", "model_name"]

    weekly = report.weekly
    assert weekly["week"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-04", "2024-03-11", "2024-03-18"]
    assert weekly["n_rated"].tolist() == [22, 0, 1]
    assert weekly["like_rate"].iloc[0] == pytest.approx(11 / 22)

    md = report_markdown(report)
    assert "25 feedback rows, 23 rated" in md and "52.2%" in md  # 12/23
    low, high = wilson_by_hand(3, 12)
    assert f"| billing | 12 | 3 | 9 | 25.0% | {100 * low:.1f}%–{100 * high:.1f}% |" in md
    assert md.index("| billing |") < md.index("| search |")  # worst first
    assert "Too little data" in md and "tiny (1)" in md
    assert "## Weekly trend" in md and "| 2024-03-11 | 0 | 0 | 0 | n/a | n/a |" in md


def test_quality_report_rejects_missing_columns():
    with pytest.raises(KeyError):
        quality_report(feedback(segment_rows("a", 1, 1)).drop(columns=["subject"]))


def test_empty_frame():
    df = feedback([])
    report = quality_report(df, segments=("subject",))
    assert report.overall["rated"] == 0 and report.tables["subject"].empty
    assert "0 feedback rows" in report_markdown(report)


def test_bootstrap_interval_agrees_with_a_hand_written_percentile_bootstrap():
    """scipy.stats.bootstrap replaced numpy index resampling: same interval up to Monte Carlo error."""
    import numpy as np

    from feedback_pipeline.analysis.stats import bootstrap_interval

    rng = np.random.default_rng(0)
    liked, disliked = rng.normal(0.2, 1.0, 200), rng.normal(-0.1, 1.5, 150)
    idx_l = rng.integers(0, liked.size, (4000, liked.size))
    idx_d = rng.integers(0, disliked.size, (4000, disliked.size))
    by_hand = np.percentile(liked[idx_l].mean(axis=1) - disliked[idx_d].mean(axis=1), [2.5, 97.5])
    low, high = bootstrap_interval([liked, disliked], lambda a, b, axis: a.mean(axis) - b.mean(axis),
                                   n_resamples=4000, seed=1)
    assert (low, high) == pytest.approx(tuple(by_hand), abs=0.03)
    # paired: the same resampled rows for both samples
    paired = bootstrap_interval([liked[:150], disliked], lambda a, b, axis: (a - b).mean(axis), paired=True, seed=1)
    diff = liked[:150] - disliked
    assert paired[0] < diff.mean() < paired[1]


def test_bootstrap_interval_edges():
    from feedback_pipeline.analysis.stats import bootstrap_interval

    mean = lambda x, axis: x.mean(axis)  # noqa: E731
    assert bootstrap_interval([[1.0, 1.0, 1.0]], mean) == (1.0, 1.0)  # no spread: zero width, not NaN
    assert bootstrap_interval([[0.5]], mean) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_interval([[0.0, 1.0]], mean, n_resamples=0))
    # a one-element sample is held fixed; the other is resampled
    low, high = bootstrap_interval([[0.0, 1.0, 0.0, 1.0], [0.25]], lambda a, b, axis: a.mean(axis) - b.mean(axis))
    assert low < 0.25 < high
    with pytest.raises(ValueError):
        bootstrap_interval([[1.0, 2.0], [1.0]], lambda a, b, axis: (a - b).mean(axis), paired=True)
