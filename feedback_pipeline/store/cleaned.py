"""The cleaned_feedback table: windows rewritten idempotently, read by aggregates, samples and chunks.

A window is a range of UTC days of ``created_at`` (``partition_date``); None on both sides is the whole table.
Writers replace a window in one transaction (readers see the old window or the new one, never a mix). Readers
never load a window whole unless they ask to (``read_cleaned``): reports group in SQL (``label_counts``), analyses
that need Python read a bounded stable sample (``analysis_sample``), dataset builders stream chunks
(``cleaned_chunks``).

``CleaningStage`` is the SQL side of chunked cleaning (``cleaning/windowed.py``): temporary tables on one held
connection for the dedup keys, the winners, the cleaned rows and the rejected ids, then one transaction that swaps
the window in. Temporary tables live in the store (and vanish with the connection), so no feedback text leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import sqlalchemy as sa

from feedback_pipeline.store.refs import TableRef, fingerprint_of
from feedback_pipeline.store.repository import FeedbackStore, window_bounds
from feedback_pipeline.store.tables import CLEANED, CLEANED_COLUMNS, FEEDBACK, REJECTED, sample_key
from feedback_pipeline.store.tables import CLEANED_TIME_COLUMNS as _TIMES
from feedback_pipeline.store.tables import to_db_time as _to_db_time
from feedback_pipeline.store.tables import utc as _utc

__all__ = ["CLEANED", "CLEANED_COLUMNS", "replace_window", "read_cleaned", "day_of", "cleaned_chunks",
           "cleaned_by_ids", "label_counts", "analysis_sample", "cleaned_ref", "feedback_ref", "CleaningStage",
           "read_rejected"]

_INTS = ("message_index", "prompt_tokens", "completion_tokens", "rating_thumb", "rating_stars", "duplicate_count",
         "pii_redacted")
_FLOATS = ("latency_ms", "rating")


def day_of(ts) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d")


def _missing(value) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def cleaned_row(record: dict, dialect: str, now: datetime) -> dict:
    """One cleaned frame row as the table takes it (plain Python values, DB times, partition day, sample key)."""
    row = {name: record.get(name) for name in CLEANED_COLUMNS}
    row["partition_date"] = day_of(record["created_at"])
    row["cleaned_at"] = now
    row["sample_key"] = sample_key(row["id"])
    row["spam_reason"] = row["spam_reason"] if isinstance(row["spam_reason"], str) and row["spam_reason"] else None
    row["exclude_from_training"] = bool(row["exclude_from_training"]) if isinstance(
        row["exclude_from_training"], (bool, int, np.bool_, np.integer)) else False
    for name in _TIMES:
        row[name] = _to_db_time(pd.Timestamp(row[name]).to_pydatetime(), dialect)
    for name in _INTS:
        row[name] = None if _missing(row[name]) else int(row[name])
    for name in _FLOATS:
        row[name] = None if _missing(row[name]) else float(row[name])
    return row


def _window(table: sa.Table, start: date | None, end: date | None) -> list:
    clauses = []
    if start is not None:
        clauses.append(table.c.partition_date >= start.isoformat())
    if end is not None:
        clauses.append(table.c.partition_date < end.isoformat())
    return clauses


def replace_window(store: FeedbackStore, cleaned: pd.DataFrame, start: date | None, end: date | None) -> int:
    """Replace every cleaned row whose day lies in [start, end) (all rows when both are None) by ``cleaned`` (a
    frame from ``clean_feedback``; small windows and tests: the pipeline writes through ``CleaningStage``).

    One transaction: readers see the old window or the new one, never a mix or a duplicate.
    """
    now = datetime.now(timezone.utc)
    rows = [cleaned_row(record, store.dialect, now) for record in cleaned.to_dict("records")]
    outside = [r["partition_date"] for r in rows if not _inside(r["partition_date"], start, end)]
    if outside:
        raise ValueError(f"{len(outside)} cleaned rows fall outside the window [{start}, {end}), e.g. {outside[0]}")
    with store.engine.begin() as conn:
        conn.execute(sa.delete(CLEANED).where(*_window(CLEANED, start, end)))
        if rows:
            conn.execute(sa.insert(CLEANED), rows)
    return len(rows)


def _frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    for name in _TIMES:
        if name in frame:
            frame[name] = pd.to_datetime(frame[name].map(_utc), utc=True)
    if "id" in frame:
        frame["id"] = frame["id"].astype(str)
    return frame


def read_cleaned(store: FeedbackStore, start: date | None = None, end: date | None = None,
                 columns: Iterable[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """The window's cleaned rows (at most ``limit``), ordered by (created_at, id), as a frame."""
    return store.read_table("cleaned_feedback", start, end, columns, limit)


