"""PNG charts of like rates for reports and the Dagster UI (``png_markdown`` embeds them in markdown metadata).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: no global
figure registry to leak memory in a long-running Dagster process, and no GUI backend is ever chosen.
Every chart has an empty state (a figure saying "no data") so a report on a quiet day still renders.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from feedback_pipeline.analysis.quality import segment_values
from feedback_pipeline.analysis.stats import wilson_interval

_DPI = 100  # ~40-80 KB per chart: small enough for asset metadata


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _no_data(title: str) -> bytes:
    fig = _figure(6, 2.5)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.6, "no data", ha="center", va="center", fontsize=18, color="0.4")
    ax.text(0.5, 0.25, title, ha="center", va="center", fontsize=10, color="0.4")
    return _png(fig)


def _period_start(created_at: pd.Series, freq: str) -> pd.Series:
    naive = pd.to_datetime(created_at, utc=True).dt.tz_localize(None)
    return naive.dt.to_period(freq).dt.start_time  # "W": weeks Mon-Sun, as in quality.weekly_trend


def like_rate_over_time(df: pd.DataFrame, by: str = "model_name", freq: str = "W", max_lines: int = 8) -> bytes:
    """Like rate per period (``freq`` "D" or "W"), one line per value of ``by`` with its Wilson 95% band.

    Only the ``max_lines`` values with most ratings get a line: more lines are unreadable, and the title says
    how many were left out. Periods without ratings leave a gap instead of an interpolated line.
    """
    rated = df[df["label"].isin(["liked", "disliked"])] if len(df) and "label" in df else df.iloc[:0]
    frame = pd.DataFrame({"segment": segment_values(rated[by]).to_numpy() if len(rated) else [],
                          "period": _period_start(rated["created_at"], freq).to_numpy() if len(rated) else [],
                          "liked": (rated["label"] == "liked").to_numpy(dtype=int), "n": 1})
    return like_rate_over_time_from_counts(frame, by, freq, max_lines)


def like_rate_over_time_from_counts(frame: pd.DataFrame, by: str = "model_name", freq: str = "W",
                                    max_lines: int = 8) -> bytes:
    """:func:`like_rate_over_time` from rated counts: columns segment, period (its start), liked, n (rated); from
    ``quality.segment_counts`` via :func:`period_frame`."""
    title = f"Like rate by {by} per {'day' if freq.upper().startswith('D') else 'week'}"
    if frame.empty:
        return _no_data(title)
    counts = frame.groupby(["segment", "period"])[["liked", "n"]].sum()
    sizes = counts.groupby(level="segment")["n"].sum().sort_values(ascending=False, kind="stable")
    shown = list(sizes.index[:max_lines])
    periods = pd.period_range(frame["period"].min(), frame["period"].max(), freq=freq).start_time
    fig = _figure()
    ax = fig.add_subplot()
    for segment in shown:
        per = counts.loc[segment].reindex(periods, fill_value=0)
        n = per["n"].to_numpy()
        rate = np.where(n > 0, per["liked"] / np.maximum(n, 1), np.nan)
        bands = np.array([wilson_interval(int(k), int(m)) for k, m in zip(per["liked"], n)])
        line, = ax.plot(periods, rate, marker="o", markersize=4, label=f"{segment} (n={int(n.sum())})")
        ax.fill_between(periods, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.15, linewidth=0)
        # A band over a lone period (no ratings on either side) has no width: show its interval as a bar.
        has = np.r_[False, n > 0, False]
        lone = has[1:-1] & ~has[:-2] & ~has[2:]
        ax.vlines(periods[lone], bands[lone, 0], bands[lone, 1], color=line.get_color(), alpha=0.4)
    left_out = len(sizes) - len(shown)
    ax.set_title(title + (f" ({left_out} smaller {by} values not shown)" if left_out else ""))
    ax.set_ylim(-0.02, 1.02)  # a little room so points at 0% and 100% are not cut in half
    if len(periods) == 1:  # a lone date would otherwise get an axis spanning years
        step = (periods[0] + pd.tseries.frequencies.to_offset(freq)) - periods[0]
        ax.set_xlim(periods[0] - step, periods[0] + step)
    ax.set_ylabel("like rate (95% CI)")
    ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return _png(fig)


def period_frame(segments: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Rated counts per (segment, period start) from ``quality.segment_counts`` (rows per segment, day, label)."""
    rated = segments[segments["label"].isin(["liked", "disliked"])]
    return pd.DataFrame({"segment": rated["segment"].to_numpy(),
                         "period": _period_start(rated["day"], freq).to_numpy() if len(rated) else [],
                         "liked": rated["n"].where(rated["label"] == "liked", 0).to_numpy(dtype=int),
                         "n": rated["n"].to_numpy(dtype=int)})


def segment_bars(table: pd.DataFrame, title: str = "Like rate by segment", max_bars: int = 20) -> bytes:
    """Horizontal bars of ``like_rate`` with Wilson error bars, from a :func:`like_rate_by` table.

    Keeps the table's order (worst first) top to bottom. Segments without enough data are drawn pale, as the
    report lists them apart; rows with no rated answers have no rate to draw and are skipped.
    """
    rows = table[table["n_rated"] > 0].head(max_bars) if len(table) else table
    if rows.empty:
        return _no_data(title)
    rate = rows["like_rate"].to_numpy(dtype=float)
    err = np.vstack([rate - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - rate])
    enough = rows["enough_data"].to_numpy(dtype=bool) if "enough_data" in rows else np.ones(len(rows), dtype=bool)
    y = np.arange(len(rows))[::-1]  # first row on top
    fig = _figure(8, max(2.5, 0.35 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ax.barh(y, rate, xerr=err, color=np.where(enough, "tab:blue", "lightsteelblue"), ecolor="0.3", capsize=3)
    ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(rows["segment"], rows["n_rated"])], fontsize=8)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_xlabel("like rate (95% CI)" + ("; pale: too little data" if not enough.all() else ""))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def png_markdown(png_bytes: bytes, alt: str) -> str:
    """A markdown image with the PNG inline as a base64 data URI (Dagster's ``MetadataValue.md`` renders it)."""
    alt = alt.replace("[", "(").replace("]", ")").replace("\n", " ")  # brackets would end the alt text early
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode('ascii')})"
