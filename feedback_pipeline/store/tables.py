"""The store's SQLAlchemy mirror of ``sql/`` and its time helpers: the bottom of the store layer.

The DDL lives in ``sql/`` (the one schema source that migrations run); these tables only bind and read values with
the right types (UUID/JSONB on PostgreSQL, text/JSON on SQLite). ``test_store`` checks the mirror against a migrated
database so the two cannot drift apart. Every other store module (``repository``, ``cleaned``, ``suggestions`` ...)
and the ingestion layer import from here; this module imports nothing of the project, so there is no circle and no
arrow pointing back up.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UUID = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
TS = sa.DateTime(timezone=True)

# The feedback record's fields, in table order (sql/001 + sql/008): what every entry point stores.
COLUMNS = (
    "id", "created_at", "updated_at", "ingested_at", "user_id", "session_id", "message_index", "query",
    "history", "response", "model_name", "model_version", "intent", "project", "subject", "rating",
    "rating_thumb", "rating_stars", "rating_raw", "rating_scale", "comment", "tools_called",
    "retrieved_context", "latency_ms", "prompt_tokens", "completion_tokens", "source", "metadata",
    "response_id", "experiment", "arm",
)
TIME_COLUMNS = ("created_at", "updated_at", "ingested_at")

FEEDBACK = sa.Table(
    "feedback", sa.MetaData(),
    sa.Column("id", UUID, primary_key=True),
    sa.Column("created_at", TS), sa.Column("updated_at", TS), sa.Column("ingested_at", TS),
    sa.Column("user_id", sa.Text), sa.Column("session_id", sa.Text), sa.Column("message_index", sa.Integer),
    sa.Column("query", sa.Text), sa.Column("history", JSON), sa.Column("response", sa.Text),
    sa.Column("model_name", sa.Text), sa.Column("model_version", sa.Text), sa.Column("intent", sa.Text),
    sa.Column("project", sa.Text), sa.Column("subject", sa.Text),
    sa.Column("rating", sa.Float), sa.Column("rating_thumb", sa.SmallInteger),
    sa.Column("rating_stars", sa.SmallInteger), sa.Column("rating_raw", sa.Text), sa.Column("rating_scale", sa.Text),
    sa.Column("comment", sa.Text), sa.Column("tools_called", JSON), sa.Column("retrieved_context", JSON),
    sa.Column("latency_ms", sa.Float), sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer), sa.Column("source", sa.Text), sa.Column("metadata", JSON),
    sa.Column("response_id", sa.Text), sa.Column("experiment", sa.Text), sa.Column("arm", sa.Text),
)
assert tuple(c.name for c in FEEDBACK.columns) == COLUMNS

# Serving attribution (sql/008) stays in the raw table: the A/B test reads it there, joined to the exposure log.
NOT_CLEANED = ("id", "response_id", "experiment", "arm")
CLEANED = sa.Table(
    "cleaned_feedback", sa.MetaData(), sa.Column("id", UUID, primary_key=True), sa.Column("partition_date", sa.Text),
    *(sa.Column(c.name, c.type) for c in FEEDBACK.columns if c.name not in NOT_CLEANED),
    sa.Column("label", sa.Text), sa.Column("pii_redacted", sa.Integer), sa.Column("duplicate_count", sa.Integer),
    sa.Column("spam_reason", sa.Text), sa.Column("exclude_from_training", sa.Boolean), sa.Column("cleaned_at", TS),
    sa.Column("sample_key", sa.Text),  # sql/009: sha256(id)[:16], the order of stable analysis samples
)
CLEANED_COLUMNS = [c.name for c in CLEANED.columns]
CLEANED_TIME_COLUMNS = ("created_at", "updated_at", "ingested_at", "cleaned_at")

# sql/009: why cleaning rejected a row, keyed by the feedback id (ids and reasons only, never the text).
REJECTED = sa.Table(
    "rejected_feedback", sa.MetaData(),
    sa.Column("id", UUID, primary_key=True), sa.Column("partition_date", sa.Text),
    sa.Column("reject_reason", sa.Text), sa.Column("rejected_at", TS),
)

# sql/009: which artifact (a report file, a run's suggestions) quotes which feedback row's text.
QUOTES = sa.Table(
    "feedback_quotes", sa.MetaData(),
    sa.Column("artifact", sa.Text, primary_key=True), sa.Column("feedback_id", sa.Text, primary_key=True),
)

SUGGESTIONS = sa.Table(
    "improvement_suggestions", sa.MetaData(),
    sa.Column("run_id", sa.Text, primary_key=True), sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("kind", sa.Text), sa.Column("target", sa.Text), sa.Column("title", sa.Text),
    sa.Column("evidence", sa.Text), sa.Column("metrics", JSON), sa.Column("priority", sa.Float),
    sa.Column("created_at", TS),
)


# --- time ----------------------------------------------------------------------------------------------------

def sample_key(feedback_id: str) -> str:
    """The stable sample order of a row (sql/009): the first 16 hex digits of sha256 of its id."""
    return hashlib.sha256(str(feedback_id).encode()).hexdigest()[:16]


def utc(value):
    """A stored timestamp (aware, naive UTC or ISO text) as an aware UTC datetime; None (or NaN) stays None."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def utc_column(values: pd.Series) -> pd.Series:
    """Stored timestamps as a UTC datetime column; one outside pandas' range becomes NaT instead of raising."""
    return pd.to_datetime(values.map(utc), utc=True, errors="coerce")


def to_db_time(value: datetime, dialect: str) -> datetime:
    """A timestamp as the database takes it: SQLite keeps no zone, so everything is stored as naive UTC (text
    comparison then orders correctly); PostgreSQL gets it aware."""
    value = utc(value)
    return value.replace(tzinfo=None) if dialect == "sqlite" else value
