"""sft_dataset and kto_dataset (all time, rolling) and their weekly partitions: fingerprinted JSONL training sets.

Each build streams its window of the cleaned_feedback table in chunks (``store.cleaned.cleaned_chunks``) to JSONL:
one pass for the split and the answers (no text kept), one for the answers' text, written line by line.
"""

from datetime import date

import dagster as dg
from pydantic import Field

from feedback_pipeline.datasets.build import (SCAN_COLUMNS, BuiltDataset, SFTPolicy, TiePolicy,
                                              build_kto_dataset_from_chunks, build_sft_dataset_from_chunks, read_jsonl)
from feedback_pipeline.datasets.splits import leaked_prompts
from feedback_pipeline.defs.cleaning import daily_cleaned_feedback
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.store.cleaned import cleaned_by_ids, cleaned_chunks
from feedback_pipeline.store.refs import TableRef

CHUNK_SIZE = 5000

# Weeks start on Monday 00:00 UTC; each partition reads the days daily_cleaned_feedback wrote for that week.
WEEKLY = dg.WeeklyPartitionsDefinition(start_date="2023-01-02", day_offset=1, timezone="UTC")


class SFTDatasetConfig(dg.Config):
    liked_weight: float = Field(2.0, description="Loss weight of a liked response (before the factors below).")
    disliked_weight: float = Field(0.5, description="Loss weight of a disliked response, when included.")
    include_disliked: bool = Field(False, description="Also imitate disliked responses (down-weighted).")
    min_strength: float = Field(0.25, description="Floor of the |rating| factor (stars, net vote agreement).")
    rater_bonus: float = Field(0.25, description="Weight added per doubling of agreeing raters.")
    max_support: float = Field(2.0, description="Cap of the rater-count factor.")
    recency_half_life_days: float | None = Field(180.0, description="Age at which a row weighs half; None: no decay.")
    min_recency: float = Field(0.25, description="Floor of the recency factor.")
    eval_fraction: float = Field(0.15, description="Share of conversations held out for evaluation.")
    split_by_user: bool = Field(True, description="Keep each user's rows on one side where that is possible.")
    min_train_examples: int = Field(20, description="Stop with an error below this many training examples.")
    max_file_mb: float = Field(50.0, description="Cap per JSONL file; the lowest-weight records are dropped first.")


class KTODatasetConfig(dg.Config):
    eval_fraction: float = Field(0.15, description="Share of conversations held out for evaluation.")
    split_by_user: bool = Field(True, description="Keep each user's rows on one side where that is possible.")
    min_train_examples: int = Field(20, description="Stop with an error below this many training examples.")
    max_file_mb: float = Field(50.0, description="Cap per JSONL file.")
    tie_policy: TiePolicy = Field(
        "drop", description="An answer as often liked as disliked: 'drop' leaves it out, 'neutral' writes it to "
                            "neutral.jsonl with label null (KTO trains on true/false only).")


def describe_dataset(context: dg.AssetExecutionContext, built: BuiltDataset) -> dict:
    context.add_output_metadata({
        "fingerprint": built.fingerprint,
        "train_rows": built.counts.get("train", 0),
        "eval_rows": built.counts.get("eval", 0),
        "label_balance": dg.MetadataValue.json(built.label_balance),
        "stats": dg.MetadataValue.json(built.stats),
        # None (no rated row) is a null entry, which the retraining sensor reads as no watermark.
        "data_watermark": dg.MetadataValue.text(built.data_watermark) if built.data_watermark
        else dg.MetadataValue.null(),
        "directory": dg.MetadataValue.path(str(built.directory)),
    })
    return {"name": built.name, "directory": str(built.directory), "fingerprint": built.fingerprint,
            "counts": built.counts, "data_watermark": built.data_watermark,
            "train_file": str(built.file("train")), "eval_file": str(built.file("eval"))}


def window_chunks(store: FeedbackStoreResource, start: date | None, end: date | None,
                  columns: tuple[str, ...] = SCAN_COLUMNS):
    """The window's cleaned rows as a re-iterable stream of ``CHUNK_SIZE``-row frames (a builder's ``chunks``)."""
    return lambda: cleaned_chunks(store.store(), start, end, columns, CHUNK_SIZE)


def window_rows(store: FeedbackStoreResource, start: date | None, end: date | None, columns: list[str]):
    """``ids -> frames`` of those rows of the window (a builder's ``fetch``), one query per batch of ids."""
    return lambda ids: cleaned_by_ids(store.store(), start, end, ids, columns)


