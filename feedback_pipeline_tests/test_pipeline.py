"""The whole asset graph in-process on real stores: PostgreSQL feedback, MLflow sqlite, real models."""

import itertools

import dagster as dg
import mlflow
from mlflow.tracking import MlflowClient

from feedback_pipeline.definitions import build_definitions
from feedback_pipeline.ingestion.importers import import_records, read_oasst1
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.summary import pipeline_summary
from feedback_pipeline_tests.conftest import OASST1

# Small settings so the full graph trains and evaluates in about a minute on 2 cores.
RUN_CONFIG = {"ops": {
    "chat_adapter": {"config": {"max_steps": 2, "batch_size": 2, "max_length": 96}},
    "chat_model_evaluation": {"config": {"max_per_label": 4, "max_length": 96, "max_nll_increase": 0.5}},
    "error_patterns": {"config": {"min_cluster_size": 3}},
}}


def test_full_graph_materializes_and_registers_a_challenger(postgres_url, tmp_path, base_model_dir):
    store = FeedbackStore(postgres_url)
    store.migrate()
    # A slice of oasst1: the first 400 replies, enough for every stage.
    import_records(store, itertools.islice(read_oasst1(OASST1), 400), "oasst1")
    settings = load_settings({"FEEDBACK_DATA_DIR": str(tmp_path / "data"), "FEEDBACK_DB_URL": postgres_url,
                              "CHAT_BASE_MODEL": str(base_model_dir)})
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("retraining_job")
    result = job.execute_in_process(run_config=RUN_CONFIG, instance=instance)
    assert result.success

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks and all(checks.values()), checks
    assert {"check_candidate_not_worse", "check_sft_no_split_leakage", "check_kto_no_identifiers"} <= set(checks)

    raw = result.asset_materializations_for_node("raw_feedback")[0].metadata
    assert raw["rows"].value == 400
    evaluation = result.output_for_node("chat_model_evaluation")["metrics"]
    assert evaluation["n_liked"] == 4 and evaluation["base_nll"] > 0

    # MLflow holds the run (params, per-step loss, adapter, eval metrics) and the version with the alias.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.chat_model_name, "challenger")
    run = client.get_run(version.run_id)
    sft = result.output_for_node("sft_dataset")
    assert run.data.params["dataset_fingerprint"] == sft["fingerprint"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert "eval_candidate_nll" in run.data.metrics and "eval_preference_margin" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"adapter"}
    model = mlflow.pyfunc.load_model(f"models:/{settings.chat_model_name}@challenger")
    reply = model.predict(["Say hello."])
    assert isinstance(reply[0], str) and reply[0].strip()

    # The merged export is a plain transformers folder that generates without peft, recorded on the MLflow run.
    merged = result.output_for_node("merged_chat_model")
    assert client.get_run(version.run_id).data.tags["merged_model_dir"] == merged["path"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged["path"])
    lm = AutoModelForCausalLM.from_pretrained(merged["path"])
    assert not hasattr(lm, "peft_config")
    out = lm.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1

    summary = pipeline_summary(settings, instance)
    assert "alias=challenger" in summary and "rows=400" in summary
