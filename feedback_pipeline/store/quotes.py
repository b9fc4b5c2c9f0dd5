"""Which artifact quotes which feedback row's text (sql/009 ``feedback_quotes``), so that erasure reaches it.

An artifact is a report file (``file:<path relative to the data directory>``) or one run's rows of
improvement_suggestions (``suggestions:<run_id>``). Writers record the ids they quote each time they rewrite the
artifact; erasure (``FeedbackStore.erase_rows``, ``store/erasure.py``) removes every artifact that quotes an erased
row.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.tables import QUOTES

_BATCH = 5000


def record_quotes(store: FeedbackStore, artifacts: Iterable[str], feedback_ids: Iterable[str]) -> int:
    """Replace what ``artifacts`` quote by ``feedback_ids`` (one transaction); returns the ids recorded."""
    artifacts, ids = sorted(set(artifacts)), sorted({str(i) for i in feedback_ids})
    with store.engine.begin() as conn:
        conn.execute(sa.delete(QUOTES).where(QUOTES.c.artifact.in_(artifacts)))
        rows = [{"artifact": a, "feedback_id": i} for a in artifacts for i in ids]
        for start in range(0, len(rows), _BATCH):
            conn.execute(sa.insert(QUOTES), rows[start:start + _BATCH])
    return len(ids)


def file_artifact(relative_path: str) -> str:
    return f"file:{relative_path}"


def suggestions_artifact(run_id: str) -> str:
    return f"suggestions:{run_id}"
