"""base_chat_model and chat_adapter: the model we start from and its LoRA fine-tune, tracked in MLflow."""


import hashlib
import json
from pathlib import Path

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.defs.handoffs import BaseChatModel, ChatAdapter, MergedChatModel
from feedback_pipeline.defs.resources import MlflowResource, WorkspaceResource
from feedback_pipeline.defs.trainer_config import BATCH_SIZE, trainer_config
from feedback_pipeline.deploy_config import TRAINING_POOL
from feedback_pipeline.tracking.runs import config_params, training_run
from feedback_pipeline.training.base_model import prepare_base_chat_model
from feedback_pipeline.training.chat_sft import ChatSFTConfig, main as train_chat_sft


@dg.asset(group_name="training", kinds={"pytorch"},
          description="The base chat model as a local HF folder (bundled SmolLM2-135M converted once, or CHAT_BASE_MODEL).")
def base_chat_model(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> BaseChatModel:
    path = prepare_base_chat_model(workspace.path("models") / "smollm2-135m-instruct", workspace.chat_base_model)
    context.add_output_metadata({"model_dir": dg.MetadataValue.path(str(path)),
                                 "source": workspace.chat_base_model or "bundled SmolLM2-135M-Instruct (GGUF)"})
    return BaseChatModel(str(path))


class ChatTrainingConfig(trainer_config(ChatSFTConfig, rename=BATCH_SIZE)):
    """ChatSFTConfig's fields (defaults and help from there) plus when to use the eval split."""

    eval_during_training: bool = Field(
        False, description="Also report the weighted NLL of the SFT eval split (chat_model_evaluation scores "
                           "held-out feedback either way; this costs a full pass over the eval split). Early "
                           "stopping evaluates on it regardless.")


@dg.asset(pool=TRAINING_POOL, group_name="training", kinds={"pytorch", "mlflow"},
          description="LoRA adapter fine-tuned on sft_dataset with per-example weights; one MLflow run.")
def chat_adapter(context: dg.AssetExecutionContext, config: ChatTrainingConfig, sft_dataset: dict,
                 base_chat_model: BaseChatModel, workspace: WorkspaceResource,
                 mlflow_tracking: MlflowResource) -> ChatAdapter:
    mlflow_tracking.activate()
    # Same data + config = same folder, so a re-run after a killed run resumes from its last checkpoint.
    config_hash = hashlib.sha256(json.dumps(config.model_dump(), sort_keys=True).encode()).hexdigest()[:8]
    tag = f"{sft_dataset['fingerprint'][:12]}-{config_hash}"
    early = config.early_stopping_patience is not None
    cfg = config.to_trainer(
        base_model_path=base_chat_model.path, train_file=sft_dataset["train_file"],
        eval_file=sft_dataset["eval_file"] if config.eval_during_training or early else None,
        output_dir=str(workspace.path("models", "chat_adapters", tag)), resume=True)
    params = {**config_params(cfg), "dataset_fingerprint": sft_dataset["fingerprint"],
              "train_rows": sft_dataset["counts"]["train"], "eval_rows": sft_dataset["counts"]["eval"]}
    with training_run(f"chat-sft-{tag}", "chat_sft", context.run.run_id, params) as run:
        result = train_chat_sft(cfg, log=context.log.info)
        summary = run.log_metrics({"final_train_loss": result.final_train_loss,
                                   "train_runtime_s": result.train_runtime_s, "eval_loss": result.eval_loss})
        run.log_artifacts(result.adapter_dir, "adapter")
    context.add_output_metadata({**summary, "steps": result.steps, "mlflow_run_id": run.run_id,
                                 "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
                                 "trainable_params": result.trainable_params,
                                 "adapter_dir": dg.MetadataValue.path(result.adapter_dir)})
    return ChatAdapter(result.adapter_dir, run.run_id, cfg.base_model_path, sft_dataset["fingerprint"], "sft",
                       result.final_train_loss, result.eval_loss)


@dg.asset(group_name="training", kinds={"pytorch"},
          description="The chat adapter merged into its base model: a plain HF folder for serving without peft "
                      "(vLLM, TGI, transformers). GGUF is not produced: no converter works offline here.")
def merged_chat_model(context: dg.AssetExecutionContext, chat_adapter: ChatAdapter, workspace: WorkspaceResource,
                      mlflow_tracking: MlflowResource) -> MergedChatModel:
    from feedback_pipeline.training.chat_preference import merge_and_export

    out = merge_and_export(chat_adapter.base_model_path, chat_adapter.adapter_dir,
                           workspace.path("exports", "chat") / Path(chat_adapter.adapter_dir).name)
    mlflow_tracking.activate()
    mlflow.MlflowClient().set_tag(chat_adapter.run_id, "merged_model_dir", str(out))
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    context.add_output_metadata({"merged_dir": dg.MetadataValue.path(str(out)), "size_mb": round(size_mb, 1),
                                 "mlflow_run_id": chat_adapter.run_id})
    return MergedChatModel(str(out), chat_adapter.adapter_dir, chat_adapter.run_id)
