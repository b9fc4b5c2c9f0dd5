"""The retraining sensor and schedule, evaluated the way the daemon does; and the definitions load."""

from datetime import datetime, timezone

import dagster as dg

from feedback_pipeline.definitions import build_definitions, defs
from feedback_pipeline.defs.automation import (JOB_ASSETS, RELEASE_DECISIONS, build_retraining_sensor,
                                               last_dataset_watermark, parse_watermark,
                                               weekly_error_analysis_schedule, weekly_retraining_schedule)
from feedback_pipeline.defs.resources import FeedbackStoreResource
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.settings import load_settings
from feedback_pipeline_tests.conftest import feedback


def _add_rated(store, n, prefix):
    store.write([normalise_record(feedback(query=f"{prefix}{i}", rating="up" if i % 2 else "down"), "t")
                 for i in range(n)])


def _evaluate(sensor, store, instance, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"feedback_store": FeedbackStoreResource(db_url=store.url)}) as ctx:
        return sensor(ctx), ctx


def test_sensor_waits_then_requests_once(store):
    sensor = build_retraining_sensor(min_new_rated=50)
    instance = dg.DagsterInstance.ephemeral()
    _add_rated(store, 30, "a")
    result, _ = _evaluate(sensor, store, instance)
    assert isinstance(result, dg.SkipReason) and "30 new rated rows" in result.skip_message
    _add_rated(store, 30, "b")
    result, _ = _evaluate(sensor, store, instance)
    assert len(result.run_requests) == 1 and result.run_requests[0].run_key.startswith("retrain-until-")
    # Re-evaluated with the cursor it returned: the same rows never trigger a second run.
    again, _ = _evaluate(sensor, store, instance, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)


def test_sensor_counts_from_the_last_dataset_watermark(store):
    sensor = build_retraining_sensor(min_new_rated=50)
    instance = dg.DagsterInstance.ephemeral()
    _add_rated(store, 60, "a")
    _, newest = store.rated_since(None)
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key="sft_dataset", metadata={"data_watermark": newest.isoformat()}))
    result, _ = _evaluate(sensor, store, instance)
    assert isinstance(result, dg.SkipReason)  # those 60 rows are already in the last dataset
    _add_rated(store, 55, "b")
    result, _ = _evaluate(sensor, store, instance)
    assert len(result.run_requests) == 1 and result.run_requests[0].tags["new_rated_rows"] == "55"


def test_a_dataset_without_rated_rows_records_a_null_watermark():
    """None, not a sentinel string: a null metadata value reads back as no watermark (as does the "none" text that
    earlier materializations recorded)."""
    instance = dg.DagsterInstance.ephemeral()
    assert last_dataset_watermark(instance) is None
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="sft_dataset",
                                                                metadata={"data_watermark": None}))
    assert last_dataset_watermark(instance) is None
    assert parse_watermark("none") is None and parse_watermark(None) is None
    stamp = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    assert parse_watermark(stamp.isoformat()) == stamp == parse_watermark(stamp)


def test_jobs_name_their_assets_and_hold_their_whole_upstream():
    """Selections are named positively (no `upstream() - x`): a new asset joins a job only when it is listed, and a
    new input of a listed asset must be listed too, or its job would read a stale materialization."""
    graph = defs.resolve_asset_graph()
    for job, names in JOB_ASSETS.items():
        selected = {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}
        assert selected == set(names), job
        upstream = dg.AssetSelection.assets(*names).upstream().resolve(graph)
        assert {k.to_user_string() for k in upstream} == set(names), job


def test_weekly_schedule_requests_retraining_on_sunday():
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc))
    result = weekly_retraining_schedule.evaluate_tick(context)
    assert len(result.run_requests) == 1
    assert weekly_retraining_schedule.job_name == "retraining_job"
    assert weekly_retraining_schedule.cron_schedule == "0 2 * * 0"


def test_weekly_error_analysis_runs_monday_0300_without_training():
    assert weekly_error_analysis_schedule.cron_schedule == "0 3 * * 1"
    selected = {k.to_user_string() for k in defs.resolve_job_def("error_analysis_job").asset_layer.selected_asset_keys}
    assert {"raw_feedback", "cleaned_feedback", "feedback_quality_report", "error_patterns"} <= selected
    assert "chat_adapter" not in selected


def test_every_definition_loads():
    """Catches a Definitions built from None, a broken import, or an asset graph with a missing input."""
    for candidate in (defs, build_definitions(load_settings({"FEEDBACK_DATA_DIR": "/tmp/elsewhere"}))):
        repo = candidate.get_repository_def()
        keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
        assert {"raw_feedback", "cleaned_feedback", "feedback_quality_report", "error_patterns", "sft_dataset",
                "kto_dataset", "base_chat_model", "chat_adapter", "chat_model_evaluation", "chat_model_version",
                "reward_model", "model_cleanup_report", *RELEASE_DECISIONS} <= keys
        assert candidate.resolve_job_def("retraining_job") is not None
        assert candidate.resolve_job_def("rollback_job") is not None
        assert candidate.resolve_job_def("ab_test_job") is not None
        assert {s.name for s in repo.sensor_defs} == {"new_feedback_sensor", "ab_test_sensor"}
        assert {s.name for s in repo.schedule_defs} == {"weekly_retraining_schedule", "daily_cleaning_schedule",
                                                            "weekly_error_analysis_schedule", "weekly_dataset_schedule",
                                                            "model_cleanup_schedule"}
        checks = {key.name for key in repo.asset_graph.asset_check_keys}
        assert {"check_chat_decision_applied", "check_chat_evaluation_complete", "check_reward_decision_applied",
                "check_embedder_decision_applied", "check_chat_preference_decision_applied"} <= checks


def test_retraining_ends_in_every_familys_promotion_decision():
    """The sensor and the weekly schedule launch retraining_job, so they promote exactly when a decision says so."""
    selected = {k.to_user_string() for k in defs.resolve_job_def("retraining_job").asset_layer.selected_asset_keys}
    assert set(RELEASE_DECISIONS) <= selected
    assert {"chat_preference_adapter", "embedding_model", "reward_model"} <= selected
    assert "daily_cleaned_feedback" not in selected and "model_cleanup_report" not in selected


def test_cleanup_runs_monthly():
    schedule = defs.resolve_schedule_def("model_cleanup_schedule")
    assert schedule.cron_schedule == "0 4 1 * *" and schedule.job_name == "model_cleanup_job"
