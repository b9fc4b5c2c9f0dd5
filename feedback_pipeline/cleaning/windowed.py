"""Clean a window of the feedback table into cleaned_feedback in bounded chunks: memory does not grow with the table.

The same steps and result as ``clean_feedback`` + ``apply_signals`` on the whole window (tested on the demo data),
split so that no step holds more than one chunk of rows in Python:

1. **screen** (chunk by chunk, keyset pagination on (created_at, id)): normalise and validate each row; rejected
   rows go to a temporary table as id + reason, valid rows as their dedup keys only (sha256 of rater + query +
   response, of query + response) and the order of a rater's ratings;
2. **resolve** (SQL): one row per (rater, query, response), the latest (``drop_rerated``), and each kept row's
   ``duplicate_count``, with window functions over the whole window;
3. **finish** (chunk by chunk, optionally in ``workers`` processes): the kept rows are read again, normalised,
   redacted by field policy and labelled, with the per-row spam signal (garbage text) and what the cross-row
   signals need (user, session, time, comment key) into a temporary table;
4. **signals**: repeated comments by SQL ``GROUP BY``; bursts and rating floods per user / session from rows
   streamed in (user, time) order, one group in memory at a time;
5. **swap**: one transaction replaces the window of cleaned_feedback and rejected_feedback (rows whose feedback row
   was erased meanwhile are left out).

Temporary tables live in the store and vanish with the connection: no feedback text leaves the database, and the
rejected rows keep ids and reasons only.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd

from feedback_pipeline.cleaning.clean import _normalise_frame, dedup_keys, finish, rejected_fields, screen
from feedback_pipeline.cleaning.signals import _dense, _present, garbage_kind
from feedback_pipeline.store.cleaned import OUT, SIGNAL_COLUMNS, CleaningStage, cleaned_row, day_of
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.store.repository import FeedbackStore, window_bounds
from feedback_pipeline.store.tables import sample_key

DEFAULT_CHUNK_SIZE = 5000


@dataclass(frozen=True)
class SignalThresholds:
    """``cleaning/signals.py``'s thresholds (same names and defaults)."""

    burst_window: str = "1min"
    burst_max: int = 20
    comment_min_users: int = 5
    comment_min_chars: int = 20
    flood_window: str = "10min"
    flood_max: int = 10


@dataclass
class WindowCleaning:
    """What one window's cleaning did: the reference to the rewritten window, rows written and the statistics
    ``clean_feedback`` reports (plus ``spam_flagged``), labels and rejected rows per reason."""

    ref: TableRef
    written: int
    stats: dict
    labels: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)


_INT_SIGNALS = ("_known", "_quiet", "_clen", "_created_ns")


def _plain(value, whole: bool):
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value) if whole else value


def _ns(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, errors="coerce")


def finish_chunk(chunk: pd.DataFrame, duplicates: dict[str, int]) -> tuple[pd.DataFrame, Counter]:
    """Step 3 on one chunk of raw rows: the kept ones (ids in ``duplicates``, their duplicate_count) normalised,
    redacted and labelled, with the signal columns. Pure."""
    work = _normalise_frame(chunk.reset_index(drop=True))
    kept = work[work["id"].isin(duplicates.keys())].copy()
    kept["duplicate_count"] = kept["id"].map(duplicates).astype("int64")
    kept, by_kind = finish(kept)
    created, ingested = _ns(kept["created_at"]), _ns(kept["ingested_at"])
    key = _present(kept["comment"]).str.lower().str.replace(r"\s+", " ", regex=True)
    garbage = [[f"garbage {column}: {kind}" for column in ("query", "response")
                if (kind := garbage_kind(getattr(row, column)))] for row in kept[["query", "response"]].itertuples()]
    kept = kept.assign(
        _user=_present(kept["user_id"]).astype(object).where(lambda s: s.notna(), None),
        _session=_present(kept["session_id"]).astype(object).where(lambda s: s.notna(), None),
        _known=(created != ingested).astype(int).to_numpy(),
        _quiet=key.isna().astype(int).to_numpy(),
        _ckey=[None if pd.isna(k) else k for k in key],
        _created_ns=[int(t.value) for t in created],
        _garbage=["; ".join(g) or None for g in garbage],
    )
    kept["_clen"] = [None if k is None else len(k) for k in kept["_ckey"]]
    return kept, by_kind


def finish_rows(chunk: pd.DataFrame, duplicates: dict[str, int], dialect: str, now: datetime) -> tuple[list, Counter]:
    """``finish_chunk`` as the rows the staging table takes (plain values, database times): in worker processes
    the conversion runs there too, so the parent only reads, stages and writes."""
    frame, by_kind = finish_chunk(chunk, duplicates)
    rows = []
    for record in frame.assign(spam_reason=None, exclude_from_training=False).to_dict("records"):
        row = cleaned_row(record, dialect, now)
        row.update({name: _plain(record[name], name in _INT_SIGNALS) for name in SIGNAL_COLUMNS})
        rows.append(row)
    return rows, by_kind


class _Pool:
    """``finish_rows`` in this process (workers <= 1) or in worker processes, results in submission order, at
    most ``workers + 1`` chunks in flight (memory stays bounded)."""

    def __init__(self, workers: int):
        # spawn: a forked child would share the parent's open database connections.
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) \
            if workers > 1 else None
        self.limit = workers + 1
        self.pending: list[Future | tuple] = []

    def submit(self, *args) -> Iterator[tuple[list, Counter]]:
        if self.executor is None:
            yield finish_rows(*args)
            return
        self.pending.append(self.executor.submit(finish_rows, *args))
        while len(self.pending) >= self.limit:
            yield self.pending.pop(0).result()

    def drain(self) -> Iterator[tuple[list, Counter]]:
        while self.pending:
            yield self.pending.pop(0).result()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


