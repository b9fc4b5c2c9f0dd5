"""Typed reads and writes of the feedback table on PostgreSQL or SQLite.

The tables and time helpers live in ``store/tables.py`` (the mirror of ``sql/``); this module holds the store
object: its engine, writes, reads and erasure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from functools import lru_cache
from typing import Iterable, Iterator

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from feedback_pipeline.store.migrate import migrate
from feedback_pipeline.store.tables import (CLEANED, CLEANED_TIME_COLUMNS, COLUMNS, FEEDBACK, JSON, QUOTES, REJECTED, SUGGESTIONS, TIME_COLUMNS,
                                            TS, UUID, to_db_time, utc, utc_column)

# Older names, kept for the modules that import them from here.
_JSON, _UUID, _TS, _TIME_COLUMNS = JSON, UUID, TS, TIME_COLUMNS
_utc, _to_db_time = utc, to_db_time
__all__ = ["FEEDBACK", "COLUMNS", "FeedbackStore", "WriteResult", "CONFLICT_REASON", "utc_column"]
# Fields a later rating of the same record may change; the newest updated_at wins.
_MUTABLE = ("updated_at", "rating", "rating_thumb", "rating_stars", "rating_raw", "rating_scale", "comment", "metadata")
# A re-sent record counts as a change only when what the user said changed, not merely its timestamp.
_CHANGE = ("rating", "rating_raw", "comment")
# What a record is about: a known id sent again with another query or response is a conflict, never merged.
_IDENTITY = ("query", "response")
CONFLICT_REASON = "is already stored with a different query or response (a conflict: not merged)"


@dataclass(frozen=True)
class WriteResult:
    received: int
    inserted: int
    updated: int
    conflicts: int = 0
    conflict_positions: tuple[int, ...] = ()  # positions, among the rows given, of the conflicts (not written)

    @property
    def unchanged(self) -> int:
        return self.received - self.inserted - self.updated - self.conflicts


class FeedbackStore:
    """Owns one SQLAlchemy engine; created lazily so importing this module never connects."""

    def __init__(self, url: str, pre_ping: bool = True):
        self.url = url
        # pre_ping costs a round trip per checkout; the capture service turns it off: a dead connection then fails
        # one request (503), SQLAlchemy invalidates the pool, and the next requests reconnect.
        self.pre_ping = pre_ping
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            if self.url.startswith("sqlite:///"):
                from pathlib import Path
                Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            url = self.url.replace("postgresql://", "postgresql+psycopg://", 1)
            if url.startswith("sqlite"):
                # WAL lets readers run beside the one writer; writers wait up to 30 s for the lock instead of
                # failing with "database is locked" when the capture service takes concurrent requests.
                self._engine = sa.create_engine(url, connect_args={"timeout": 30})
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                # connect_timeout: a database that is down answers 503 fast instead of hanging a request.
                self._engine = sa.create_engine(url, pool_pre_ping=self.pre_ping, pool_size=10, max_overflow=20,
                                                pool_timeout=10, connect_args={"connect_timeout": 5})
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> list[int]:
        return migrate(self.engine)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def write(self, rows: Iterable[dict], chunk_size: int = 500) -> WriteResult:
        """Insert new records; a known id is updated only when its ``updated_at`` is newer (a re-rating). A known id
        sent with another query or response is a conflict: not written, counted in ``conflicts`` and
        ``conflict_positions``.

        All other rows are written in one transaction: when this returns, every one of them is committed.
        """
        with self.engine.begin() as conn:
            return self.write_in(conn, rows, chunk_size)[0]

    def write_in(self, conn: sa.Connection, rows: Iterable[dict], chunk_size: int = 500,
                 fresh: bool = False) -> tuple[WriteResult, list[str]]:
        """``write`` inside the caller's transaction; also each row's outcome: inserted, updated, unchanged or
        conflict (the id is stored, or came earlier in ``rows``, with another query or response: not written).
        ``fresh``: the caller just minted the ids (uuid4), so the lookup of known rows is skipped."""
        rows = [_to_db(row, self.dialect) for row in rows]
        stmt = _upsert(self.dialect)
        outcomes: list[str] = []
        n_change = len(_CHANGE)
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start:start + chunk_size]
            ids = [r["id"] for r in chunk]
            known = {} if fresh else {
                str(r.id): (_utc(r.updated_at), tuple(r[2:2 + n_change]), tuple(r[2 + n_change:]))
                for r in conn.execute(
                    sa.select(FEEDBACK.c.id, FEEDBACK.c.updated_at, *(FEEDBACK.c[n] for n in _CHANGE + _IDENTITY))
                    .where(FEEDBACK.c.id.in_(ids)))}
            written = []
            for r in chunk:  # mirror the statement's decision to report what happened
                state = (_utc(r["updated_at"]), tuple(r[n] for n in _CHANGE), tuple(r[n] for n in _IDENTITY))
                if r["id"] not in known:
                    outcomes.append("inserted")
                    known[r["id"]] = state
                elif known[r["id"]][2] != state[2]:
                    outcomes.append("conflict")
                    continue
                elif known[r["id"]][0] < state[0] and known[r["id"]][1] != state[1]:
                    outcomes.append("updated")
                    known[r["id"]] = state
                else:
                    outcomes.append("unchanged")
                written.append(r)
            if written:
                conn.execute(stmt, written)
        conflicts = tuple(i for i, outcome in enumerate(outcomes) if outcome == "conflict")
        result = WriteResult(received=len(rows), inserted=outcomes.count("inserted"), updated=outcomes.count("updated"),
                             conflicts=len(conflicts), conflict_positions=conflicts)
        return result, outcomes

    def read_frame(self, start: datetime | None = None, end: datetime | None = None,
                   column: str = "created_at", where: Iterable = (), limit: int | None = None) -> pd.DataFrame:
        """Feedback rows (optionally ``start <= column < end``, the SQL ``where`` clauses and at most ``limit`` rows)
        as a DataFrame with UTC timestamps, ordered by (created_at, id); a stored timestamp pandas cannot hold
        (before 1677 or after 2262, written before the door checked the window) reads as NaT, never an error, and
        cleaning rejects its row. Whole-table reads are for small stores and exports: the pipeline streams
        (:meth:`chunks`)."""
        query = sa.select(FEEDBACK).where(*where).order_by(FEEDBACK.c.created_at, FEEDBACK.c.id).limit(limit)
        if start is not None:
            query = query.where(FEEDBACK.c[column] >= _to_db_time(start, self.dialect))
        if end is not None:
            query = query.where(FEEDBACK.c[column] < _to_db_time(end, self.dialect))
        with self.engine.connect() as conn:
            return feedback_frame([dict(r._mapping) for r in conn.execute(query)])

    def read_table(self, table: str, start: date | None = None, end: date | None = None,
                   columns: Iterable[str] | None = None, limit: int | None = None) -> pd.DataFrame:
        """A window of UTC days of ``feedback`` or ``cleaned_feedback`` (at most ``limit`` rows, ordered by
        (created_at, id)) as a frame: what ``TableRef.read`` returns."""
        if table == "feedback":
            low, high = window_bounds(start, end)
            frame = self.read_frame(low, high, limit=limit)
            return frame if columns is None else frame[list(columns)]
        if table != "cleaned_feedback":
            raise ValueError(f"no such feedback table: {table!r}")
        columns = list(columns or (c.name for c in CLEANED.columns))
        window = [CLEANED.c.partition_date >= start.isoformat()] if start is not None else []
        window += [CLEANED.c.partition_date < end.isoformat()] if end is not None else []
        query = (sa.select(*(CLEANED.c[c] for c in columns)).where(*window)
                 .order_by(CLEANED.c.created_at, CLEANED.c.id).limit(limit))
        with self.engine.connect() as conn:
            frame = pd.DataFrame([dict(r._mapping) for r in conn.execute(query)], columns=columns)
        for name in CLEANED_TIME_COLUMNS:
            if name in frame:
                frame[name] = pd.to_datetime(frame[name].map(_utc), utc=True)
        if "id" in frame:
            frame["id"] = frame["id"].astype(str)
        return frame

    def chunks(self, conn: sa.Connection, start: datetime | None, end: datetime | None,
               chunk_size: int = 5000) -> Iterator[pd.DataFrame]:
        """The rows with ``start <= created_at < end`` as frames of at most ``chunk_size`` rows, in (created_at, id)
        order, by keyset pagination: each chunk is its own short query, so memory and lock time stay bounded at any
        table size. Runs on the caller's connection (which may hold temporary tables)."""
        base = sa.select(FEEDBACK).order_by(FEEDBACK.c.created_at, FEEDBACK.c.id).limit(chunk_size)
        if start is not None:
            base = base.where(FEEDBACK.c.created_at >= _to_db_time(start, self.dialect))
        if end is not None:
            base = base.where(FEEDBACK.c.created_at < _to_db_time(end, self.dialect))
        last = None
        while True:
            query = base if last is None else base.where(
                FEEDBACK.c.created_at >= last[0],
                sa.or_(FEEDBACK.c.created_at > last[0], FEEDBACK.c.id > last[1]))
            records = [dict(r._mapping) for r in conn.execute(query)]
            if not records:
                return
            last = (records[-1]["created_at"], records[-1]["id"])
            yield feedback_frame(records)
            if len(records) < chunk_size:
                return

    def summary(self) -> list[dict]:
        """Per source: rows, rated, liked, disliked, newest ingested_at / updated_at, sum of ratings (one scan)."""
        thumb = FEEDBACK.c.rating_thumb
        query = sa.select(
            FEEDBACK.c.source, sa.func.count().label("rows"), sa.func.count(thumb).label("rated_rows"),
            sa.func.sum(sa.case((thumb == 1, 1), else_=0)).label("liked"),
            sa.func.sum(sa.case((thumb == -1, 1), else_=0)).label("disliked"),
            sa.func.max(FEEDBACK.c.ingested_at).label("newest_ingested_at"),
            sa.func.max(FEEDBACK.c.updated_at).label("newest_updated_at"),
            sa.func.sum(FEEDBACK.c.rating).label("rating_sum"),
        ).group_by(FEEDBACK.c.source).order_by(FEEDBACK.c.source)
        with self.engine.connect() as conn:
            return [{**dict(r._mapping), "newest_ingested_at": _utc(r.newest_ingested_at),
                     "newest_updated_at": _utc(r.newest_updated_at),
                     "rating_sum": round(float(r.rating_sum or 0.0), 6)} for r in conn.execute(query)]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(FEEDBACK)).scalar_one()

    def rated_since(self, watermark: datetime | None, at_most: int | None = None) -> tuple[int, datetime | None]:
        """Rated rows ingested after ``watermark`` and the newest ingestion time among them.

        An index-only range scan of ``ix_feedback_rated_ingested`` (sql/009): the cost follows the rows since the
        watermark, not the table. ``at_most`` stops counting there (the sensor only asks "at least N?"), so even a
        first tick without a watermark reads at most that many index entries."""
        rated = (FEEDBACK.c.rating_thumb.is_not(None), FEEDBACK.c.rating_thumb != 0)
        since = () if watermark is None else (FEEDBACK.c.ingested_at > _to_db_time(watermark, self.dialect),)
        rows = sa.select(sa.literal(1)).where(*rated, *since)
        counted = rows.limit(at_most).subquery() if at_most is not None else rows.subquery()
        newest = sa.select(FEEDBACK.c.ingested_at).where(*rated, *since).order_by(FEEDBACK.c.ingested_at.desc()).limit(1)
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(counted)).scalar_one()
            latest = conn.execute(newest).scalar_one_or_none()
        return int(count), _utc(latest)

    def delete_user(self, user_id: str) -> int:
        """Erase every stored record of one user (right to erasure) in one transaction; returns the feedback rows
        deleted. ``store.erasure.erase_user`` also removes the files (reports, datasets) holding their text."""
        return self.erase_rows(user_id).feedback_rows

    def erase_rows(self, user_id: str) -> ErasedRows:
        """One transaction: the user's rows of feedback, cleaned_feedback (the redacted copy), rejected_feedback,
        chat_responses (the exposure log), and the improvement_suggestions runs quoting one of their rows; the
        quoted artifacts are returned (their files are the caller's) and forgotten."""
        with self.engine.begin() as conn:
            ids = {str(r[0]) for r in conn.execute(sa.select(FEEDBACK.c.id).where(FEEDBACK.c.user_id == user_id))}
            ids |= {str(r[0]) for r in conn.execute(sa.select(CLEANED.c.id).where(CLEANED.c.user_id == user_id))}
            ordered = sorted(ids)
            artifacts: set[str] = set()
            for part in _batches(ordered):
                artifacts |= {r[0] for r in conn.execute(
                    sa.select(QUOTES.c.artifact).distinct().where(QUOTES.c.feedback_id.in_(part)))}
            runs = sorted(a.removeprefix("suggestions:") for a in artifacts if a.startswith("suggestions:"))
            for part in _batches(runs):
                conn.execute(sa.delete(SUGGESTIONS).where(SUGGESTIONS.c.run_id.in_(part)))
            for part in _batches(sorted(artifacts)):
                conn.execute(sa.delete(QUOTES).where(QUOTES.c.artifact.in_(part)))
            rejected = sum(conn.execute(sa.delete(REJECTED).where(REJECTED.c.id.in_(part))).rowcount
                           for part in _batches(ordered))
            cleaned = sum(conn.execute(sa.delete(CLEANED).where(CLEANED.c.id.in_(part))).rowcount
                          for part in _batches(ordered))
            exposures = conn.execute(sa.delete(_CHAT_RESPONSES).where(_CHAT_RESPONSES.c.user_id == user_id)).rowcount
            feedback = conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.user_id == user_id)).rowcount
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:  # no old page image of the rows stays in the WAL
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return ErasedRows(frozenset(ids), feedback, cleaned, rejected, exposures, tuple(runs),
                          tuple(sorted(a for a in artifacts if not a.startswith("suggestions:"))))


