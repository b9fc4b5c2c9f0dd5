"""dpo_dataset and chat_preference_adapter: preference training (KTO on thumbs, DPO on ranked pairs), its
evaluation against the champion and its promotion decision.

retraining_job runs them with every other family; ``preference_training_job`` materializes them with their upstream
alone (for instance with ``method: dpo``).
"""

import dagster as dg

from feedback_pipeline.datasets.preference import TEXT_COLUMNS, build_dpo_dataset_from_chunks
from feedback_pipeline.defs.datasets import (describe_dataset, identifiers_check, leakage_check, window_chunks,
                                             window_rows)
from feedback_pipeline.defs.evaluation import (ChatEvaluationConfig, ChatGateConfig, decide_chat,
                                               evaluate_chat_candidate, evaluation_complete_check)
from feedback_pipeline.defs.handoffs import BaseChatModel, ChatAdapter, ChatEvaluation, ReleaseDecision
from feedback_pipeline.defs.release import decision_check
from feedback_pipeline.defs.resources import FeedbackStoreResource, JudgeResource, MlflowResource, WorkspaceResource
from feedback_pipeline.defs.trainer_config import BATCH_SIZE, trainer_config
from feedback_pipeline.deploy_config import TRAINING_POOL
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.tracking.registry import CHALLENGER, register_chat_adapter, registration_tags
from feedback_pipeline.tracking.runs import config_params, training_run
from feedback_pipeline.training.chat_preference import PreferenceConfig


@dg.asset(group_name="datasets", kinds={"json"},
          description="chosen/rejected pairs to the same prompt (oasst1 sibling ranks, liked vs disliked), split by prompt.")
def dpo_dataset(context: dg.AssetExecutionContext, cleaned_feedback: TableRef, feedback_store: FeedbackStoreResource,
                workspace: WorkspaceResource) -> dict:
    start, end = cleaned_feedback.window_start, cleaned_feedback.window_end
    built = build_dpo_dataset_from_chunks(window_chunks(feedback_store, start, end),
                                          window_rows(feedback_store, start, end, TEXT_COLUMNS),
                                          workspace.path("datasets"))
    return describe_dataset(context, built)


@dg.asset_check(asset=dpo_dataset, description="No prompt appears in both the train and the eval split.")
def check_dpo_no_split_leakage(dpo_dataset: dict) -> dg.AssetCheckResult:
    return leakage_check(dpo_dataset)


@dg.asset_check(asset=dpo_dataset, description="No detectable identifier (email, phone, card ...) in any text.")
def check_dpo_no_identifiers(dpo_dataset: dict) -> dg.AssetCheckResult:
    return identifiers_check(dpo_dataset)


# PreferenceConfig's fields, defaults and help (method: kto trains on kto_dataset, dpo on dpo_dataset). With
# early_stopping_patience set the dataset's eval split is evaluated every eval_steps; without, all max_steps run.
PreferenceTrainingConfig = trainer_config(PreferenceConfig, rename=BATCH_SIZE, name="PreferenceTrainingConfig")


@dg.asset(pool=TRAINING_POOL, group_name="training", kinds={"pytorch", "mlflow"},
          description="LoRA adapter trained with KTO or DPO; resumable, early-stopped, one MLflow run, "
                      "registered as a feedback-chat challenger.")
def chat_preference_adapter(context: dg.AssetExecutionContext, config: PreferenceTrainingConfig, kto_dataset: dict,
                            dpo_dataset: dict, base_chat_model: BaseChatModel, workspace: WorkspaceResource,
                            mlflow_tracking: MlflowResource) -> ChatAdapter:
    from feedback_pipeline.training.chat_preference import main

    data = kto_dataset if config.method == "kto" else dpo_dataset
    # Same data + method = same folder, so a killed run's checkpoints are found and resumed.
    output_dir = workspace.path("models", "preference_adapters", f"{config.method}-{data['fingerprint'][:12]}")
    cfg = config.to_trainer(
        base_model_path=base_chat_model.path, train_file=data["train_file"],
        eval_file=data["eval_file"] if config.early_stopping_patience is not None else None,
        output_dir=str(output_dir), resume=True)
    mlflow_tracking.activate()
    params = {**config_params(cfg), "dataset_fingerprint": data["fingerprint"], "train_rows": data["counts"]["train"]}
    with training_run(f"chat-{cfg.method}-{data['fingerprint'][:12]}", f"chat_{cfg.method}", context.run.run_id,
                      params) as run:
        result = main(cfg, log=context.log.info)
        metrics = run.log_metrics({"final_train_loss": result.final_train_loss, "tokens_per_s": result.tokens_per_s,
                                   "eval_loss": result.eval_loss})
        run.log_artifacts(result.adapter_dir, "adapter")
    version = register_chat_adapter(
        run.run_id, result.adapter_dir, cfg.base_model_path, mlflow_tracking.chat_model_name, alias=CHALLENGER,
        tags=registration_tags("chat_preference", data, [result.adapter_dir], adapter_dir=result.adapter_dir,
                               base_model_path=cfg.base_model_path, method=cfg.method))
    context.add_output_metadata({**metrics, "method": config.method, "steps": result.steps,
                                 "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
                                 "mlflow_run_id": run.run_id, "registered_version": version})
    return ChatAdapter(result.adapter_dir, run.run_id, cfg.base_model_path, data["fingerprint"], cfg.method,
                       result.final_train_loss, result.eval_loss, version)


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"},
          description="The preference candidate vs the feedback-chat champion, on the same held-out data, judge and "
                      "gold set as the SFT candidate.")
def chat_preference_evaluation(context: dg.AssetExecutionContext, config: ChatEvaluationConfig,
                               chat_preference_adapter: ChatAdapter, kto_dataset: dict, dpo_dataset: dict,
                               cleaned_feedback: TableRef, reward_promotion_decision: ReleaseDecision,
                               judge: JudgeResource, feedback_store: FeedbackStoreResource,
                               workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> ChatEvaluation:
    return evaluate_chat_candidate(context, config, chat_preference_adapter, kto_dataset, dpo_dataset,
                                   cleaned_feedback, reward_promotion_decision.judge, judge, feedback_store,
                                   workspace, mlflow_tracking)


@dg.asset_check(asset=chat_preference_evaluation, blocking=True,
                description="The comparison is complete: every metric finite, every prompt judged.")
def check_chat_preference_evaluation_complete(chat_preference_evaluation: ChatEvaluation) -> dg.AssetCheckResult:
    return evaluation_complete_check(chat_preference_evaluation)


@dg.asset(group_name="release", kinds={"mlflow"},
          description="promote / keep / needs_review for the preference candidate (moves feedback-chat@champion on "
                      "promote).")
def chat_preference_promotion_decision(context: dg.AssetExecutionContext, config: ChatGateConfig,
                                       chat_preference_evaluation: ChatEvaluation,
                                       chat_preference_adapter: ChatAdapter, feedback_store: FeedbackStoreResource,
                                       mlflow_tracking: MlflowResource) -> ReleaseDecision:
    return decide_chat(context, config, chat_preference_evaluation, chat_preference_adapter.version,
                       "chat_preference", feedback_store.store(), mlflow_tracking)


@dg.asset_check(asset=chat_preference_promotion_decision, blocking=True,
                description="The registry's champion alias agrees with the decision.")
def check_chat_preference_decision_applied(
        chat_preference_promotion_decision: ReleaseDecision) -> dg.AssetCheckResult:
    return decision_check(chat_preference_promotion_decision)
