"""embedding_pairs and embedding_model: the RAG retriever fine-tuned on what users liked.

Not part of retraining_job: ``embedding_training_job`` materializes these with their upstream.
"""

import json

import dagster as dg
import mlflow
import pandas as pd
from pydantic import Field

from feedback_pipeline.datasets.embedding_pairs import export_pairs, pairs_from_feedback
from feedback_pipeline.defs.resources import MlflowResource, WorkspaceResource


@dg.asset(group_name="embedding", kinds={"json", "csv"},
          description="(query, liked document[, disliked document]) pairs, split by conversation; CSV, JSONL and HF datasets.")
def embedding_pairs(context: dg.AssetExecutionContext, cleaned_feedback: pd.DataFrame,
                    workspace: WorkspaceResource) -> dict:
    pairs = pairs_from_feedback(cleaned_feedback)
    paths = export_pairs(pairs, workspace.path("datasets", "embedding_pairs"), min_train_pairs=20)
    manifest = json.loads(paths["manifest"].read_text())
    counts = pairs["split"].value_counts().to_dict()
    context.add_output_metadata({"train_pairs": int(counts.get("train", 0)), "eval_pairs": int(counts.get("eval", 0)),
                                 "with_negative": int(pairs["negative"].notna().sum()),
                                 "fingerprint": manifest["fingerprint"],
                                 "directory": dg.MetadataValue.path(str(paths["manifest"].parent))})
    return {"fingerprint": manifest["fingerprint"], **{k: str(v) for k, v in paths.items()}}


class EmbedderTrainingConfig(dg.Config):
    loss: str = Field("mnrl", description="mnrl (MultipleNegativesRankingLoss) | cosine | triplet.")
    epochs: float = Field(1.0, description="Passes over the training pairs.")
    batch_size: int = Field(32, description="Pairs per step (the in-batch negatives of mnrl).")
    learning_rate: float = Field(2e-5, description="Peak AdamW learning rate.")
    max_seq_length: int = Field(256, description="Tokens per text.")


@dg.asset(group_name="embedding", kinds={"pytorch", "mlflow"},
          description="all-MiniLM-L6-v2 (or EMBEDDING_MODEL) fine-tuned on embedding_pairs; registered as a "
                      "feedback-embedder challenger.")
def embedding_model(context: dg.AssetExecutionContext, config: EmbedderTrainingConfig, embedding_pairs: dict,
                    workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> dict:
    from feedback_pipeline.training.embedder import EmbedderConfig, main, register_embedder

    cfg = EmbedderConfig(
        base_model_path=workspace.embedding_model, train_file=embedding_pairs["train"],
        output_dir=str(workspace.path("models", "embedders", embedding_pairs["fingerprint"][:12])),
        loss=config.loss, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, max_seq_length=config.max_seq_length)
    mlflow_tracking.activate()
    with mlflow.start_run(run_name=f"embedder-{embedding_pairs['fingerprint'][:12]}") as run:
        mlflow.set_tags({"stage": "embedder", "dagster_run_id": context.run.run_id})
        mlflow.log_params({"loss": cfg.loss, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                           "learning_rate": cfg.learning_rate, "max_seq_length": cfg.max_seq_length,
                           "dataset_fingerprint": embedding_pairs["fingerprint"]})
        result = main(cfg, log=context.log.info)
        mlflow.log_metrics({"final_train_loss": result.final_train_loss, "pairs_per_s": result.examples_per_s})
    version = register_embedder(run.info.run_id, result.model_dir, mlflow_tracking.embedding_model_name,
                                tags={"dataset_fingerprint": embedding_pairs["fingerprint"]})
    context.add_output_metadata({"steps": result.steps, "final_train_loss": result.final_train_loss,
                                 "pairs_per_s": result.examples_per_s, "mlflow_run_id": run.info.run_id,
                                 "registered_version": version})
    return {"model_dir": result.model_dir, "run_id": run.info.run_id, "version": version}