@dg.asset(group_name="datasets", kinds={"json"},
          description="All-time rolling OpenAI chat JSONL of liked responses with per-example weights (train/eval), "
                      "streamed from the cleaned_feedback table.")
def sft_dataset(context: dg.AssetExecutionContext, config: SFTDatasetConfig, cleaned_feedback: TableRef,
                feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    policy = SFTPolicy(**config.model_dump())
    chunks = window_chunks(feedback_store, cleaned_feedback.window_start, cleaned_feedback.window_end)
    return describe_dataset(context, build_sft_dataset_from_chunks(chunks, workspace.path("datasets"), policy))


@dg.asset(group_name="datasets", kinds={"json"},
          description="All-time rolling prompt / completion / label records of every rated response (train/eval), "
                      "streamed from the cleaned_feedback table.")
def kto_dataset(context: dg.AssetExecutionContext, config: KTODatasetConfig, cleaned_feedback: TableRef,
                feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    chunks = window_chunks(feedback_store, cleaned_feedback.window_start, cleaned_feedback.window_end)
    return describe_dataset(context, build_kto_dataset_from_chunks(chunks, workspace.path("datasets"),
                                                                   **config.model_dump()))


def _week(context: dg.AssetExecutionContext) -> tuple[date, date]:
    window = context.partition_time_window
    return window.start.date(), window.end.date()


@dg.asset(group_name="datasets", kinds={"json"}, partitions_def=WEEKLY, deps=[daily_cleaned_feedback],
          description="One week's SFT set (the week's feedback from the cleaned_feedback table), same policy.")
def weekly_sft_dataset(context: dg.AssetExecutionContext, config: SFTDatasetConfig,
                       feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    start, end = _week(context)
    built = build_sft_dataset_from_chunks(window_chunks(feedback_store, start, end), workspace.path("datasets"),
                                          SFTPolicy(**config.model_dump()), name=f"sft_weekly/{start}")
    return describe_dataset(context, built)


@dg.asset(group_name="datasets", kinds={"json"}, partitions_def=WEEKLY, deps=[daily_cleaned_feedback],
          description="One week's KTO set (the week's feedback from the cleaned_feedback table).")
def weekly_kto_dataset(context: dg.AssetExecutionContext, config: KTODatasetConfig,
                       feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    start, end = _week(context)
    built = build_kto_dataset_from_chunks(window_chunks(feedback_store, start, end), workspace.path("datasets"),
                                          **config.model_dump(), name=f"kto_weekly/{start}")
    return describe_dataset(context, built)


def _prompts(records: list[dict]) -> list[str]:
    return [next(m["content"] for m in reversed(r.get("prompt") or r["messages"][:-1]) if m["role"] == "user")
            for r in records]


def leakage_check(built: dict) -> dg.AssetCheckResult:
    leaked = leaked_prompts(_prompts(read_jsonl(built["train_file"])), _prompts(read_jsonl(built["eval_file"])))
    return dg.AssetCheckResult(passed=not leaked, metadata={"leaked_prompts": len(leaked)})


def identifiers_check(built: dict) -> dg.AssetCheckResult:
    """Fails when the audit detector (presidio, independent of the redactor) or the redactor itself still finds
    an identifier that the field policy removes; counts by kind only, never the values."""
    from feedback_pipeline.cleaning.pii_audit import NOT_COVERED, audit_records  # spaCy loads on first check only

    found = audit_records(read_jsonl(built["train_file"]) + read_jsonl(built["eval_file"]))
    audit, redactor = found["audit"], found["redactor"]
    return dg.AssetCheckResult(passed=not audit and not redactor, metadata={
        "identifiers_found": sum(audit.values()) + sum(redactor.values()),
        "audit_by_kind": dg.MetadataValue.json(dict(sorted(audit.items()))),
        "redactor_by_kind": dg.MetadataValue.json(dict(sorted(redactor.items()))),
        "kinds_without_independent_detector": dg.MetadataValue.json(list(NOT_COVERED))})


@dg.asset_check(asset=sft_dataset, description="No prompt appears in both the train and the eval split.")
def check_sft_no_split_leakage(sft_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(sft_dataset)


@dg.asset_check(asset=kto_dataset, description="No prompt appears in both the train and the eval split.")
def check_kto_no_split_leakage(kto_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(kto_dataset)


@dg.asset_check(asset=sft_dataset, blocking=True,
                description="No identifier left that the field policy removes (audit detector and redactor).")
def check_sft_no_identifiers(sft_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(sft_dataset)


@dg.asset_check(asset=kto_dataset, blocking=True,
                description="No identifier left that the field policy removes (audit detector and redactor).")
def check_kto_no_identifiers(kto_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(kto_dataset)
