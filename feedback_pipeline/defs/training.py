"""base_chat_model and chat_adapter: the model we start from and its LoRA fine-tune, tracked in MLflow."""


import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.defs.resources import MlflowResource, WorkspaceResource
from feedback_pipeline.training.base_model import prepare_base_chat_model
from feedback_pipeline.training.chat_sft import ChatSFTConfig, main as train_chat_sft


@dg.asset(group_name="training", kinds={"pytorch"},
          description="The base chat model as a local HF folder (bundled SmolLM2-135M converted once, or CHAT_BASE_MODEL).")
def base_chat_model(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dict:
    path = prepare_base_chat_model(workspace.path("models") / "smollm2-135m-instruct", workspace.chat_base_model)
    context.add_output_metadata({"model_dir": dg.MetadataValue.path(str(path)),
                                 "source": workspace.chat_base_model or "bundled SmolLM2-135M-Instruct (GGUF)"})
    return {"path": str(path)}


class ChatTrainingConfig(dg.Config):
    max_steps: int = Field(12, description="Optimizer steps (small by default so the demo runs on a CPU).")
    batch_size: int = Field(4, description="Examples per step.")
    learning_rate: float = Field(2e-4, description="AdamW learning rate for the LoRA weights.")
    lora_r: int = Field(16, description="LoRA rank.")
    lora_alpha: int = Field(16, description="LoRA scaling numerator.")
    max_length: int = Field(256, description="Tokens per example (prompt is cut from the left).")
    seed: int = Field(42, description="Random seed.")
    eval_during_training: bool = Field(
        False, description="Also report the weighted NLL of the SFT eval split (chat_model_evaluation scores "
                           "held-out feedback either way; this costs a full pass over the eval split).")
    early_stopping_patience: int | None = Field(
        None, description="Evaluate every eval_steps and stop after this many evaluations without improvement, "
                          "keeping the best checkpoint (None: train all max_steps).")
    eval_steps: int = Field(10, description="Steps between evaluations (with early stopping).")
    save_steps: int = Field(10, description="Steps between resumable checkpoints.")


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"},
          description="LoRA adapter fine-tuned on sft_dataset with per-example weights; one MLflow run.")
def chat_adapter(context: dg.AssetExecutionContext, config: ChatTrainingConfig, sft_dataset: dict,
                 base_chat_model: dict, workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> dict:
    mlflow_tracking.activate()
    # Same data + config = same folder, so a re-run after a killed run resumes from its last checkpoint.
    config_hash = hashlib.sha256(json.dumps(config.model_dump(), sort_keys=True).encode()).hexdigest()[:8]
    tag = f"{sft_dataset['fingerprint'][:12]}-{config_hash}"
    early = config.early_stopping_patience is not None
    cfg = ChatSFTConfig(
        base_model_path=base_chat_model["path"], train_file=sft_dataset["train_file"],
        eval_file=sft_dataset["eval_file"] if config.eval_during_training or early else None,
        output_dir=str(workspace.path("models", "chat_adapters", tag)),
        max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        max_length=config.max_length, seed=config.seed, early_stopping_patience=config.early_stopping_patience,
        eval_steps=config.eval_steps, save_steps=config.save_steps, resume=True)
    with mlflow.start_run(run_name=f"chat-sft-{tag}") as run:
        mlflow.set_tags({"stage": "chat_sft", "dagster_run_id": context.run.run_id})
        mlflow.log_params({**{k: v for k, v in asdict(cfg).items() if k != "lora_target_modules"},
                           "dataset_fingerprint": sft_dataset["fingerprint"],
                           "train_rows": sft_dataset["counts"]["train"], "eval_rows": sft_dataset["counts"]["eval"]})
        result = train_chat_sft(cfg, log=context.log.info)
        summary = {"final_train_loss": result.final_train_loss, "train_runtime_s": result.train_runtime_s}
        if result.eval_loss is not None:
            summary["eval_loss"] = result.eval_loss
        mlflow.log_metrics(summary)
        mlflow.log_artifacts(result.adapter_dir, artifact_path="adapter")
    context.add_output_metadata({**summary, "steps": result.steps, "mlflow_run_id": run.info.run_id,
                                 "stopped_early": result.stopped_early, "resumed_from": result.resumed_from or "none",
                                 "trainable_params": result.trainable_params,
                                 "adapter_dir": dg.MetadataValue.path(result.adapter_dir)})
    return {"adapter_dir": result.adapter_dir, "run_id": run.info.run_id, "base_model_path": cfg.base_model_path,
            "dataset_fingerprint": sft_dataset["fingerprint"], **summary}


@dg.asset(group_name="training", kinds={"pytorch"},
          description="The chat adapter merged into its base model: a plain HF folder for serving without peft "
                      "(vLLM, TGI, transformers). GGUF is not produced: no converter works offline here.")
def merged_chat_model(context: dg.AssetExecutionContext, chat_adapter: dict, workspace: WorkspaceResource,
                      mlflow_tracking: MlflowResource) -> dict:
    from feedback_pipeline.training.chat_preference import merge_and_export

    out = merge_and_export(chat_adapter["base_model_path"], chat_adapter["adapter_dir"],
                           workspace.path("exports", "chat") / Path(chat_adapter["adapter_dir"]).name)
    mlflow_tracking.activate()
    mlflow.MlflowClient().set_tag(chat_adapter["run_id"], "merged_model_dir", str(out))
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    context.add_output_metadata({"merged_dir": dg.MetadataValue.path(str(out)), "size_mb": round(size_mb, 1),
                                 "mlflow_run_id": chat_adapter["run_id"]})
    return {"path": str(out), "adapter_dir": chat_adapter["adapter_dir"], "run_id": chat_adapter["run_id"]}
