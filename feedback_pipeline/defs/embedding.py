"""embedding_pairs and embedding_model: the RAG retriever fine-tuned on what users liked.

Not part of retraining_job: ``embedding_training_job`` materializes these with their upstream.
"""

import json

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.datasets.embedding_pairs import SPLIT_COLUMNS, TEXT_COLUMNS, export_pairs, pairs_from_chunks
from feedback_pipeline.defs.datasets import window_chunks
from feedback_pipeline.defs.handoffs import ReleaseDecision
from feedback_pipeline.defs.release import GateConfig, act_on_decision, decision_check
from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource, WorkspaceResource
from feedback_pipeline.defs.trainer_config import trainer_config
from feedback_pipeline.deploy_config import TRAINING_POOL
from feedback_pipeline.evaluation.gate import Evidence, decide
from feedback_pipeline.release.champions import embedder_champion
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.tracking.registry import registration_tags
from feedback_pipeline.training.embedder import EmbedderConfig


@dg.asset(group_name="datasets", kinds={"json", "csv"},
          description="(query, liked document[, disliked document]) pairs, split by conversation; CSV, JSONL and HF datasets.")
def embedding_pairs(context: dg.AssetExecutionContext, cleaned_feedback: TableRef,
                    feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    start, end = cleaned_feedback.window_start, cleaned_feedback.window_end
    pairs = pairs_from_chunks(window_chunks(feedback_store, start, end, SPLIT_COLUMNS),
                              window_chunks(feedback_store, start, end, TEXT_COLUMNS))
    paths = export_pairs(pairs, workspace.path("datasets", "embedding_pairs"), min_train_pairs=20,
                         fingerprinted=True)
    manifest = json.loads(paths["manifest"].read_text())
    counts = pairs["split"].value_counts().to_dict()
    context.add_output_metadata({"train_pairs": int(counts.get("train", 0)), "eval_pairs": int(counts.get("eval", 0)),
                                 "with_negative": int(pairs["negative"].notna().sum()),
                                 "fingerprint": manifest["fingerprint"],
                                 "directory": dg.MetadataValue.path(str(paths["manifest"].parent))})
    return {"fingerprint": manifest["fingerprint"], **{k: str(v) for k, v in paths.items()}}


# The trainer's dataclass is the one source of fields and defaults (the recipe chosen by bench/scifact_ablation.py);
# the asset supplies the data and folders.
_EMBEDDER_PATHS = ("base_model_path", "train_file", "output_dir", "beir_dir", "beir_split", "holdout_fraction",
                   "holdout_seed", "test_beir_dir", "test_split", "eval_queries", "eval_corpus", "eval_qrels")
EmbedderTrainingConfig = trainer_config(EmbedderConfig, exclude=_EMBEDDER_PATHS, name="EmbedderTrainingConfig")


@dg.asset(pool=TRAINING_POOL, group_name="training", kinds={"pytorch", "mlflow"},
          description="all-MiniLM-L6-v2 (or EMBEDDING_MODEL) fine-tuned on embedding_pairs; registered as a "
                      "feedback-embedder challenger.")
def embedding_model(context: dg.AssetExecutionContext, config: EmbedderTrainingConfig, embedding_pairs: dict,
                    workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> dict:
    from feedback_pipeline.training.embedder import main, register_embedder

    cfg = config.to_trainer(
        base_model_path=workspace.embedding_model, train_file=embedding_pairs["train"],
        output_dir=str(workspace.path("models", "embedders", embedding_pairs["fingerprint"][:12])))
    mlflow_tracking.activate()
    with mlflow.start_run(run_name=f"embedder-{embedding_pairs['fingerprint'][:12]}") as run:
        mlflow.set_tags({"stage": "embedder", "dagster_run_id": context.run.run_id})
        mlflow.log_params({**config.trainer_values(), "dataset_fingerprint": embedding_pairs["fingerprint"]})
        result = main(cfg, log=context.log.info)
        mlflow.log_metrics({"final_train_loss": result.final_train_loss, "pairs_per_s": result.examples_per_s,
                            "mined_pairs": result.mined_pairs})
    version = register_embedder(run.info.run_id, result.model_dir, mlflow_tracking.embedding_model_name,
                                tags=registration_tags("embedder", embedding_pairs, [result.model_dir],
                                                       model_dir=result.model_dir))
    context.add_output_metadata({"steps": result.steps, "final_train_loss": result.final_train_loss,
                                 "pairs_per_s": result.examples_per_s, "mlflow_run_id": run.info.run_id,
                                 "registered_version": version})
    return {"model_dir": result.model_dir, "run_id": run.info.run_id, "version": version,
            "name": mlflow_tracking.embedding_model_name}


class EmbedderEvaluationConfig(dg.Config):
    max_queries: int | None = Field(300, description="Held-out queries scored (None: all of them).")
    max_corpus: int | None = Field(None, description="Documents searched: every relevant one plus distractors up to "
                                                     "this many (None: every document of both splits).")
    k: int = Field(10, description="Cut-off of nDCG, MRR and Recall.")
    seed: int = Field(0, description="Bootstrap seed.")


@dg.asset(group_name="evaluation", kinds={"pytorch"},
          description="nDCG@10, MRR@10 and Recall@10 of the new embedder and of the feedback-embedder champion (the "
                      "base model as version 0) on held-out query -> document pairs, paired per query.")
def embedding_model_evaluation(context: dg.AssetExecutionContext, config: EmbedderEvaluationConfig,
                               embedding_model: dict, embedding_pairs: dict, workspace: WorkspaceResource,
                               mlflow_tracking: MlflowResource) -> dict:
    from sentence_transformers import SentenceTransformer

    from feedback_pipeline.datasets.build import read_jsonl
    from feedback_pipeline.evaluation.embedder_compare import compare_embedders, retrieval_task

    if "eval" not in embedding_pairs:
        raise ValueError("embedding_pairs has no eval split: no held-out queries to compare the embedders on")
    task = retrieval_task(read_jsonl(embedding_pairs["train"]), read_jsonl(embedding_pairs["eval"]),
                          max_queries=config.max_queries, max_corpus=config.max_corpus)
    mlflow_tracking.activate()
    champ = embedder_champion(mlflow.MlflowClient(), embedding_model["name"], workspace.embedding_model_path())
    intervals = compare_embedders(SentenceTransformer(champ.path, device="cpu"),
                                  SentenceTransformer(embedding_model["model_dir"], device="cpu"), task, k=config.k,
                                  seed=config.seed)
    flat = {f"{m}_{side}": getattr(iv, side) for m, iv in intervals.items()
            for side in ("champion", "challenger", "diff", "ci_low", "ci_high")}
    with mlflow.start_run(run_id=embedding_model["run_id"]):
        mlflow.log_metrics({f"gate_{k.replace('@', '_at_')}": v for k, v in flat.items()})
    context.add_output_metadata({**flat, "champion": champ.label, "queries": len(task.qrels),
                                 "corpus": len(task.corpus)})
    return {"intervals": intervals, "champion": champ.label, "champion_version": champ.version,
            "run_id": embedding_model["run_id"], "version": embedding_model["version"], "name": embedding_model["name"],
            "k": config.k}


@dg.asset_check(asset=embedding_model_evaluation, blocking=True,
                description="Held-out queries were scored and every metric is finite (too few to decide is the "
                            "gate's call: it keeps the champion).")
def check_embedder_evaluation_complete(embedding_model_evaluation: dict) -> dg.AssetCheckResult:
    import math

    intervals = embedding_model_evaluation["intervals"]
    finite = all(math.isfinite(v) for iv in intervals.values() for v in (iv.champion, iv.challenger, iv.ci_low))
    n = min(iv.n for iv in intervals.values())
    return dg.AssetCheckResult(passed=finite and n >= 1, metadata={"queries": n, "finite": finite})


class EmbedderGateConfig(GateConfig):
    primary_metric: str = Field("ndcg@10", description="ndcg@K | mrr@K | recall@K (K = the evaluation's k).")


@dg.asset(group_name="release", kinds={"mlflow"},
          description="promote / keep / needs_review for the new embedder (moves feedback-embedder@champion).")
def embedder_promotion_decision(context: dg.AssetExecutionContext, config: EmbedderGateConfig,
                                embedding_model_evaluation: dict, feedback_store: FeedbackStoreResource,
                                mlflow_tracking: MlflowResource) -> ReleaseDecision:
    ev = embedding_model_evaluation
    if config.primary_metric not in ev["intervals"]:
        raise ValueError(f"primary_metric {config.primary_metric!r} not measured; measured: {sorted(ev['intervals'])}")
    secondary = [Evidence(m, "secondary", iv.champion, iv.challenger, iv.diff, iv.ci_low, iv.ci_high, iv.n, None)
                 for m, iv in ev["intervals"].items() if m != config.primary_metric]
    decision = decide(config.policy(), ev["intervals"][config.primary_metric], secondary=secondary)
    mlflow_tracking.activate()
    return act_on_decision(context, feedback_store.store(), ev["name"], ev["version"], "embedder", decision,
                           ev["run_id"], ev["champion_version"], extra={"compared_with_label": ev["champion"]})


@dg.asset_check(asset=embedder_promotion_decision, blocking=True,
                description="The registry's champion alias agrees with the decision.")
def check_embedder_decision_applied(embedder_promotion_decision: ReleaseDecision) -> dg.AssetCheckResult:
    return decision_check(embedder_promotion_decision)
