"""Like rates per segment (model, intent, subject ...) with confidence intervals, and their report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from feedback_pipeline.analysis.stats import wilson_interval

UNKNOWN = "(unknown)"
DEFAULT_SEGMENTS = ("model_name", "model_version", "intent", "project", "subject")
TABLE_COLUMNS = ["segment", "n_rated", "liked", "disliked", "like_rate", "ci_low", "ci_high", "enough_data"]


@dataclass
class QualityReport:
    overall: dict
    tables: dict[str, pd.DataFrame]
    weekly: pd.DataFrame
    min_count: int = 10
    segments: tuple[str, ...] = field(default=DEFAULT_SEGMENTS)


def segment_values(values: pd.Series) -> pd.Series:
    # Blank strings and None/NaN mean the same thing to an analyst: nobody set the field.
    text = values.astype("string").str.strip()
    return text.mask(text.isna() | (text == ""), UNKNOWN).astype(str)


def _with_rates(counts: pd.DataFrame) -> pd.DataFrame:
    """Add n_rated, like_rate and the Wilson 95% interval to a frame with liked/disliked counts."""
    out = counts.copy()
    out["n_rated"] = out["liked"] + out["disliked"]
    rated = out["n_rated"].replace(0, np.nan)
    out["like_rate"] = out["liked"] / rated
    bounds = [wilson_interval(int(k), int(n)) for k, n in zip(out["liked"], out["n_rated"])]
    out["ci_low"] = [b[0] for b in bounds]
    out["ci_high"] = [b[1] for b in bounds]
    return out


def _label_counts(df: pd.DataFrame, keys: pd.Series) -> pd.DataFrame:
    # Neutral rows keep their segment in the table (with zero rated) but never enter a rate.
    liked = (df["label"] == "liked").astype(int)
    disliked = (df["label"] == "disliked").astype(int)
    frame = pd.DataFrame({"key": keys.to_numpy(), "liked": liked.to_numpy(), "disliked": disliked.to_numpy()})
    return frame.groupby("key", sort=True).sum()


def like_rate_by(df: pd.DataFrame, column: str, min_count: int = 10) -> pd.DataFrame:
    """Like rate per value of ``column``, worst first.

    Segments with at least ``min_count`` rated rows (liked + disliked) come first, sorted by like rate
    ascending; segments below it follow, largest first, with ``enough_data=False`` so a 0-of-2 segment
    never tops the list.
    """
    if df.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    return like_rate_table(_label_counts(df, segment_values(df[column])), min_count)


def like_rate_table(counts: pd.DataFrame, min_count: int = 10) -> pd.DataFrame:
    """:func:`like_rate_by` from counts: ``liked`` and ``disliked`` per segment (the index), every segment with a
    row, even one without rated rows."""
    if counts.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table = _with_rates(counts.sort_index()).rename_axis("segment").reset_index()
    table["enough_data"] = table["n_rated"] >= min_count
    enough = table[table["enough_data"]].sort_values(
        ["like_rate", "n_rated", "segment"], ascending=[True, False, True], na_position="last"
    )
    # Small segments go by size, not by their unreliable rate.
    small = table[~table["enough_data"]].sort_values(["n_rated", "segment"], ascending=[False, True])
    table = pd.concat([enough, small])
    return table[TABLE_COLUMNS].reset_index(drop=True)


def weekly_trend(df: pd.DataFrame) -> pd.DataFrame:
    """Like rate per ISO week (weeks start Monday, UTC); weeks without feedback appear with n_rated 0."""
    columns = ["week", "n_rated", "liked", "like_rate", "ci_low", "ci_high"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    ts = pd.to_datetime(df["created_at"], utc=True)
    week = (ts - pd.to_timedelta(ts.dt.weekday, unit="D")).dt.normalize()
    return weekly_trend_table(_label_counts(df, week))


def weekly_trend_table(counts: pd.DataFrame) -> pd.DataFrame:
    """:func:`weekly_trend` from ``liked`` / ``disliked`` counts per week start (Monday 00:00 UTC, the index)."""
    columns = ["week", "n_rated", "liked", "like_rate", "ci_low", "ci_high"]
    if counts.empty:
        return pd.DataFrame(columns=columns)
    counts = counts.sort_index()
    # A gap in the series is information (no traffic, broken logging); keep it visible.
    full = pd.date_range(counts.index.min(), counts.index.max(), freq="7D")
    counts = counts.reindex(full, fill_value=0)
    trend = _with_rates(counts).rename_axis("week").reset_index()
    return trend[columns]


def _overall(df: pd.DataFrame) -> dict:
    liked = int((df["label"] == "liked").sum())
    disliked = int((df["label"] == "disliked").sum())
    rated = liked + disliked
    return {
        "rows": len(df),
        "rated": rated,
        "liked": liked,
        "disliked": disliked,
        "like_rate": liked / rated if rated else float("nan"),
        "ci": wilson_interval(liked, rated),
    }


def quality_report(
    df: pd.DataFrame, segments: Iterable[str] = DEFAULT_SEGMENTS, min_count: int = 10
) -> QualityReport:
    """Overall like rate, one like-rate table per segment column, and the weekly trend."""
    segments = tuple(segments)
    missing = [c for c in (*segments, "label", "created_at") if c not in df.columns]
    if missing:
        raise KeyError(f"feedback frame lacks columns {missing}")
    tables = {col: like_rate_by(df, col, min_count=min_count) for col in segments}
    return QualityReport(_overall(df), tables, weekly_trend(df), min_count, segments)


# --- the same report from SQL group-bys (store/cleaned.py label_counts) ---------------------------------------

def _pivot(counts: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``n`` per key and label -> one row per key with ``liked``, ``disliked`` (neutral-only keys kept, at 0)."""
    frame = counts.assign(liked=counts["n"].where(counts["label"] == "liked", 0),
                          disliked=counts["n"].where(counts["label"] == "disliked", 0))
    return frame.groupby(keys, sort=True)[["liked", "disliked"]].sum().astype("int64")


