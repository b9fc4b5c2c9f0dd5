"""What assets over feedback hand each other: a small typed reference to a table window, never the rows.

``raw_feedback`` is the ``feedback`` table, ``cleaned_feedback`` the ``cleaned_feedback`` table (all of it, or one
partition's days). A consumer reads what it needs from the store: SQL aggregates, a bounded stable sample, or rows
streamed in chunks (``store/cleaned.py``). ``read`` returns a frame for tests and small exports (bounded by
``limit``; the whole window without it); no asset receives one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from feedback_pipeline.store.repository import FeedbackStore

TableName = Literal["feedback", "cleaned_feedback"]


@dataclass(frozen=True)
class TableRef:
    """A window of a feedback table: ``[window_start, window_end)`` by UTC day of ``created_at`` (None: unbounded),
    its row count and a fingerprint of its content (changes when a row in it is added, removed or re-rated), plus
    the files written beside it (ids-and-reasons reports, never feedback text)."""

    table: TableName
    window_start: date | None
    window_end: date | None
    rows: int
    fingerprint: str
    files: tuple[str, ...] = ()

    @property
    def window(self) -> str:
        return f"{self.window_start or '-inf'} .. {self.window_end or '+inf'}"

    def read(self, store: FeedbackStore, columns: list[str] | None = None, limit: int | None = None) -> pd.DataFrame:
        """The window's rows as a frame, ordered by (created_at, id): at most ``limit`` rows (None: all of them, for
        consumers that need the whole window in memory)."""
        return store.read_table(self.table, self.window_start, self.window_end, columns, limit)


def fingerprint_of(table: str, window_start: date | None, window_end: date | None, summary: dict) -> str:
    """sha256 of the table, the window and an aggregate summary of its rows (counts, sums, newest timestamps)."""
    text = json.dumps([table, str(window_start), str(window_end), summary], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
