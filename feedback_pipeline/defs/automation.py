"""Jobs, the new-feedback sensor and the weekly schedule: retraining without anyone."""


from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from feedback_pipeline.defs.resources import FeedbackStoreResource
from feedback_pipeline.deploy_config import deployment_executor
from feedback_pipeline.store.repository import FeedbackStore

WEEKLY_DATASETS = ("weekly_sft_dataset", "weekly_kto_dataset")

# The assets of each job, by stage, named positively: a new asset joins a job only when it is added here, and
# test_automation checks that every job's list holds its assets' whole upstream (so nothing is read stale).
FEEDBACK = ("raw_feedback", "cleaned_feedback")
REPORTS = ("feedback_quality_report", "error_patterns", "improvement_suggestions")
RELEASE_DECISIONS = ("chat_promotion_decision", "chat_preference_promotion_decision", "embedder_promotion_decision",
                     "reward_promotion_decision")
REWARD = ("reward_model", "reward_model_evaluation", "reward_promotion_decision")  # the judge of the chat evaluations
CHAT_PREFERENCE = ("kto_dataset", "dpo_dataset", "base_chat_model", "chat_preference_adapter",
                   "chat_preference_evaluation", "chat_preference_promotion_decision")
EMBEDDER = ("embedding_pairs", "embedding_model", "embedding_model_evaluation", "embedder_promotion_decision")
RETRAINING_ASSETS = {
    "ingestion": ("raw_feedback",),
    "cleaning": ("cleaned_feedback",),
    "analysis": REPORTS,
    "datasets": ("sft_dataset", "kto_dataset", "dpo_dataset", "embedding_pairs"),
    "training": ("base_chat_model", "chat_adapter", "merged_chat_model", "chat_preference_adapter", "embedding_model",
                 "reward_model"),
    "evaluation": ("chat_model_evaluation", "chat_preference_evaluation", "embedding_model_evaluation",
                   "reward_model_evaluation"),
    "release": ("chat_model_version", *RELEASE_DECISIONS),
}
JOB_ASSETS = {
    "retraining_job": tuple(name for stage in RETRAINING_ASSETS.values() for name in stage),
    "preference_training_job": (*FEEDBACK, *CHAT_PREFERENCE, *REWARD),
    "embedding_training_job": (*FEEDBACK, *EMBEDDER),
    "error_analysis_job": (*FEEDBACK, *REPORTS),
}


def _selection(job: str) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*JOB_ASSETS[job])


# One machine: jobs run in-process; FEEDBACK_EXECUTOR=k8s (the cluster) puts each step in its own pod.
_EXECUTOR = deployment_executor(dg.in_process_executor)

# In-process: on a small machine a subprocess per step costs more (imports of torch, transformers ...)
# than most steps themselves, and training steps must not compete for the same cores anyway.
retraining_job = dg.define_asset_job(
    "retraining_job", selection=_selection("retraining_job"), executor_def=_EXECUTOR,
    description="Feedback -> cleaned -> reports -> datasets -> chat SFT, chat preference (KTO), embedder and reward "
                "model -> each compared with its champion -> promotion decisions.")

preference_training_job = dg.define_asset_job(
    "preference_training_job", selection=_selection("preference_training_job"), executor_def=_EXECUTOR,
    description="KTO or DPO LoRA adapter from the newest feedback, compared with the champion, decided.")

embedding_training_job = dg.define_asset_job(
    "embedding_training_job", selection=_selection("embedding_training_job"), executor_def=_EXECUTOR,
    description="Fine-tune the retrieval embedder on liked answers' documents, compared with the champion, decided.")

daily_cleaning_job = dg.define_asset_job(
    "daily_cleaning_job", selection=dg.AssetSelection.assets("daily_cleaned_feedback"),
    description="Clean one UTC day of feedback into the cleaned_feedback table (idempotent).")