def segment_counts(per_value: pd.DataFrame) -> pd.DataFrame:
    """Rows per (segment, day, label) from SQL counts per stored value (blank and NULL merged as ``segment_values``
    merges them): columns segment, day (UTC Timestamp), label, n."""
    out = per_value.assign(segment=segment_values(per_value["value"]) if len(per_value) else pd.Series(dtype=str),
                           day=pd.to_datetime(per_value["partition_date"], utc=True))
    return out.groupby(["segment", "day", "label"], as_index=False)["n"].sum()


def quality_report_from_counts(overall: pd.DataFrame, per_column: dict[str, pd.DataFrame],
                               min_count: int = 10) -> QualityReport:
    """:func:`quality_report` from ``label_counts``' group-bys (rows per day and label; per day, value and label for
    each segment column): the same tables, weekly trend and overall figures, without reading any row."""
    segments = tuple(per_column)
    tables = {}
    for column, per_value in per_column.items():
        counts = segment_counts(per_value)
        tables[column] = like_rate_table(_pivot(counts, ["segment"]) if len(counts) else counts, min_count)
    days = overall.assign(day=pd.to_datetime(overall["partition_date"], utc=True))
    week = (days["day"] - pd.to_timedelta(days["day"].dt.weekday, unit="D")).dt.normalize()
    weekly = weekly_trend_table(_pivot(days.assign(week=week), ["week"]).rename_axis(None) if len(days) else days)
    liked = int(overall.loc[overall["label"] == "liked", "n"].sum())
    disliked = int(overall.loc[overall["label"] == "disliked", "n"].sum())
    rated = liked + disliked
    totals = {"rows": int(overall["n"].sum()), "rated": rated, "liked": liked, "disliked": disliked,
              "like_rate": liked / rated if rated else float("nan"), "ci": wilson_interval(liked, rated)}
    return QualityReport(totals, tables, weekly, min_count, segments)


# --- markdown -----------------------------------------------------------------------------------


def fmt_pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"


def fmt_ci(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"{fmt_pct(low)}–{fmt_pct(high)}"


def md_cell(value: object) -> str:
    # Pipes and newlines in user text would break the table layout.
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate_rows(table: pd.DataFrame, key: str) -> list[list[object]]:
    return [
        [r[key], r["n_rated"], r["liked"], r["disliked"], fmt_pct(r["like_rate"]), fmt_ci(r["ci_low"], r["ci_high"])]
        for r in table.to_dict("records")
    ]


def _segment_section(column: str, table: pd.DataFrame, min_count: int) -> str:
    header = [column, "rated", "liked", "disliked", "like rate", "95% CI"]
    enough, small = table[table["enough_data"]], table[~table["enough_data"]]
    parts = [f"## By {column}", ""]
    if enough.empty:
        parts.append(f"No {column} has {min_count} or more rated answers yet.")
    else:
        parts.append(md_table(header, _rate_rows(enough, "segment")))
    if not small.empty:
        listed = ", ".join(f"{md_cell(s)} ({n})" for s, n in zip(small["segment"], small["n_rated"]))
        parts += ["", f"Too little data (fewer than {min_count} rated, not ranked): {listed}"]
    return "\n".join(parts)


def report_markdown(report: QualityReport) -> str:
    """Markdown for analysts: overall rate, one worst-first table per segment, then the weekly trend."""
    o = report.overall
    lines = [
        "# Answer quality",
        "",
        f"**Overall:** {o['rows']} feedback rows, {o['rated']} rated (liked + disliked; neutral excluded): "
        f"{o['liked']} liked, {o['disliked']} disliked, like rate {fmt_pct(o['like_rate'])} "
        f"(95% CI {fmt_ci(*o['ci'])}).",
        "",
        "Segments are sorted worst first. Intervals are Wilson 95% intervals: when two intervals overlap, "
        "the difference may be noise.",
    ]
    for column, table in report.tables.items():
        lines += ["", _segment_section(column, table, report.min_count)]
    if not report.weekly.empty:
        weekly = report.weekly.assign(week=report.weekly["week"].dt.strftime("%Y-%m-%d"))
        header = ["week (Mon)", "rated", "liked", "disliked", "like rate", "95% CI"]
        weekly = weekly.assign(disliked=weekly["n_rated"] - weekly["liked"])
        lines += ["", "## Weekly trend", "", md_table(header, _rate_rows(weekly, "week"))]
    return "\n".join(lines) + "\n"
