"""Like-rate drops per segment: is this week worse than the weeks before it?

Two complementary detectors on the same periods:

- a test of the latest period against the pooled baseline (the ``baseline_periods`` periods before it):
  Fisher's exact test via :func:`compare_rates`, which stays valid for small segments. It catches a sudden
  drop (a bad deploy).
- a one-sided lower CUSUM over baseline + latest period, each period's rate standardised against the
  baseline rate: S_t = max(0, S_{t-1} + (p0 - p_t) / se_t - k). It accumulates small, steady declines that
  no single week shows significantly. k = 0.25 (tuned to half-sigma shifts) and h = 4 alarmed on fewer than
  1.5% of simulated stable segments (binomial weeks of 20-300 ratings, like rates 0.5-0.95, five periods)
  and on 72% of simulated steady falls from 85% to 65% over five weeks of 100 ratings (k = 0.5: 56%).

A segment alarms only with enough data on both sides and a drop of at least ``min_drop`` (absolute), so a
huge segment does not alarm on a statistically real but irrelevant 1-point dip.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from feedback_pipeline.analysis.quality import fmt_pct, md_cell, md_table, segment_values
from feedback_pipeline.analysis.stats import compare_rates

COLUMNS = ["segment", "window_start", "baseline_rate", "recent_rate", "drop", "p_value", "n_recent",
           "n_baseline", "cusum", "alarm", "reason"]


def _periods(created_at: pd.Series, freq: str) -> pd.PeriodIndex:
    # Periods are computed on naive UTC: pandas drops the zone with a warning otherwise. "W" weeks run Mon-Sun.
    naive = pd.to_datetime(created_at, utc=True).dt.tz_localize(None)
    return pd.PeriodIndex(naive.dt.to_period(freq))


def lower_cusum(liked: np.ndarray, rated: np.ndarray, target: float, k: float = 0.25) -> float:
    """Final value of the one-sided lower CUSUM of per-period like rates against ``target``.

    Periods without ratings are skipped; a target of 0 or 1 has no binomial spread, so nothing accumulates.
    """
    if not 0 < target < 1:
        return 0.0
    s = 0.0
    for k_t, n_t in zip(liked, rated):
        if n_t > 0:
            z = (target - k_t / n_t) / math.sqrt(target * (1 - target) / n_t)
            s = max(0.0, s + z - k)
    return s


def detect_drops(
    df: pd.DataFrame,
    segment_column: str,
    freq: str = "W",
    baseline_periods: int = 4,
    min_count: int = 20,
    alpha: float = 0.01,
    min_drop: float = 0.05,
    cusum_k: float = 0.25,
    cusum_h: float = 4.0,
) -> pd.DataFrame:
    """One row per segment of ``segment_column``: latest period vs. its baseline; alarms first, then by drop.

    The latest period is the one holding the newest feedback in the whole frame, so every segment is judged
    on the same window (a segment silent this week shows n_recent 0, not last month's numbers). ``drop`` is
    baseline_rate - recent_rate (positive means worse). Only liked/disliked rows count.
    """
    rated = df[df["label"].isin(["liked", "disliked"])] if len(df) else df
    if rated.empty:
        return pd.DataFrame(columns=COLUMNS)
    counts = pd.DataFrame({"segment": segment_values(rated[segment_column]).to_numpy(),
                           "period": _periods(rated["created_at"], freq),
                           "liked": (rated["label"] == "liked").to_numpy(dtype=int), "rated": 1})
    return detect_drops_from_counts(counts, baseline_periods, min_count, alpha, min_drop, cusum_k, cusum_h)


def period_counts(segments: pd.DataFrame, freq: str = "W") -> pd.DataFrame:
    """Rated rows per (segment, period) from ``quality.segment_counts`` (rows per segment, day and label): the
    input of :func:`detect_drops_from_counts`, computed from SQL group-bys instead of rows."""
    rated = segments[segments["label"].isin(["liked", "disliked"])]
    if rated.empty:
        return pd.DataFrame(columns=["segment", "period", "liked", "rated"])
    return pd.DataFrame({"segment": rated["segment"].to_numpy(), "period": _periods(rated["day"], freq),
                         "liked": rated["n"].where(rated["label"] == "liked", 0).to_numpy(dtype=int),
                         "rated": rated["n"].to_numpy(dtype=int)})


def detect_drops_from_counts(
    counts: pd.DataFrame,
    baseline_periods: int = 4,
    min_count: int = 20,
    alpha: float = 0.01,
    min_drop: float = 0.05,
    cusum_k: float = 0.25,
    cusum_h: float = 4.0,
) -> pd.DataFrame:
    """:func:`detect_drops` from liked / rated counts per (segment, period) (several rows per pair are summed)."""
    if counts.empty:
        return pd.DataFrame(columns=COLUMNS)
    periods = pd.PeriodIndex(counts["period"])
    latest = periods.max()
    window = pd.period_range(end=latest, periods=baseline_periods + 1, freq=latest.freq)
    # Segments with nothing in the window (retired models, old intents) have nothing to say about now.
    counts = counts[periods.isin(window)].groupby(["segment", "period"])[["liked", "rated"]].sum()
    rows = []
    for segment in counts.index.unique(level="segment"):
        per = counts.loc[segment].reindex(window, fill_value=0)
        k_base, n_base = int(per["liked"].iloc[:-1].sum()), int(per["rated"].iloc[:-1].sum())
        k_new, n_new = int(per["liked"].iloc[-1]), int(per["rated"].iloc[-1])
        diff, p_value = compare_rates(k_base, n_base, k_new, n_new)
        base_rate = k_base / n_base if n_base else math.nan
        cusum = lower_cusum(per["liked"].to_numpy(), per["rated"].to_numpy(), base_rate, cusum_k) if n_base else 0.0
        alarm, reason = _verdict(diff, p_value, cusum, n_new, n_base, min_count, alpha, min_drop, cusum_h)
        rows.append([segment, latest.start_time.tz_localize("UTC"), base_rate, k_new / n_new if n_new else math.nan,
                     diff, p_value, n_new, n_base, cusum, alarm, reason])
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["alarm"] = table["alarm"].astype(bool)
    return table.sort_values(["alarm", "drop"], ascending=[False, False], na_position="last", ignore_index=True)


NO_BASELINE = "no baseline period yet"


def _verdict(drop, p_value, cusum, n_new, n_base, min_count, alpha, min_drop, h) -> tuple[bool, str]:
    if n_base == 0:
        return False, NO_BASELINE
    if n_new < max(min_count, 1) or n_base < max(min_count, 1):
        return False, f"too little data (recent {n_new}, baseline {n_base}; need {min_count} each)"
    if drop < min_drop:
        return False, "no drop" if drop <= 0 else f"drop {100 * drop:.1f} points is below {100 * min_drop:.0f}"
    found = [f"p={p_value:.2g} < {alpha:g}"] if p_value < alpha else []
    found += [f"CUSUM {cusum:.1f} > {h:g}"] if cusum > h else []
    if not found:
        return False, f"drop {100 * drop:.1f} points not significant (p={p_value:.2g}, CUSUM {cusum:.1f})"
    return True, f"like rate down {100 * drop:.1f} points: " + "; ".join(found)


def drops_markdown(table: pd.DataFrame) -> str:
    """Markdown for analysts: alarming segments as a table, the rest summarised in one line each."""
    if table.empty:
        return "## Like-rate drops\n\nNo rated feedback.\n"
    # Every rated row counts once per segment column; several columns in one table (the report asset) are named.
    per_column = table.groupby("column")["n_recent"].sum() if "column" in table else table["n_recent"].sum()
    n_rated = int(per_column.max()) if "column" in table else int(per_column)
    if "column" in table:
        table = table.assign(segment=table["column"].astype(str) + "=" + table["segment"].astype(str))
    alarms, rest = table[table["alarm"]], table[~table["alarm"]]
    start = pd.Timestamp(table["window_start"].iloc[0]).strftime("%Y-%m-%d")
    lines = ["## Like-rate drops", "",
             f"Latest period starts {start}; each segment against its preceding baseline.", ""]
    if alarms.empty:
        lines.append("No segment's like rate dropped significantly.")
    else:
        header = ["segment", "baseline", "recent", "drop (points)", "p-value", "n recent", "n baseline", "CUSUM"]
        lines.append(md_table(header, [
            [r["segment"], fmt_pct(r["baseline_rate"]), fmt_pct(r["recent_rate"]), f"{100 * r['drop']:.1f}",
             f"{r['p_value']:.2g}", r["n_recent"], r["n_baseline"], f"{r['cusum']:.1f}"]
            for r in alarms.to_dict("records")]))
    fresh = rest[rest["reason"] == NO_BASELINE]
    if len(fresh) == len(table):
        return "\n".join(lines[:2] + [f"No baseline period yet: all {n_rated} rated answers fall in the latest period "
                                       f"(from {start}), so no segment can be compared with earlier periods."]) + "\n"
    rest = rest[rest["reason"] != NO_BASELINE]
    if not rest.empty:
        lines += ["", "Not flagged:"] + [f"- {md_cell(r['segment'])}: {r['reason']}" for r in rest.to_dict("records")]
    if len(fresh):
        lines += ["", f"No baseline period yet (new since {start}): " + ", ".join(md_cell(s) for s in fresh["segment"])]
    return "\n".join(lines) + "\n"
