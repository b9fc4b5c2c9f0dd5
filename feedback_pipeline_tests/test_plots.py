import base64
import io

import matplotlib.image
import pandas as pd
import pytest

from feedback_pipeline.analysis.plots import like_rate_over_time, png_markdown, segment_bars
from feedback_pipeline.analysis.quality import like_rate_by

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def feedback(n_days=21):
    rows = []
    for day in range(n_days):
        for model, liked_every in (("chat-a", 2), ("chat-b", 4), ("chat-c", 3)):
            for i in range(6):
                rows.append({"created_at": pd.Timestamp("2024-03-04", tz="UTC") + pd.Timedelta(days=day, hours=i),
                             "model_name": model, "intent": f"intent-{i % 3}",
                             "label": "liked" if i % liked_every else "disliked"})
    return pd.DataFrame(rows)


def pixels(png):
    assert png.startswith(PNG_MAGIC)
    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.mark.parametrize("freq", ["D", "W"])
def test_like_rate_over_time_draws_a_real_chart(freq):
    png = like_rate_over_time(feedback(), by="model_name", freq=freq)
    image = pixels(png)
    assert image.shape[:2] == (450, 800) and len(png) > 10_000
    assert image.std() > 0.05  # lines and bands, not a blank canvas


def test_more_segments_than_lines_and_a_gap():
    df = feedback()
    df = df[~df["created_at"].between(pd.Timestamp("2024-03-10", tz="UTC"), pd.Timestamp("2024-03-13", tz="UTC"))]
    df = pd.concat([df, df.head(3).assign(model_name=None)])
    png = like_rate_over_time(df, by="model_name", freq="D", max_lines=2)
    assert pixels(png).shape[:2] == (450, 800)


def test_segment_bars_from_like_rate_by():
    table = like_rate_by(feedback(), "intent", min_count=10)
    small = like_rate_by(feedback(1).head(4), "intent", min_count=10)  # all below min_count: drawn pale
    for t in (table, small):
        png = segment_bars(t, title="Like rate by intent")
        assert pixels(png).std() > 0.05 and len(png) > 5_000


@pytest.mark.parametrize("df", [
    feedback().iloc[:0],
    feedback().head(1),
    feedback().head(5).assign(label="neutral"),
])
def test_empty_and_tiny_frames_do_not_crash(df):
    for png in (like_rate_over_time(df), like_rate_over_time(df, freq="D"), segment_bars(like_rate_by(df, "intent"))):
        assert pixels(png).size > 0 and len(png) > 2_000


def test_no_data_figure_differs_from_one_row_chart():
    one = like_rate_over_time(feedback().head(1))
    none = like_rate_over_time(feedback().iloc[:0])
    assert pixels(one).shape != pixels(none).shape  # one row is a (one-point) chart, not "no data"


def test_png_markdown_round_trips():
    png = segment_bars(like_rate_by(feedback(), "intent"))
    md = png_markdown(png, "Like rate [by intent]")
    assert md.startswith("![Like rate (by intent)](data:image/png;base64,") and md.endswith(")")
    assert base64.b64decode(md.split("base64,", 1)[1][:-1]) == png
