"""Everything Dagster loads: assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.defs import (ab_testing, analysis, cleaning, datasets, embedding, evaluation, ingestion, lifecycle,
                                    preference, reward, training)
from feedback_pipeline.defs.automation import (build_retraining_sensor, daily_cleaning_job, daily_cleaning_schedule,
                                               embedding_training_job, error_analysis_job, preference_training_job,
                                               retraining_job, weekly_dataset_job, weekly_dataset_schedule,
                                               weekly_error_analysis_schedule, weekly_retraining_schedule)
from feedback_pipeline.defs.resources import FeedbackStoreResource, JudgeResource, MlflowResource, WorkspaceResource
from feedback_pipeline.settings import Settings, load_settings

_MODULES = [ingestion, cleaning, analysis, datasets, training, evaluation, preference, embedding, reward, lifecycle,
            ab_testing]


def build_resources(settings: Settings) -> dict:
    return {
        "feedback_store": FeedbackStoreResource(db_url=settings.feedback_db_url),
        "mlflow_tracking": MlflowResource(tracking_uri=settings.mlflow_tracking_uri,
                                          artifact_root=settings.mlflow_artifact_root,
                                          chat_model_name=settings.chat_model_name,
                                          embedding_model_name=settings.embedding_model_name,
                                          reward_model_name=settings.reward_model_name),
        "judge": JudgeResource(base_url=settings.judge_base_url, model=settings.judge_model,
                               api_key=settings.judge_api_key),
        "workspace": WorkspaceResource(data_dir=str(settings.data_dir), chat_base_model=settings.chat_base_model,
                                       embedding_model=settings.embedding_model),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(_MODULES),
        jobs=[retraining_job, daily_cleaning_job, error_analysis_job, preference_training_job,
              embedding_training_job, weekly_dataset_job, lifecycle.model_cleanup_job, lifecycle.rollback_job,
              ab_testing.ab_test_job],
        schedules=[weekly_retraining_schedule, daily_cleaning_schedule, weekly_error_analysis_schedule,
                   weekly_dataset_schedule, lifecycle.model_cleanup_schedule],
        sensors=[build_retraining_sensor(settings.retrain_min_new_feedback), ab_testing.build_ab_test_sensor()],
        resources=build_resources(settings),
    )


defs = build_definitions(load_settings())
