"""Filtered reads of the feedback table for the capture service: one page by keyset cursor, or a whole frame.

Pages are ordered newest first by ``(created_at, id)``; the cursor is that pair of the last row, so a page stays
correct while rows are added (no OFFSET that shifts under concurrent writes).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.tables import FEEDBACK
from feedback_pipeline.store.tables import TIME_COLUMNS as _TIME_COLUMNS
from feedback_pipeline.store.tables import to_db_time as _to_db_time
from feedback_pipeline.store.tables import utc as _utc

RATINGS = {"liked": FEEDBACK.c.rating_thumb == 1, "disliked": FEEDBACK.c.rating_thumb == -1,
           "neutral": FEEDBACK.c.rating_thumb == 0, "unrated": FEEDBACK.c.rating_thumb.is_(None)}


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class FeedbackFilter:
    model_name: str | None = None
    model_version: str | None = None
    intent: str | None = None
    project: str | None = None
    subject: str | None = None
    user_id: str | None = None
    rating: str | None = None  # one of RATINGS
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def clauses(self, dialect: str) -> list:
        out = [FEEDBACK.c[name] == getattr(self, name) for name in
               ("model_name", "model_version", "intent", "project", "subject", "user_id")
               if getattr(self, name) is not None]
        if self.rating is not None:
            out.append(RATINGS[self.rating])
        if self.since is not None:
            out.append(FEEDBACK.c.created_at >= _to_db_time(self.since, dialect))
        if self.until is not None:
            out.append(FEEDBACK.c.created_at < _to_db_time(self.until, dialect))
        return out


def encode_cursor(created_at: datetime, feedback_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), feedback_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, feedback_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return _utc(datetime.fromisoformat(created)), str(uuid.UUID(feedback_id))
    except Exception:  # any malformed cursor is the client's error, never a 5xx
        raise BadCursor("is not a cursor returned by this endpoint") from None


def plain_row(row) -> dict:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    for name in _TIME_COLUMNS:
        out[name] = _utc(out[name])
    return out


def list_page(store: FeedbackStore, flt: FeedbackFilter, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
    """Up to ``limit`` rows newest first after ``cursor``, and the cursor of the next page (None at the end)."""
    query = sa.select(FEEDBACK).where(*flt.clauses(store.dialect))
    if cursor:
        created, last_id = decode_cursor(cursor)
        created = _to_db_time(created, store.dialect)
        query = query.where(sa.or_(FEEDBACK.c.created_at < created,
                                   sa.and_(FEEDBACK.c.created_at == created, FEEDBACK.c.id < last_id)))
    query = query.order_by(FEEDBACK.c.created_at.desc(), FEEDBACK.c.id.desc()).limit(limit + 1)
    with store.engine.connect() as conn:
        rows = [plain_row(r) for r in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None


def read_filtered_frame(store: FeedbackStore, flt: FeedbackFilter) -> pd.DataFrame:
    """The rows matching ``flt`` as the frame ``FeedbackStore.read_frame`` returns (oldest first)."""
    return store.read_frame(where=flt.clauses(store.dialect))
