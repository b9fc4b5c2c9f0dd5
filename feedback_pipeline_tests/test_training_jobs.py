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
    small_eval = {"n_generated": 4, "max_new_tokens": 8, "max_liked": 4, "max_pairs": 4, "max_gold": 2,
                  "max_length": 96}
    run_config = {"ops": {
        "chat_preference_adapter": {"config": {"method": "dpo", "max_steps": 2, "batch_size": 2, "max_length": 96,
                                               "early_stopping_patience": None}},
        "reward_model": {"config": {"max_steps": 2, "batch_size": 4, "max_length": 96}},
        "reward_model_evaluation": {"config": {"max_pairs": 40}},
        "chat_preference_evaluation": {"config": small_eval}}}
    result = defs.resolve_job_def("preference_training_job").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    dpo = result.output_for_node("dpo_dataset")
    assert dpo["counts"]["train"] >= 20 and dpo["counts"]["eval"] > 0
    out = result.output_for_node("chat_preference_adapter")
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.chat_model_name, "challenger")
    assert str(version.version) == out.version and version.tags["method"] == "dpo"
    assert version.tags["family"] == "chat_preference"
    assert client.get_run(out.run_id).data.params["dataset_fingerprint"] == dpo["fingerprint"]
    # 4 generated answers decide nothing: the gate keeps the champion (version 0) and says why
    decision = result.output_for_node("chat_preference_promotion_decision")
    assert decision.decision == "keep" and "fewer than the 20" in decision.reasons[0]


def test_embedder_is_trained_tracked_and_registered(tmp_path, base_model_dir):
    settings, defs = _setup(tmp_path, base_model_dir,
                            itertools.islice(read_feedbackqa(SHARED_DATA / "feedbackqa-dev"), 160))
    run_config = {"ops": {"embedding_model": {"config": {"batch_size": 8, "epochs": 0.1, "max_seq_length": 64}},
                          "embedding_model_evaluation": {"config": {"max_queries": 40, "max_corpus": 200}}}}
    result = defs.resolve_job_def("embedding_training_job").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    pairs = result.asset_materializations_for_node("embedding_pairs")[0].metadata
    assert pairs["train_pairs"].value >= 20
    out = result.output_for_node("embedding_model")
    client = MlflowClient(settings.mlflow_tracking_uri)
    decision = result.output_for_node("embedder_promotion_decision")
    assert decision.version == out["version"] and decision.decision in ("promote", "keep")
    evaluation = result.output_for_node("embedding_model_evaluation")
    assert {"ndcg@10", "mrr@10", "recall@10"} == set(evaluation["intervals"])
    alias = "champion" if decision.decision == "promote" else "challenger"
    assert str(client.get_model_version_by_alias(settings.embedding_model_name, alias).version) == out["version"]