# Each day at 00:30 UTC, clean the day that just ended.
daily_cleaning_schedule = dg.build_schedule_from_partitioned_job(daily_cleaning_job, minute_of_hour=30,
                                                                  name="daily_cleaning_schedule")

weekly_dataset_job = dg.define_asset_job(
    "weekly_dataset_job", selection=dg.AssetSelection.assets(*WEEKLY_DATASETS),
    description="The week's SFT and KTO sets from the cleaned_feedback table (one partition per week).")

# Mondays at 01:30 UTC, after the daily cleaning of Sunday, build the week that just ended.
weekly_dataset_schedule = dg.build_schedule_from_partitioned_job(weekly_dataset_job, hour_of_day=1, minute_of_hour=30,
                                                                  name="weekly_dataset_schedule")

error_analysis_job = dg.define_asset_job(
    "error_analysis_job", selection=_selection("error_analysis_job"), executor_def=_EXECUTOR,
    description="Refresh the analysts' reports from the newest feedback (no training).")

weekly_error_analysis_schedule = dg.ScheduleDefinition(
    name="weekly_error_analysis_schedule", job=error_analysis_job, cron_schedule="0 3 * * 1",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Error analysis every Monday at 03:00 UTC.")

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="weekly_retraining_schedule", job=retraining_job, cron_schedule="0 2 * * 0",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain every Sunday at 02:00 UTC.")



def last_dataset_watermark(instance: dg.DagsterInstance) -> datetime | None:
    """Newest ingestion time of the feedback the last sft_dataset was built from."""
    event = instance.get_latest_materialization_event(dg.AssetKey("sft_dataset"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("data_watermark")
    return parse_watermark(getattr(value, "value", value))


def parse_watermark(value: str | datetime | None) -> datetime | None:
    """The ``data_watermark`` metadata of an sft_dataset materialization: an ISO timestamp, or None (null metadata)
    when the data held no rated row. The text "none" that earlier materializations recorded also reads as None."""
    if value is None or isinstance(value, datetime):
        return value
    return None if value in ("", "none") else datetime.fromisoformat(value)


@dataclass(frozen=True)
class RetrainingCheck:
    """New rated feedback since ``since`` (the later of the dataset watermark and the sensor cursor)."""

    since: datetime | None
    new_rated: int
    newest: datetime | None
    min_new_rated: int

    @property
    def due(self) -> bool:
        return self.new_rated >= self.min_new_rated and self.newest is not None

    @property
    def reason(self) -> str:
        return (f"{self.new_rated} new rated rows since {self.since or 'the beginning'}; "
                f"{'due' if self.due else 'waiting'} for {self.min_new_rated}")


def check_new_rated(store: FeedbackStore, watermark: datetime | None, cursor: str | None,
                    min_new_rated: int) -> RetrainingCheck:
    """The sensor's decision without the sensor: the capture service's /v1/jobs/check calls it too."""
    # The cursor remembers the newest row we already asked a run for, so a pending run is not re-requested.
    requested = datetime.fromisoformat(cursor) if cursor else None
    since = max(filter(None, [watermark, requested]), default=None)
    new_rated, newest = store.rated_since(since)
    return RetrainingCheck(since, new_rated, newest, min_new_rated)


def build_retraining_sensor(min_new_rated: int) -> dg.SensorDefinition:
    @dg.sensor(name="new_feedback_sensor", job=retraining_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Requests retraining_job once {min_new_rated} new rated feedback rows have arrived "
                           "since the data the last dataset was built from.")
    def new_feedback_sensor(context: dg.SensorEvaluationContext, feedback_store: FeedbackStoreResource):
        check = check_new_rated(feedback_store.store(), last_dataset_watermark(context.instance), context.cursor,
                                min_new_rated)
        if not check.due:
            return dg.SkipReason(check.reason)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"retrain-until-{check.newest.isoformat()}",
                                        tags={"new_rated_rows": str(check.new_rated)})],
            cursor=check.newest.isoformat())

    return new_feedback_sensor
