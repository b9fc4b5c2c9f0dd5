"""cleaned_feedback (all time) and daily_cleaned_feedback (one UTC day): validated, deduplicated, redacted.

Both clean their window of the feedback table into the cleaned_feedback table in bounded chunks
(``cleaning/windowed.py``) and swap the window in one transaction, so re-running a day or backfilling a range never
duplicates rows and memory does not grow with the table. They hand downstream a ``TableRef``, never the rows.
Rejected rows are kept as ids and reasons in rejected_feedback (erasure deletes them too), never as text.
"""

import csv

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from feedback_pipeline.cleaning.windowed import DEFAULT_CHUNK_SIZE, WindowCleaning, clean_window
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.defs.table_refs import table_ref_io_manager
from feedback_pipeline.store.cleaned import read_rejected
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.store.tables import CLEANED

DAILY = dg.DailyPartitionsDefinition(start_date="2023-01-01", timezone="UTC")


class CleaningConfig(dg.Config):
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, description="Rows per chunk read, redacted and written: memory is "
                                                             "bounded by it, not by the table.")
    workers: int = Field(1, description="Processes that redact chunks in parallel (1: in the run's process).")


def _metadata(done: WindowCleaning) -> dict:
    reasons = pd.DataFrame(list(done.rejected_reasons.items()), columns=["reason", "rows"])
    return {
        **{k: v for k, v in done.stats.items() if isinstance(v, (int, float))},
        "rows_written": done.written,
        "window": done.ref.window,
        "fingerprint": done.ref.fingerprint,
        "labels": dg.MetadataValue.json(done.labels),
        "pii_redactions": dg.MetadataValue.json(done.stats.get("pii_redactions", {})),
        "rejected_reasons": dg.MetadataValue.md(reasons.to_markdown(index=False) if len(reasons) else "none"),
    }


@dg.asset(group_name="cleaning", kinds={"sql"}, io_manager_def=table_ref_io_manager,
          description="All feedback that passed validation, duplicates resolved, identifiers redacted: the "
                      "cleaned_feedback table, cleaned in bounded chunks.")
def cleaned_feedback(context: dg.AssetExecutionContext, config: CleaningConfig, raw_feedback: TableRef,
                     feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> TableRef:
    store = feedback_store.store()
    done = clean_window(store, raw_feedback.window_start, raw_feedback.window_end, config.chunk_size, config.workers)
    # The rejected-rows report: ids and reasons only (the rows themselves stay in the feedback table).
    rejected_path = workspace.path("reports") / "rejected_feedback.csv"
    with open(rejected_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "partition_date", "reject_reason"])
        writer.writerows(read_rejected(store).itertuples(index=False))
    context.add_output_metadata({**_metadata(done), "rejected_rows_file": dg.MetadataValue.path(str(rejected_path))})
    return TableRef(done.ref.table, done.ref.window_start, done.ref.window_end, done.ref.rows, done.ref.fingerprint,
                    (str(rejected_path),))


@dg.asset(group_name="cleaning", kinds={"sql"}, partitions_def=DAILY,
          backfill_policy=dg.BackfillPolicy.single_run(),
          description="One UTC day (or a backfilled range of days) of feedback cleaned into the cleaned_feedback "
                      "table, in bounded chunks.")
def daily_cleaned_feedback(context: dg.AssetExecutionContext, config: CleaningConfig,
                           feedback_store: FeedbackStoreResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    done = clean_window(feedback_store.store(), window.start.date(), window.end.date(), config.chunk_size,
                        config.workers)
    return dg.MaterializeResult(metadata=_metadata(done))


@dg.asset_check(asset=cleaned_feedback, description="Cleaning left rated rows to learn from.")
def check_cleaned_feedback_has_rated_rows(cleaned_feedback: TableRef,
                                          feedback_store: FeedbackStoreResource) -> dg.AssetCheckResult:
    with feedback_store.store().engine.connect() as conn:
        rated = conn.execute(sa.select(sa.func.count()).select_from(CLEANED)
                             .where(CLEANED.c.label.in_(["liked", "disliked"]))).scalar_one()
    return dg.AssetCheckResult(passed=rated > 0, metadata={"rated_rows": int(rated)})