@dataclass(frozen=True)
class ErasedRows:
    feedback_ids: frozenset[str]
    feedback_rows: int
    cleaned_rows: int
    rejected_rows: int
    exposures: int
    suggestion_runs: tuple[str, ...]
    artifacts: tuple[str, ...]  # the other artifacts (report files) that quoted a row: ``file:<relative path>``


def _batches(values: list, size: int = 5000):
    for start in range(0, len(values), size):
        yield values[start:start + size]


# The exposure log (store/experiments.py) names users too; erasure needs only its user column.
_CHAT_RESPONSES = sa.table("chat_responses", sa.column("user_id"))


@lru_cache(maxsize=2)
def _upsert(dialect: str):
    """The upsert statement, built once per dialect: building it costs more than running it on one row."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(FEEDBACK)
    return insert.on_conflict_do_update(
        index_elements=["id"],
        set_={name: insert.excluded[name] for name in _MUTABLE},
        where=sa.and_(FEEDBACK.c.updated_at < insert.excluded.updated_at,
                      *(FEEDBACK.c[n] == insert.excluded[n] for n in _IDENTITY),  # a racing conflict stays unmerged
                      sa.or_(*(FEEDBACK.c[n].is_distinct_from(insert.excluded[n]) for n in _CHANGE))),
    )


def feedback_frame(records: list[dict]) -> pd.DataFrame:
    """Feedback rows read from the table as a frame: every column, UTC timestamps (NaT when unreadable), str ids."""
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for name in _TIME_COLUMNS:
        frame[name] = utc_column(frame[name])
    frame["id"] = frame["id"].astype(str)
    return frame


def window_bounds(start: date | None, end: date | None) -> tuple[datetime | None, datetime | None]:
    """A window of UTC days as the created_at bounds ``[start 00:00, end 00:00)`` (None stays unbounded)."""
    def at(day: date | None) -> datetime | None:
        return None if day is None else datetime.combine(day, time(), timezone.utc)
    return at(start), at(end)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # Deleted rows are overwritten with zeros, not left in free pages: erasure must leave no copy in the file.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _to_db(row: dict, dialect: str) -> dict:
    out = {name: row.get(name) for name in COLUMNS}
    for name in _TIME_COLUMNS:
        out[name] = _to_db_time(out[name], dialect)
    return out
