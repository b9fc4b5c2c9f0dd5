"""dpo_dataset and chat_preference_adapter: preference training (KTO on thumbs, DPO on ranked pairs).

Not part of retraining_job (it keeps the weekly path within minutes on a CPU): ``preference_training_job``
materializes these with their upstream.
"""

from dataclasses import asdict

import dagster as dg
import mlflow
import pandas as pd
from pydantic import Field

from feedback_pipeline.datasets.preference import build_dpo_dataset
from feedback_pipeline.defs.datasets import describe_dataset, identifiers_check, leakage_check
from feedback_pipeline.defs.evaluation import (ChatEvaluationConfig, ChatGateConfig, decide_chat,
                                               evaluate_chat_candidate, evaluation_complete_check)
from feedback_pipeline.defs.release import decision_check
from feedback_pipeline.defs.resources import FeedbackStoreResource, JudgeResource, MlflowResource, WorkspaceResource
from feedback_pipeline.tracking.registry import CHALLENGER, register_chat_adapter, registration_tags


@dg.asset(group_name="preference", kinds={"json"},
          description="chosen/rejected pairs to the same prompt (oasst1 sibling ranks, liked vs disliked), split by prompt.")
def dpo_dataset(context: dg.AssetExecutionContext, cleaned_feedback: pd.DataFrame, workspace: WorkspaceResource) -> dict:
    return describe_dataset(context, build_dpo_dataset(cleaned_feedback, workspace.path("datasets")))


@dg.asset_check(asset=dpo_dataset, description="No prompt appears in both the train and the eval split.")
def check_dpo_no_split_leakage(dpo_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(dpo_dataset)


@dg.asset_check(asset=dpo_dataset, description="No detectable identifier (email, phone, card ...) in any text.")
def check_dpo_no_identifiers(dpo_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(dpo_dataset)


class PreferenceTrainingConfig(dg.Config):
    method: str = Field("kto", description="'kto' trains on kto_dataset (thumbs), 'dpo' on dpo_dataset (pairs).")
    max_steps: int = Field(20, description="Optimizer steps.")
    batch_size: int = Field(4, description="Examples (KTO) or pairs (DPO) per step.")
    learning_rate: float = Field(5e-5, description="Peak AdamW learning rate.")
    beta: float = Field(0.1, description="KTO/DPO beta: how far the policy may move from the base.")
    max_length: int = Field(256, description="Tokens per prompt+response.")
    early_stopping_patience: int | None = Field(
        3, description="Evaluations without eval-loss improvement before stopping (None: no evaluation during "
                       "training, all max_steps).")
    eval_steps: int = Field(10, description="Evaluate the eval split every N steps.")


@dg.asset(group_name="preference", kinds={"pytorch", "mlflow"},
          description="LoRA adapter trained with KTO or DPO; resumable, early-stopped, one MLflow run, "
                      "registered as a feedback-chat challenger.")
def chat_preference_adapter(context: dg.AssetExecutionContext, config: PreferenceTrainingConfig, kto_dataset: dict,
                            dpo_dataset: dict, base_chat_model: dict, workspace: WorkspaceResource,
                            mlflow_tracking: MlflowResource) -> dict:
    from feedback_pipeline.training.chat_preference import PreferenceConfig, main

    if config.method not in ("kto", "dpo"):
        raise ValueError(f"method must be 'kto' or 'dpo', got {config.method!r}")
    data = kto_dataset if config.method == "kto" else dpo_dataset
    # Same data + method = same folder, so a killed run's checkpoints are found and resumed.
    output_dir = workspace.path("models", "preference_adapters", f"{config.method}-{data['fingerprint'][:12]}")
    cfg = PreferenceConfig(
        method=config.method, base_model_path=base_chat_model["path"], train_file=data["train_file"],
        eval_file=data["eval_file"] if config.early_stopping_patience is not None else None,
        output_dir=str(output_dir), max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate, beta=config.beta,
        max_length=config.max_length, eval_steps=config.eval_steps,
        early_stopping_patience=config.early_stopping_patience, resume=True)
    mlflow_tracking.activate()
    with mlflow.start_run(run_name=f"chat-{config.method}-{data['fingerprint'][:12]}") as run:
        mlflow.set_tags({"stage": f"chat_{config.method}", "dagster_run_id": context.run.run_id})
        mlflow.log_params({**{k: v for k, v in asdict(cfg).items() if k != "lora_target_modules"},
                           "dataset_fingerprint": data["fingerprint"], "train_rows": data["counts"]["train"]})
        result = main(cfg, log=context.log.info)
        metrics = {"final_train_loss": result.final_train_loss, "tokens_per_s": result.tokens_per_s}
        if result.eval_loss is not None:
            metrics["eval_loss"] = result.eval_loss
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(result.adapter_dir, artifact_path="adapter")
    version = register_chat_adapter(
        run.info.run_id, result.adapter_dir, cfg.base_model_path, mlflow_tracking.chat_model_name, alias=CHALLENGER,
        tags=registration_tags("chat_preference", data, [result.adapter_dir], adapter_dir=result.adapter_dir,
                               base_model_path=cfg.base_model_path, method=config.method))
    context.add_output_metadata({**metrics, "method": config.method, "steps": result.steps,
                                 "stopped_early": result.stopped_early, "resumed_from": result.resumed_from or "none",
                                 "mlflow_run_id": run.info.run_id, "registered_version": version})
    return {"adapter_dir": result.adapter_dir, "run_id": run.info.run_id, "version": version,
            "method": config.method, "base_model_path": cfg.base_model_path, **metrics}


@dg.asset(group_name="preference", kinds={"pytorch", "mlflow"},
          description="The preference candidate vs the feedback-chat champion, on the same held-out data, judge and "
                      "gold set as the SFT candidate.")
def chat_preference_evaluation(context: dg.AssetExecutionContext, config: ChatEvaluationConfig,
                               chat_preference_adapter: dict, kto_dataset: dict, dpo_dataset: dict,
                               cleaned_feedback: pd.DataFrame, reward_promotion_decision: dict, judge: JudgeResource,
                               workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> dict:
    return evaluate_chat_candidate(context, config, chat_preference_adapter, kto_dataset, dpo_dataset,
                                   cleaned_feedback, reward_promotion_decision["judge"], judge, workspace,
                                   mlflow_tracking)


@dg.asset_check(asset=chat_preference_evaluation, blocking=True,
                description="The comparison is complete: every metric finite, every prompt judged.")
def check_chat_preference_evaluation_complete(chat_preference_evaluation: dict) -> dg.AssetCheckResult:
    return evaluation_complete_check(chat_preference_evaluation)


@dg.asset(group_name="preference", kinds={"mlflow"},
          description="promote / keep / needs_review for the preference candidate (moves feedback-chat@champion on "
                      "promote).")
def chat_preference_promotion_decision(context: dg.AssetExecutionContext, config: ChatGateConfig,
                                       chat_preference_evaluation: dict, chat_preference_adapter: dict,
                                       feedback_store: FeedbackStoreResource,
                                       mlflow_tracking: MlflowResource) -> dict:
    return decide_chat(context, config, chat_preference_evaluation, chat_preference_adapter["version"],
                       "chat_preference", feedback_store.store(), mlflow_tracking)


@dg.asset_check(asset=chat_preference_promotion_decision, blocking=True,
                description="The registry's champion alias agrees with the decision.")
def check_chat_preference_decision_applied(chat_preference_promotion_decision: dict) -> dg.AssetCheckResult:
    return decision_check(chat_preference_promotion_decision)