def cleaned_chunks(store: FeedbackStore, start: date | None, end: date | None, columns: Iterable[str] | None = None,
                   chunk_size: int = 5000, where: Iterable = ()) -> Iterator[pd.DataFrame]:
    """The window's cleaned rows (and the extra SQL ``where`` clauses) as frames of at most ``chunk_size`` rows in
    (created_at, id) order, by keyset pagination on ``ix_cleaned_created``: memory stays bounded by the chunk."""
    columns = list(columns or CLEANED_COLUMNS)
    selected = list(dict.fromkeys([*columns, "created_at", "id"]))
    low, high = window_bounds(start, end)
    base = sa.select(*(CLEANED.c[c] for c in selected)).where(*where).order_by(
        CLEANED.c.created_at, CLEANED.c.id).limit(chunk_size)
    if low is not None:
        base = base.where(CLEANED.c.created_at >= _to_db_time(low, store.dialect))
    if high is not None:
        base = base.where(CLEANED.c.created_at < _to_db_time(high, store.dialect))
    last = None
    with store.engine.connect() as conn:
        while True:
            query = base if last is None else base.where(
                CLEANED.c.created_at >= last[0], sa.or_(CLEANED.c.created_at > last[0], CLEANED.c.id > last[1]))
            records = [dict(r._mapping) for r in conn.execute(query)]
            if not records:
                return
            last = (records[-1]["created_at"], records[-1]["id"])
            yield _frame(records, selected)[columns]
            if len(records) < chunk_size:
                return


def cleaned_by_ids(store: FeedbackStore, start: date | None, end: date | None, ids: Iterable[str],
                   columns: Iterable[str] | None = None, batch: int = 1000) -> Iterator[pd.DataFrame]:
    """The window's cleaned rows whose id is in ``ids``, ``batch`` ids per query (:func:`cleaned_chunks` with an
    ``id IN`` clause): a builder fetches the text of just the rows it writes, a batch at a time."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    for first in range(0, len(ids), batch):
        part = ids[first:first + batch]
        yield from cleaned_chunks(store, start, end, columns, chunk_size=len(part) + 1,
                                  where=[CLEANED.c.id.in_(part)])


# --- aggregates and samples ----------------------------------------------------------------------------------

def label_counts(store: FeedbackStore, start: date | None, end: date | None,
                 columns: Iterable[str]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Rows per (day, label) over the window, and per (day, value, label) for each of ``columns``: the SQL
    group-bys that the quality report, drops and plots are computed from (values as stored; blank and NULL
    are merged by the report's ``segment_values``). PostgreSQL: one scan (GROUPING SETS)."""
    columns = list(columns)
    day, label, n = CLEANED.c.partition_date, CLEANED.c.label, sa.func.count().label("n")
    window = _window(CLEANED, start, end)
    with store.engine.connect() as conn:
        if store.dialect == "postgresql" and columns:
            sets = [sa.tuple_(day, label, CLEANED.c[c]) for c in columns] + [sa.tuple_(day, label)]
            flags = [sa.func.grouping(CLEANED.c[c]).label(f"g_{c}") for c in columns]
            query = sa.select(day, label, *(CLEANED.c[c] for c in columns), *flags, n).where(*window) \
                .group_by(sa.func.grouping_sets(*sets))
            frame = pd.DataFrame([dict(r._mapping) for r in conn.execute(query)],
                                 columns=["partition_date", "label", *columns, *(f"g_{c}" for c in columns), "n"])
            overall = frame[(frame[[f"g_{c}" for c in columns]] == 1).all(axis=1)][["partition_date", "label", "n"]]
            per = {c: frame[frame[f"g_{c}"] == 0][["partition_date", c, "label", "n"]].rename(columns={c: "value"})
                   for c in columns}
        else:
            def grouped(*keys) -> pd.DataFrame:
                query = sa.select(day, *keys, label, n).where(*window).group_by(day, *keys, label)
                return pd.DataFrame([dict(r._mapping) for r in conn.execute(query)],
                                    columns=["partition_date", *(k.name for k in keys), "label", "n"])
            overall = grouped()
            per = {c: grouped(CLEANED.c[c]).rename(columns={c: "value"}) for c in columns}
    fix = lambda f: f.astype({"n": "int64"}).reset_index(drop=True)  # noqa: E731
    return fix(overall), {c: fix(f) for c, f in per.items()}


