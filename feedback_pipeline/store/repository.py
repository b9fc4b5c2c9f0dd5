"""Typed reads and writes of the feedback table on PostgreSQL or SQLite.

The tables and time helpers live in ``store/tables.py`` (the mirror of ``sql/``); this module holds the store
object: its engine, writes, reads and erasure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Iterable

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from feedback_pipeline.store.migrate import migrate
from feedback_pipeline.store.tables import (CLEANED, COLUMNS, FEEDBACK, JSON, TIME_COLUMNS, TS, UUID, to_db_time, utc,
                                            utc_column)

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
                   column: str = "created_at", where: Iterable = ()) -> pd.DataFrame:
        """All feedback rows (optionally ``start <= column < end`` and the SQL ``where`` clauses) as a DataFrame
        with UTC timestamps; a stored
        timestamp pandas cannot hold (before 1677 or after 2262, written before the door checked the window) reads
        as NaT, never an error, and cleaning rejects its row."""
        query = sa.select(FEEDBACK).where(*where).order_by(FEEDBACK.c.created_at, FEEDBACK.c.id)
        if start is not None:
            query = query.where(FEEDBACK.c[column] >= _to_db_time(start, self.dialect))
        if end is not None:
            query = query.where(FEEDBACK.c[column] < _to_db_time(end, self.dialect))
        with self.engine.connect() as conn:
            records = [dict(r._mapping) for r in conn.execute(query)]
        frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
        for name in _TIME_COLUMNS:
            frame[name] = utc_column(frame[name])
        frame["id"] = frame["id"].astype(str)
        return frame

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(FEEDBACK)).scalar_one()

    def rated_since(self, watermark: datetime | None) -> tuple[int, datetime | None]:
        """Rated rows ingested after ``watermark`` and the newest ingestion time among them."""
        query = sa.select(sa.func.count(), sa.func.max(FEEDBACK.c.ingested_at)).where(
            FEEDBACK.c.rating_thumb.is_not(None), FEEDBACK.c.rating_thumb != 0)
        if watermark is not None:
            query = query.where(FEEDBACK.c.ingested_at > _to_db_time(watermark, self.dialect))
        with self.engine.connect() as conn:
            count, newest = conn.execute(query).one()
        return int(count), _utc(newest)

    def delete_user(self, user_id: str) -> int:
        """Erase every record of one user (right to erasure), raw and cleaned, in one transaction; returns the raw
        rows deleted. Datasets built afterwards cannot contain them; older dataset folders are not touched."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(CLEANED).where(CLEANED.c.user_id == user_id))
            conn.execute(sa.delete(_CHAT_RESPONSES).where(_CHAT_RESPONSES.c.user_id == user_id))
            return conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.user_id == user_id)).rowcount


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _to_db(row: dict, dialect: str) -> dict:
    out = {name: row.get(name) for name in COLUMNS}
    for name in _TIME_COLUMNS:
        out[name] = _to_db_time(out[name], dialect)
    return out
