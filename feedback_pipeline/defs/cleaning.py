"""cleaned_feedback (all time) and daily_cleaned_feedback (one UTC day): validated, deduplicated, redacted.

Both rewrite their window of the cleaned_feedback table with delete-then-insert, so re-running a day or
backfilling a range from the UI never duplicates rows.
"""

from datetime import date, datetime, time, timezone

import dagster as dg
import pandas as pd

from feedback_pipeline.cleaning.clean import CleaningResult, clean_feedback
from feedback_pipeline.cleaning.signals import apply_signals
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.store.cleaned import replace_window

DAILY = dg.DailyPartitionsDefinition(start_date="2023-01-01", timezone="UTC")


def _clean_and_store(raw: pd.DataFrame, feedback_store: FeedbackStoreResource, start: date | None,
                     end: date | None) -> tuple[CleaningResult, int]:
    result = clean_feedback(raw)
    # Bot/spam rows stay visible in reports but are flagged and kept out of training sets.
    result.cleaned = apply_signals(result.cleaned)
    result.stats["spam_flagged"] = int(result.cleaned["exclude_from_training"].sum())
    written = replace_window(feedback_store.store(), result.cleaned, start, end)
    return result, written


def _metadata(result: CleaningResult, written: int) -> dict:
    reasons = result.rejected["reject_reason"].value_counts().rename_axis("reason").rename("rows").reset_index()
    return {
        **{k: v for k, v in result.stats.items() if isinstance(v, (int, float))},
        "rows_written": written,
        "labels": dg.MetadataValue.json(result.cleaned["label"].value_counts().to_dict()),
        "pii_redactions": dg.MetadataValue.json(result.stats.get("pii_redactions", {})),
        "rejected_reasons": dg.MetadataValue.md(reasons.to_markdown(index=False) if len(reasons) else "none"),
    }


@dg.asset(group_name="cleaning", kinds={"pandas", "sql"},
          description="All feedback that passed validation, duplicates resolved, identifiers redacted.")
def cleaned_feedback(context: dg.AssetExecutionContext, raw_feedback: pd.DataFrame,
                     feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> pd.DataFrame:
    result, written = _clean_and_store(raw_feedback, feedback_store, None, None)
    rejected_path = workspace.path("reports") / "rejected_feedback.csv"
    result.rejected.to_csv(rejected_path, index=False)
    context.add_output_metadata({**_metadata(result, written),
                                 "rejected_rows_file": dg.MetadataValue.path(str(rejected_path))})
    return result.cleaned


@dg.asset(group_name="cleaning", kinds={"pandas", "sql"}, partitions_def=DAILY,
          backfill_policy=dg.BackfillPolicy.single_run(),
          description="One UTC day (or a backfilled range of days) of feedback cleaned into the cleaned_feedback table.")
def daily_cleaned_feedback(context: dg.AssetExecutionContext, feedback_store: FeedbackStoreResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    raw = feedback_store.store().read_frame(datetime.combine(start, time(), timezone.utc),
                                            datetime.combine(end, time(), timezone.utc))
    result, written = _clean_and_store(raw, feedback_store, start, end)
    return dg.MaterializeResult(metadata={**_metadata(result, written), "window": f"{start} .. {end}"})


@dg.asset_check(asset=cleaned_feedback, description="Cleaning left rated rows to learn from.")
def check_cleaned_feedback_has_rated_rows(cleaned_feedback: pd.DataFrame) -> dg.AssetCheckResult:
    rated = int(cleaned_feedback["label"].isin(["liked", "disliked"]).sum())
    return dg.AssetCheckResult(passed=rated > 0, metadata={"rated_rows": rated})