def analysis_sample(store: FeedbackStore, start: date | None, end: date | None, cap: int | None,
                    columns: Iterable[str] | None = None, where: Iterable = ()) -> pd.DataFrame:
    """The window's rows with the ``cap`` smallest sample keys (sha256 of the id, sql/009), in (created_at, id)
    order: a uniform sample that stays the same from run to run (a row once in stays in until the data grows past
    it), bounded at any table size. ``cap=None`` reads the whole window."""
    columns = list(columns or CLEANED_COLUMNS)
    window = [*_window(CLEANED, start, end), *where]
    if cap is None:
        query = sa.select(*(CLEANED.c[c] for c in columns)).where(*window)
    else:
        keys = (sa.select(CLEANED.c.id).where(*window)
                .order_by(CLEANED.c.sample_key.asc().nulls_last(), CLEANED.c.id).limit(cap).subquery())
        query = sa.select(*(CLEANED.c[c] for c in columns)).join(keys, keys.c.id == CLEANED.c.id)
    query = query.order_by(CLEANED.c.created_at, CLEANED.c.id)
    with store.engine.connect() as conn:
        return _frame([dict(r._mapping) for r in conn.execute(query)], columns)


def window_size(store: FeedbackStore, start: date | None, end: date | None, where: Iterable = ()) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(CLEANED)
                                .where(*_window(CLEANED, start, end), *where)).scalar_one())


def _cleaned_summary(conn: sa.Connection, table, start: date | None, end: date | None) -> dict:
    c = table.c
    query = sa.select(sa.func.count().label("rows"), sa.func.max(c.updated_at).label("updated"),
                      sa.func.sum(c.rating).label("rating"), sa.func.sum(c.pii_redacted).label("redacted"),
                      sa.func.sum(c.duplicate_count).label("duplicates"),
                      sa.func.sum(sa.case((c.exclude_from_training, 1), else_=0)).label("excluded"),
                      sa.func.min(c.sample_key).label("first_key"), sa.func.max(c.sample_key).label("last_key"))
    row = conn.execute(query.where(*_window(table, start, end))).one()._mapping
    return {"rows": int(row["rows"]), "updated": str(_utc(row["updated"])), "redacted": int(row["redacted"] or 0),
            "rating": round(float(row["rating"] or 0), 6), "duplicates": int(row["duplicates"] or 0),
            "excluded": int(row["excluded"] or 0), "keys": [row["first_key"], row["last_key"]]}


def cleaned_ref(store: FeedbackStore, start: date | None = None, end: date | None = None,
                files: tuple[str, ...] = ()) -> TableRef:
    """The reference to a window of cleaned_feedback as it is now (one aggregate query over the window)."""
    with store.engine.connect() as conn:
        summary = _cleaned_summary(conn, CLEANED, start, end)
    return TableRef("cleaned_feedback", start, end, summary["rows"],
                    fingerprint_of("cleaned_feedback", start, end, summary), files)


def feedback_ref(store: FeedbackStore, by_source: list[dict] | None = None) -> TableRef:
    """The reference to the whole feedback table as it is now (from :meth:`FeedbackStore.summary` if given)."""
    by_source = store.summary() if by_source is None else by_source
    return TableRef("feedback", None, None, sum(r["rows"] for r in by_source),
                    fingerprint_of("feedback", None, None, by_source))


def read_rejected(store: FeedbackStore, start: date | None = None, end: date | None = None) -> pd.DataFrame:
    """Why cleaning rejected each stored row of the window: ids and reasons (never the text)."""
    query = sa.select(REJECTED.c.id, REJECTED.c.partition_date, REJECTED.c.reject_reason).where(
        *_window(REJECTED, start, end)).order_by(REJECTED.c.id)
    with store.engine.connect() as conn:
        frame = pd.DataFrame([dict(r._mapping) for r in conn.execute(query)],
                             columns=["id", "partition_date", "reject_reason"])
    frame["id"] = frame["id"].astype(str)
    return frame


def _inside(day: str, start: date | None, end: date | None) -> bool:
    return (start is None or day >= start.isoformat()) and (end is None or day < end.isoformat())


# --- chunked cleaning: the SQL side --------------------------------------------------------------------------

