"""Chunked bulk writes of validated feedback rows, with the same upsert rule as ``FeedbackStore.write``.

PostgreSQL: each chunk is COPYed into a temporary staging table and merged by one ``INSERT ... SELECT ... ON
CONFLICT`` (about 5x faster than executemany). SQLite: ``FeedbackStore.write`` per chunk. Every chunk is its
own transaction, so a failure keeps the chunks committed before it.

A row whose id is stored (or came earlier in the chunk) with another query or response is a conflict, as in
``FeedbackStore.write``: it is taken out of the staging table before the merge and its position in the chunk is
returned in ``WriteResult.conflict_positions`` for the importer to report by line.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

from feedback_pipeline.store.repository import _CHANGE, _IDENTITY, _MUTABLE, FeedbackStore, WriteResult
from feedback_pipeline.store.tables import COLUMNS

_JSON_COLUMNS = frozenset(("history", "tools_called", "retrieved_context", "metadata"))
_COLS = ", ".join(f'"{c}"' for c in COLUMNS)

_STAGE = f'CREATE TEMP TABLE feedback_staging ON COMMIT DROP AS SELECT 0::bigint AS seq, {_COLS} FROM feedback WITH NO DATA'
_COPY = f'COPY feedback_staging (seq, {_COLS}) FROM STDIN'
# Conflicts: rows whose query/response differ from the stored row's, or, for a new id, from its first row in the chunk.
_DIFFERS = " OR ".join(f's."{c}" IS DISTINCT FROM r."{c}"' for c in _IDENTITY)
_IDENTITY_COLS = ", ".join(f'"{c}"' for c in _IDENTITY)
_CONFLICTS = f"""
WITH first AS (SELECT DISTINCT ON (id) id, {_IDENTITY_COLS} FROM feedback_staging ORDER BY id, seq),
reference AS (
    SELECT f.id, {", ".join(f'f."{c}"' for c in _IDENTITY)} FROM feedback f JOIN first USING (id)
    UNION ALL
    SELECT first.id, {", ".join(f'first."{c}"' for c in _IDENTITY)} FROM first
    WHERE NOT EXISTS (SELECT 1 FROM feedback f WHERE f.id = first.id)
)
DELETE FROM feedback_staging s USING reference r WHERE s.id = r.id AND ({_DIFFERS}) RETURNING s.seq
"""
# ON CONFLICT may touch a row only once per statement: keep one row per id, the newest (the first on a tie, as
# row-by-row upserts would).
_UPSERT = f"""
WITH merged AS (
    INSERT INTO feedback ({_COLS})
    SELECT DISTINCT ON (id) {_COLS} FROM feedback_staging ORDER BY id, updated_at DESC, seq
    ON CONFLICT (id) DO UPDATE SET {", ".join(f'"{c}" = EXCLUDED."{c}"' for c in _MUTABLE)}
    WHERE feedback.updated_at < EXCLUDED.updated_at
      AND {" AND ".join(f'feedback."{c}" = EXCLUDED."{c}"' for c in _IDENTITY)}
      AND ({" OR ".join(f'feedback."{c}" IS DISTINCT FROM EXCLUDED."{c}"' for c in _CHANGE)})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
"""


class ChunkWriter:
    """Writes each chunk in a background thread while the caller validates the next one (the database's work then
    overlaps Python's), so at most two chunks are in memory. ``submit`` returns the previous chunk's result."""

    def __init__(self, write: Callable[[list[dict]], WriteResult]):
        self._write, self._pool, self._pending = write, ThreadPoolExecutor(1, "feedback-bulk"), None

    def submit(self, rows: list[dict]) -> WriteResult | None:
        previous = self.flush()
        self._pending = self._pool.submit(self._write, rows)
        return previous

    def flush(self) -> WriteResult | None:
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@contextmanager
def chunk_writer(store: FeedbackStore) -> Iterator[ChunkWriter]:
    """On PostgreSQL chunks go through COPY + one upsert on one held connection; on SQLite through ``store.write``.
    Leaving the block waits for the last chunk; an error in any chunk is raised from ``submit`` or ``flush``."""
    raw = store.engine.raw_connection() if store.dialect == "postgresql" else None
    writer = ChunkWriter((lambda rows: _copy_upsert(raw, rows)) if raw is not None else store.write)
    try:
        yield writer
    finally:
        writer.close()
        if raw is not None:
            raw.close()


def _copy_upsert(raw, rows: list[dict]) -> WriteResult:
    conn = raw.driver_connection
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    try:
        with conn.cursor() as cur:
            cur.execute(_STAGE)
            with cur.copy(_COPY) as copy:
                for seq, row in enumerate(rows):
                    copy.write_row([seq] + [dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in COLUMNS])
            cur.execute(_CONFLICTS)
            conflicts = tuple(sorted(seq for (seq,) in cur.fetchall()))
            cur.execute(_UPSERT)
            inserted, updated = cur.fetchone()
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    return WriteResult(received=len(rows), inserted=inserted, updated=updated, conflicts=len(conflicts),
                       conflict_positions=conflicts)
