"""The whole asset graph in-process on real stores: PostgreSQL feedback, MLflow sqlite, real models.

retraining_job trains every family (chat SFT, chat KTO, embedder, reward model), compares each with its champion and
ends in one promotion decision per family, recorded in model_deployments and on the registered versions.
"""

import itertools

import dagster as dg
import mlflow
from mlflow.tracking import MlflowClient

from feedback_pipeline.definitions import build_definitions
from feedback_pipeline.defs.automation import RELEASE_DECISIONS
from feedback_pipeline.ingestion.importers import import_records, read_oasst1
from feedback_pipeline.release.deployments import deployments
from feedback_pipeline.release.models import promote
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.summary import pipeline_summary
from feedback_pipeline_tests.conftest import OASST1

_EVAL = {"n_generated": 4, "max_new_tokens": 8, "max_liked": 4, "max_pairs": 4, "max_gold": 2, "max_length": 96}
# Small settings so the full graph trains and evaluates in a few minutes on 2 cores.
RUN_CONFIG = {"ops": {
    "chat_adapter": {"config": {"max_steps": 2, "batch_size": 2, "max_length": 96}},
    "chat_preference_adapter": {"config": {"method": "kto", "max_steps": 2, "batch_size": 2, "max_length": 96,
                                           "eval_steps": 2}},
    "reward_model": {"config": {"max_steps": 2, "batch_size": 4, "max_length": 96}},
    "embedding_model": {"config": {"batch_size": 8, "epochs": 0.1, "max_seq_length": 64}},
    "chat_model_evaluation": {"config": _EVAL},
    "chat_preference_evaluation": {"config": _EVAL},
    "reward_model_evaluation": {"config": {"max_pairs": 40}},
    "embedding_model_evaluation": {"config": {"max_queries": 40}},
    "error_patterns": {"config": {"min_cluster_size": 3}},
}}


def test_full_graph_trains_every_family_and_decides_each(postgres_url, tmp_path, base_model_dir):
    store = FeedbackStore(postgres_url)
    store.migrate()
    # A slice of oasst1: the first 400 replies, enough for every stage.
    import_records(store, itertools.islice(read_oasst1(OASST1), 400), "oasst1")
    settings = load_settings({"FEEDBACK_DATA_DIR": str(tmp_path / "data"), "FEEDBACK_DB_URL": postgres_url,
                              "CHAT_BASE_MODEL": str(base_model_dir)})
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("retraining_job").execute_in_process(run_config=RUN_CONFIG, instance=instance)
    assert result.success

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks and all(checks.values()), checks
    assert {"check_chat_evaluation_complete", "check_chat_decision_applied", "check_reward_decision_applied",
            "check_embedder_decision_applied", "check_chat_preference_decision_applied"} <= set(checks)

    # Each candidate was compared with version 0 (nothing was champion yet) and decided.
    decisions = {name: result.output_for_node(name) for name in RELEASE_DECISIONS}
    for name, decision in decisions.items():
        assert decision.decision in ("promote", "keep", "needs_review"), name
        assert decision.compared_with is None
    evaluation = result.output_for_node("chat_model_evaluation")
    comparison = evaluation.comparison
    assert evaluation.champion == "base (version 0)"
    assert evaluation.judge.startswith(settings.reward_model_name)
    assert comparison.win["n"] == 4 and 0 <= comparison.win["lc_win_rate"] <= 1
    assert {"liked_logprob", "preference_accuracy", "preference_margin", "reward", "gold_sentence_chrf"} <= set(comparison.intervals)

    # The registry: one version per family, tagged for lineage and cleanup; the champion alias agrees with the
    # decisions; model_deployments holds one row per decision.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    chat = decisions["chat_promotion_decision"]
    version = client.get_model_version(settings.chat_model_name, chat.version)
    assert version.tags["family"] == "chat_sft" and version.tags["gate_decision"] == chat.decision
    assert version.tags["dataset_fingerprint"] == result.output_for_node("sft_dataset")["fingerprint"]
    embedder = decisions["embedder_promotion_decision"]
    assert client.get_model_version(settings.embedding_model_name, embedder.version).tags["family"] == "embedder"
    rows = deployments(store)
    assert len(rows) == len(RELEASE_DECISIONS)
    assert {(r.model_name, r.version) for r in rows} == {(d.name, d.version) for d in decisions.values()}
    for d in decisions.values():
        champion = d.version if d.decision == "promote" else None
        assert d.champion == champion
    run = client.get_run(chat.mlflow_run_id)
    assert "gate_lc_win_rate" in run.data.metrics and run.data.tags["gate_decision"] == chat.decision
    assert "gate/decision.json" in {a.path for a in client.list_artifacts(run.info.run_id, "gate")}

    model = mlflow.pyfunc.load_model(f"models:/{settings.chat_model_name}/{chat.version}")
    reply = model.predict(["Say hello."])
    assert isinstance(reply[0], str) and reply[0].strip()

    # A champion now serves: the next candidate is compared with it (its adapter, not the base), on the same data.
    promote(client, store, settings.chat_model_name, chat.version, reason="test", actor="test", source="manual")
    selected = ("chat_preference_evaluation", "chat_preference_promotion_decision")
    again = defs.resolve_job_def("retraining_job").execute_in_process(
        run_config={"ops": {"chat_preference_evaluation": RUN_CONFIG["ops"]["chat_preference_evaluation"]}},
        instance=instance, asset_selection=[dg.AssetKey(k) for k in selected])
    assert again.success
    assert again.output_for_node("chat_preference_evaluation").champion == f"{settings.chat_model_name}/{chat.version}"
    second = again.output_for_node("chat_preference_promotion_decision")
    assert second.compared_with == chat.version and second.decision == "keep"  # 4 prompts decide nothing
    assert str(client.get_model_version_by_alias(settings.chat_model_name, "champion").version) == chat.version

    summary = pipeline_summary(settings, instance)
    assert "chat_promotion_decision" in summary and f"decision={chat.decision}" in summary
    assert "rows=400" in summary
