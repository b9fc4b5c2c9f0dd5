"""preference_training_job and embedding_training_job in-process on real stores and the real small models."""

import itertools

import dagster as dg
from mlflow.tracking import MlflowClient

from feedback_pipeline.definitions import build_definitions
from feedback_pipeline.ingestion.importers import import_records, read_feedbackqa, read_oasst1
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA


def _setup(tmp_path, base_model_dir, records):
    settings = load_settings({"FEEDBACK_DATA_DIR": str(tmp_path), "CHAT_BASE_MODEL": str(base_model_dir)})
    store = FeedbackStore(settings.feedback_db_url)
    store.migrate()
    import_records(store, records, "test")
    return settings, build_definitions(settings)


def test_dpo_adapter_is_trained_tracked_and_registered(tmp_path, base_model_dir):
    settings, defs = _setup(tmp_path, base_model_dir, itertools.islice(read_oasst1(OASST1), 500))
    run_config = {"ops": {"chat_preference_adapter": {"config": {
        "method": "dpo", "max_steps": 2, "batch_size": 2, "max_length": 96, "eval_steps": 2}}}}
    result = defs.resolve_job_def("preference_training_job").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    dpo = result.output_for_node("dpo_dataset")
    assert dpo["counts"]["train"] >= 20 and dpo["counts"]["eval"] > 0
    out = result.output_for_node("chat_preference_adapter")
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.chat_model_name, "challenger")
    assert str(version.version) == out["version"] and version.tags["method"] == "dpo"
    assert client.get_run(out["run_id"]).data.params["dataset_fingerprint"] == dpo["fingerprint"]


def test_embedder_is_trained_tracked_and_registered(tmp_path, base_model_dir):
    settings, defs = _setup(tmp_path, base_model_dir,
                            itertools.islice(read_feedbackqa(SHARED_DATA / "feedbackqa-dev"), 160))
    run_config = {"ops": {"embedding_model": {"config": {"batch_size": 8, "epochs": 0.1, "max_seq_length": 64}}}}
    result = defs.resolve_job_def("embedding_training_job").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    pairs = result.asset_materializations_for_node("embedding_pairs")[0].metadata
    assert pairs["train_pairs"].value >= 20
    out = result.output_for_node("embedding_model")
    client = MlflowClient(settings.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias(settings.embedding_model_name, "challenger").version) == out["version"]