_STAGE = sa.MetaData()
KEYS = sa.Table("_clean_keys", _STAGE, sa.Column("id", CLEANED.c.id.type, primary_key=True),
                sa.Column("dedup_key", sa.Text), sa.Column("qr_key", sa.Text), sa.Column("u", sa.BigInteger),
                sa.Column("i", sa.BigInteger), sa.Column("c", sa.BigInteger), prefixes=["TEMPORARY"])
WINNERS = sa.Table("_clean_winners", _STAGE, sa.Column("id", CLEANED.c.id.type), sa.Column("dup", sa.Integer))
# The cleaned rows, plus what the cross-row spam signals read (cleaning/signals.py on the cleaned rows): the
# stripped user and session, whether created_at is the row's own time, no comment, the comment's key and length,
# created_at in ns and the per-row garbage reasons.
SIGNAL_COLUMNS = ("_user", "_session", "_known", "_quiet", "_ckey", "_clen", "_created_ns", "_garbage")
OUT = sa.Table("_clean_out", _STAGE, *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in CLEANED.columns),
               sa.Column("_user", sa.Text), sa.Column("_session", sa.Text), sa.Column("_known", sa.Integer),
               sa.Column("_quiet", sa.Integer), sa.Column("_ckey", sa.Text), sa.Column("_clen", sa.Integer),
               sa.Column("_created_ns", sa.BigInteger), sa.Column("_garbage", sa.Text), prefixes=["TEMPORARY"])
REJECTS = sa.Table("_clean_rejects", _STAGE, sa.Column("id", CLEANED.c.id.type, primary_key=True),
                   sa.Column("partition_date", sa.Text), sa.Column("reject_reason", sa.Text), prefixes=["TEMPORARY"])

_WINNERS_SQL = """CREATE TEMPORARY TABLE _clean_winners AS
SELECT id, COUNT(*) OVER (PARTITION BY qr_key) AS dup FROM (
    SELECT id, qr_key, ROW_NUMBER() OVER (
        PARTITION BY dedup_key ORDER BY u DESC NULLS LAST, i DESC NULLS LAST, c DESC NULLS LAST, id DESC) AS rn
    FROM _clean_keys) ranked
WHERE rn = 1"""