def clean_window(store: FeedbackStore, start: date | None, end: date | None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 workers: int = 1, thresholds: SignalThresholds = SignalThresholds()) -> WindowCleaning:
    """Clean the feedback rows created in ``[start, end)`` (UTC days; None: unbounded) into cleaned_feedback,
    replacing that window (see the module docstring). ``workers`` > 1 redacts in that many processes."""
    low, high = window_bounds(start, end)
    stats = Counter()
    rejected_by_field: Counter = Counter()
    by_kind: Counter = Counter()
    pool = _Pool(max(1, min(workers, os.cpu_count() or 1)))
    try:
        with store.engine.connect() as conn, CleaningStage(store, conn) as stage:
            # 1. screen
            valid_rows = 0
            for chunk in store.chunks(conn, low, high, chunk_size):
                work, reasons = screen(chunk)
                bad = reasons != ""
                stats["rows_in"] += len(chunk)
                rejected = work[bad]
                rejected_by_field.update(rejected_fields(reasons[bad]))
                stage.add_rejects([{"id": i, "partition_date": None if pd.isna(t) else day_of(t), "reject_reason": r}
                                   for i, t, r in zip(rejected["id"], rejected["created_at"], reasons[bad])])
                stage.add_keys(dedup_keys(work[~bad]))
                valid_rows += int((~bad).sum())
            stats["rows_rejected"] = stats["rows_in"] - valid_rows
            # 2. resolve
            kept = stage.resolve()
            stats["duplicates_removed"], stats["rows_out"] = valid_rows - kept, kept
            # 3. finish
            now = datetime.now(timezone.utc)

            def store_rows(done: tuple[list, Counter]) -> None:
                rows, kinds = done
                by_kind.update(kinds)
                stage.add_cleaned(rows)

            for chunk in store.chunks(conn, low, high, chunk_size):
                duplicates = stage.winners(chunk["id"].tolist())
                if duplicates:
                    for done in pool.submit(chunk, duplicates, store.dialect, now):
                        store_rows(done)
            for done in pool.drain():
                store_rows(done)
            # 4. signals
            stage.flag(_cross_row_reasons(stage, thresholds))
            labels, rejected_reasons, flagged = stage.counts()
            # 5. swap
            written, ref = stage.swap(start, end)
    finally:
        pool.close()
    stats = {**{k: int(v) for k, v in stats.items()}, "pii_redactions": dict(sorted(by_kind.items())),
             "rejected_by_field": dict(sorted(rejected_by_field.items())), "spam_flagged": flagged}
    return WindowCleaning(ref, written, stats, labels, rejected_reasons)


def _groups(rows, key: int = 1) -> Iterator[list[tuple]]:
    for _, group in itertools.groupby(rows, key=lambda r: r[key]):
        yield list(group)


def _cross_row_reasons(stage: CleaningStage, t: SignalThresholds) -> dict[str, str]:
    """The spam reasons that need other rows (bursts, repeated comments, rating floods), composed with the row's
    garbage reasons in ``spam_signals``' order; only rows with a cross-row reason are returned."""
    c = OUT.c
    burst_ns, flood_ns = pd.Timedelta(t.burst_window).value, pd.Timedelta(t.flood_window).value
    flags: dict[str, list[str]] = {}
    for column in ("_user", "_session"):
        reason = f"burst: {column.strip('_')}"
        rows = stage.stream(["id", column, "_created_ns"], [c._known == 1, c[column].is_not(None)],
                            [column, "_created_ns", "id"])
        for group in _groups(rows):
            dense = _dense(np.array([r[2] for r in group], dtype="int64"), burst_ns, t.burst_max)
            for row in itertools.compress(group, dense):
                flags.setdefault(str(row[0]), []).append(reason)
    common = stage.repeated_comment_keys(t.comment_min_users, t.comment_min_chars)
    if common:
        rows = stage.stream(["id", "_ckey"], [c._ckey.in_(sorted(common))], ["id"])
        for row in rows:
            flags.setdefault(str(row[0]), []).append("repeated comment")
    flooded: set[str] = set()
    rows = stage.stream(["id", "_user", "_created_ns", "rating", "_quiet"], [c._known == 1, c._user.is_not(None)],
                        ["_user", "_created_ns", "id"])
    for group in _groups(rows):
        # A run: consecutive uncommented rows of one user with one rating (signals._flood).
        runs, previous = [], None
        for row in group:
            if row[4] and previous is not None and previous[4] and previous[3] == row[3]:
                runs[-1].append(row)
            elif row[4]:
                runs.append([row])
            previous = row
        for run in runs:
            dense = _dense(np.array([r[2] for r in run], dtype="int64"), flood_ns, t.flood_max)
            flooded.update(str(r[0]) for r in itertools.compress(run, dense))
    for row_id in flooded:
        flags.setdefault(row_id, [])
    if not flags:
        return {}
    garbage = stage.garbage_of(sorted(flags))
    return {row_id: "; ".join([*reasons, *([garbage[row_id]] if garbage.get(row_id) else []),
                               *(["rating flood"] if row_id in flooded else [])])
            for row_id, reasons in flags.items()}


__all__ = ["clean_window", "finish_chunk", "WindowCleaning", "SignalThresholds", "sample_key"]
