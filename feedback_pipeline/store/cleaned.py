"""The cleaned_feedback table: windows of cleaned rows replaced idempotently (delete, then insert)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
import sqlalchemy as sa

from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.tables import CLEANED, CLEANED_COLUMNS, CLEANED_TIME_COLUMNS as _TIMES
from feedback_pipeline.store.tables import to_db_time as _to_db_time
from feedback_pipeline.store.tables import utc as _utc

__all__ = ["CLEANED", "CLEANED_COLUMNS", "replace_window", "read_cleaned", "day_of"]


def day_of(ts) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d")


def replace_window(store: FeedbackStore, cleaned: pd.DataFrame, start: date | None, end: date | None) -> int:
    """Replace every cleaned row whose day lies in [start, end) (all rows when both are None) by ``cleaned``.

    One transaction: readers see the old window or the new one, never a mix or a duplicate.
    """
    now = datetime.now(timezone.utc)
    rows = []
    for record in cleaned.to_dict("records"):
        row = {name: record.get(name) for name in CLEANED_COLUMNS}
        row["partition_date"] = day_of(record["created_at"])
        row["cleaned_at"] = now
        row["spam_reason"] = row["spam_reason"] if isinstance(row["spam_reason"], str) and row["spam_reason"] else None
        row["exclude_from_training"] = bool(row["exclude_from_training"]) if isinstance(
            row["exclude_from_training"], (bool, int)) else False
        for name in _TIMES:
            row[name] = _to_db_time(pd.Timestamp(row[name]).to_pydatetime(), store.dialect)
        for name in ("message_index", "prompt_tokens", "completion_tokens", "rating_thumb", "rating_stars"):
            row[name] = None if pd.isna(row[name]) else int(row[name])
        for name in ("latency_ms",):
            row[name] = None if pd.isna(row[name]) else float(row[name])
        rows.append(row)
    outside = [r["partition_date"] for r in rows if not _inside(r["partition_date"], start, end)]
    if outside:
        raise ValueError(f"{len(outside)} cleaned rows fall outside the window [{start}, {end}), e.g. {outside[0]}")
    delete = sa.delete(CLEANED)
    if start is not None:
        delete = delete.where(CLEANED.c.partition_date >= start.isoformat())
    if end is not None:
        delete = delete.where(CLEANED.c.partition_date < end.isoformat())
    with store.engine.begin() as conn:
        conn.execute(delete)
        if rows:
            conn.execute(sa.insert(CLEANED), rows)
    return len(rows)


def read_cleaned(store: FeedbackStore, start: date | None = None, end: date | None = None) -> pd.DataFrame:
    query = sa.select(CLEANED).order_by(CLEANED.c.created_at, CLEANED.c.id)
    if start is not None:
        query = query.where(CLEANED.c.partition_date >= start.isoformat())
    if end is not None:
        query = query.where(CLEANED.c.partition_date < end.isoformat())
    with store.engine.connect() as conn:
        frame = pd.DataFrame([dict(r._mapping) for r in conn.execute(query)], columns=CLEANED_COLUMNS)
    for name in _TIMES:
        frame[name] = pd.to_datetime(frame[name].map(_utc), utc=True)
    frame["id"] = frame["id"].astype(str)
    return frame


def _inside(day: str, start: date | None, end: date | None) -> bool:
    return (start is None or day >= start.isoformat()) and (end is None or day < end.isoformat())