class CleaningStage:
    """Temporary tables for one window's cleaning on one held connection (see the module docstring).

    Each ``add_*`` commits its chunk (short transactions: SQLite's writer lock is never held between chunks);
    ``swap`` replaces the window of cleaned_feedback and rejected_feedback in one transaction, keeping only rows
    whose feedback row still exists (a user erased meanwhile stays erased)."""

    def __init__(self, store: FeedbackStore, conn: sa.Connection):
        self.store, self.conn = store, conn

    def __enter__(self) -> CleaningStage:
        self.drop()  # a run that died on this pooled connection may have left its tables
        for table in (KEYS, OUT, REJECTS):
            table.create(self.conn)
        self.conn.commit()
        return self

    def __exit__(self, *exc) -> None:
        if self.conn.in_transaction():
            self.conn.rollback()
        self.drop()

    def drop(self) -> None:
        for name in ("_clean_keys", "_clean_winners", "_clean_out", "_clean_rejects"):
            self.conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        self.conn.commit()

    def add_keys(self, keys: pd.DataFrame) -> None:
        if len(keys):
            rows = [{k: (None if _missing(v) else v) for k, v in r.items()} for r in keys.to_dict("records")]
            self.conn.execute(sa.insert(KEYS), rows)
        self.conn.commit()

    def add_rejects(self, rows: list[dict]) -> None:
        if rows:
            self.conn.execute(sa.insert(REJECTS), rows)
        self.conn.commit()

    def resolve(self) -> int:
        """Keep one row per (rater, query, response), the latest; count each kept (query, response): SQL-side
        ``drop_rerated`` and ``duplicate_count`` over the whole window. Returns the rows kept."""
        self.conn.execute(sa.text(_WINNERS_SQL))
        self.conn.execute(sa.text("CREATE INDEX ix_clean_winners_id ON _clean_winners (id)"))
        kept = self.conn.execute(sa.text("SELECT COUNT(*) FROM _clean_winners")).scalar_one()
        self.conn.commit()
        return int(kept)

    def winners(self, ids: list[str]) -> dict[str, int]:
        """id -> duplicate_count for the kept rows among ``ids``."""
        if not ids:
            return {}
        query = sa.select(WINNERS.c.id, WINNERS.c.dup).where(WINNERS.c.id.in_(ids))
        found = {str(r.id): int(r.dup) for r in self.conn.execute(query)}
        self.conn.commit()
        return found

    def add_cleaned(self, rows: list[dict]) -> None:
        if rows:
            self.conn.execute(sa.insert(OUT), rows)
        self.conn.commit()

    def stream(self, columns: list[str], where: list, order: list, batch: int = 10000) -> Iterator[tuple]:
        """Rows of the staged cleaned table, in ``order``, fetched ``batch`` at a time (nothing else may run on the
        connection meanwhile)."""
        query = sa.select(*(OUT.c[c] for c in columns)).where(*where).order_by(*(OUT.c[c] for c in order))
        result = self.conn.execute(query.execution_options(yield_per=batch))
        for part in result.partitions():
            yield from part
        self.conn.commit()

    def repeated_comment_keys(self, min_users: int, min_chars: int) -> set[str]:
        query = (sa.select(OUT.c._ckey).where(OUT.c._ckey.is_not(None), OUT.c._clen >= min_chars)
                 .group_by(OUT.c._ckey).having(sa.func.count(sa.distinct(OUT.c._user)) >= min_users))
        found = {r[0] for r in self.conn.execute(query)}
        self.conn.commit()
        return found

    def garbage_of(self, ids: list[str]) -> dict[str, str | None]:
        found = {}
        for start in range(0, len(ids), 5000):
            query = sa.select(OUT.c.id, OUT.c._garbage).where(OUT.c.id.in_(ids[start:start + 5000]))
            found.update({str(r.id): r._garbage for r in self.conn.execute(query)})
        self.conn.commit()
        return found

    def flag(self, reasons: dict[str, str]) -> None:
        """Set the spam reason (and exclude from training) of the rows named; rows with only per-row (garbage)
        reasons take those."""
        self.conn.execute(sa.update(OUT).where(OUT.c._garbage.is_not(None))
                          .values(spam_reason=OUT.c._garbage, exclude_from_training=True))
        if reasons:
            stmt = sa.update(OUT).where(OUT.c.id == sa.bindparam("_id")).values(
                spam_reason=sa.bindparam("_reason"), exclude_from_training=True)
            self.conn.execute(stmt, [{"_id": i, "_reason": r} for i, r in reasons.items()])
        self.conn.commit()

    def counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Labels of the staged cleaned rows, rejected rows per reason, and the rows flagged as spam."""
        labels = {r[0]: int(r[1]) for r in self.conn.execute(
            sa.select(OUT.c.label, sa.func.count()).group_by(OUT.c.label).order_by(OUT.c.label))}
        reasons = {r[0]: int(r[1]) for r in self.conn.execute(
            sa.select(REJECTS.c.reject_reason, sa.func.count()).group_by(REJECTS.c.reject_reason)
            .order_by(sa.func.count().desc(), REJECTS.c.reject_reason))}
        flagged = int(self.conn.execute(sa.select(sa.func.count()).select_from(OUT)
                                        .where(OUT.c.exclude_from_training)).scalar_one())
        self.conn.commit()
        return labels, reasons, flagged

    def swap(self, start: date | None, end: date | None) -> tuple[int, TableRef]:
        """One transaction: the window of cleaned_feedback and rejected_feedback replaced by the staged rows whose
        feedback row still exists. Returns the rows written and the new window's reference."""
        alive = lambda table: sa.exists().where(FEEDBACK.c.id == table.c.id)  # noqa: E731
        now = _to_db_time(datetime.now(timezone.utc), self.store.dialect)
        conn = self.conn
        conn.execute(sa.delete(CLEANED).where(*_window(CLEANED, start, end)))
        conn.execute(sa.delete(REJECTED).where(*_window(REJECTED, start, end)))
        conn.execute(sa.insert(CLEANED).from_select(
            CLEANED_COLUMNS, sa.select(*(OUT.c[c] for c in CLEANED_COLUMNS)).where(alive(OUT))))
        conn.execute(sa.insert(REJECTED).from_select(
            ["id", "partition_date", "reject_reason", "rejected_at"],
            sa.select(REJECTS.c.id, REJECTS.c.partition_date, REJECTS.c.reject_reason,
                      sa.literal(now, REJECTED.c.rejected_at.type)).where(alive(REJECTS))))
        summary = _cleaned_summary(conn, CLEANED, start, end)
        conn.commit()
        return summary["rows"], TableRef("cleaned_feedback", start, end, summary["rows"],
                                      fingerprint_of("cleaned_feedback", start, end, summary))
