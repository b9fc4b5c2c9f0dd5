"""Everything Dagster loads: the assets, checks, jobs and schedules of ``feedback_pipeline/defs/`` (found by
Dagster's defs-folder loader), plus what depends on settings: the resources and the sensors."""

from __future__ import annotations

import dagster as dg

import feedback_pipeline.defs
from feedback_pipeline.defs.ab_testing import build_ab_test_sensor
from feedback_pipeline.defs.automation import build_retraining_sensor
from feedback_pipeline.defs.resources import FeedbackStoreResource, JudgeResource, MlflowResource, WorkspaceResource
from feedback_pipeline.deploy_config import deployment_executor
from feedback_pipeline.settings import Settings, load_settings


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
    # load_defs is what dg.load_from_defs_folder runs once it has found the defs module in the project's dg config;
    # naming the module here needs no pyproject.toml at run time (an installed wheel, a container image).
    return dg.Definitions.merge(
        dg.components.load_defs(feedback_pipeline.defs),
        dg.Definitions(
            sensors=[build_retraining_sensor(settings.retrain_min_new_feedback), build_ab_test_sensor()],
            resources=build_resources(settings),
            executor=deployment_executor(choice=settings.executor),
        ),
    )


defs = build_definitions(load_settings())
