"""reward_model, its evaluation against the champion reward model, and its promotion decision.

The reward model is trained on the same feedback (dpo_dataset: sibling ranks and liked vs disliked answers to one
prompt) and judges the chat models' generated answers in chat_model_evaluation. Its own bar: held-out pairwise
accuracy above the champion's, where the champion of a first reward model is the "longer answer wins" rule.
"""

import dataclasses
from typing import Literal

import dagster as dg
import mlflow
import numpy as np
from pydantic import Field

from feedback_pipeline.datasets.build import read_jsonl
from feedback_pipeline.defs.handoffs import BaseChatModel, Judge, ReleaseDecision, RewardEvaluation, RewardModel
from feedback_pipeline.defs.release import GateConfig, act_on_decision, decision_check
from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource, WorkspaceResource
from feedback_pipeline.defs.trainer_config import BATCH_SIZE, trainer_config
from feedback_pipeline.deploy_config import TRAINING_POOL
from feedback_pipeline.evaluation.gate import Evidence, decide, paired_interval, prompt_groups, win_outcomes
from feedback_pipeline.release.champions import reward_champion
from feedback_pipeline.tracking.registry import CHALLENGER, registration_tags
from feedback_pipeline.tracking.runs import config_params, training_run
from feedback_pipeline.training.reward import RewardConfig

# RewardConfig's fields, defaults and help (backbone: minilm cross-encoder | smollm2 LoRA | a local folder).
RewardTrainingConfig = trainer_config(RewardConfig, rename=BATCH_SIZE, name="RewardTrainingConfig")


@dg.asset(pool=TRAINING_POOL, group_name="training", kinds={"pytorch", "mlflow"},
          description="Reward model trained on dpo_dataset with trl's RewardTrainer; registered as a "
                      "feedback-reward challenger.")
def reward_model(context: dg.AssetExecutionContext, config: RewardTrainingConfig, dpo_dataset: dict,
                 base_chat_model: BaseChatModel, workspace: WorkspaceResource,
                 mlflow_tracking: MlflowResource) -> RewardModel:
    from feedback_pipeline.training.reward import main, register_reward_model

    tag = f"{config.backbone}-{dpo_dataset['fingerprint'][:12]}"
    cfg = config.to_trainer(train_file=dpo_dataset["train_file"], eval_file=dpo_dataset["eval_file"],
                            output_dir=str(workspace.path("models", "reward", tag)),
                            base_model_path=base_chat_model.path)
    mlflow_tracking.activate()
    with training_run(f"reward-{tag}", "reward", context.run.run_id,
                      {**config_params(cfg), "dataset_fingerprint": dpo_dataset["fingerprint"]}) as run:
        result = main(cfg, log=context.log.info)
        metrics = run.log_metrics({"final_train_loss": result.final_train_loss,
                                   "train_runtime_s": result.train_runtime_s})
    version = register_reward_model(
        run.run_id, result.model_dir, mlflow_tracking.reward_model_name, alias=CHALLENGER,
        tags=registration_tags("reward", dpo_dataset, [result.model_dir], model_dir=result.model_dir))
    context.add_output_metadata({**metrics, "steps": result.steps, "backbone": result.backbone,
                                 "mlflow_run_id": run.run_id, "registered_version": version,
                                 "model_dir": dg.MetadataValue.path(result.model_dir)})
    return RewardModel(result.model_dir, run.run_id, mlflow_tracking.reward_model_name, version,
                       dpo_dataset["fingerprint"])


def _pair_texts(pairs: list[dict]) -> tuple[list, list[str], list[str]]:
    answer = lambda v: v[-1]["content"] if isinstance(v, list) else str(v)  # noqa: E731
    return [p["prompt"] for p in pairs], [answer(p["chosen"]) for p in pairs], [answer(p["rejected"]) for p in pairs]


class RewardEvaluationConfig(dg.Config):
    max_pairs: int = Field(400, description="Held-out pairs scored (the eval split of dpo_dataset).")
    seed: int = Field(0, description="Bootstrap seed.")


@dg.asset(group_name="evaluation", kinds={"pytorch"},
          description="Held-out pairwise accuracy of the new reward model and of the champion (or the longer-answer "
                      "rule as version 0), paired per pair, with the rule's accuracy beside them.")
def reward_model_evaluation(context: dg.AssetExecutionContext, config: RewardEvaluationConfig,
                            reward_model: RewardModel, dpo_dataset: dict,
                            mlflow_tracking: MlflowResource) -> RewardEvaluation:
    from feedback_pipeline.evaluation.reward_eval import RewardScorer, pairwise_accuracy

    mlflow_tracking.activate()
    pairs = read_jsonl(dpo_dataset["eval_file"])[: config.max_pairs]
    prompts, chosen, rejected = _pair_texts(pairs)
    lengths = (np.array([len(c) for c in chosen], float), np.array([len(r) for r in rejected], float))

    def scores(model_dir: str) -> tuple[np.ndarray, np.ndarray]:
        scorer = RewardScorer(model_dir)
        return scorer.score(prompts, chosen), scorer.score(prompts, rejected)

    champ = reward_champion(mlflow.MlflowClient(), reward_model.name)
    # version 0 is the rule "the longer answer wins"
    champion_chosen, champion_rejected = scores(champ.path) if champ.path else lengths
    challenger_chosen, challenger_rejected = scores(reward_model.model_dir)
    interval = paired_interval(win_outcomes(champion_rejected, champion_chosen),
                               win_outcomes(challenger_rejected, challenger_chosen), seed=config.seed,
                               groups=prompt_groups(pairs))  # pairs of one prompt share answers: resampled together
    detail = pairwise_accuracy(challenger_chosen, challenger_rejected, *lengths, seed=config.seed)
    with mlflow.start_run(run_id=reward_model.run_id):
        mlflow.log_metrics({"eval_accuracy": detail["accuracy"], "eval_length_rule_accuracy":
                            detail["length_rule_accuracy"], "eval_champion_accuracy": interval.champion})
    shown = {k: v for k, v in detail.items() if isinstance(v, (int, float)) and v is not None}
    context.add_output_metadata({**shown, "champion": champ.label, "champion_accuracy": interval.champion,
                                 "challenger_accuracy": interval.challenger, "difference": interval.diff,
                                 "difference_ci_low": interval.ci_low, "difference_ci_high": interval.ci_high})
    return RewardEvaluation(interval, detail, champ.label, champ.version, champ.path, reward_model)


@dg.asset_check(asset=reward_model_evaluation, blocking=True,
                description="Held-out pairs were scored and every number is finite (too few to decide is the gate's "
                            "call: it keeps the champion).")
def check_reward_evaluation_complete(reward_model_evaluation: RewardEvaluation) -> dg.AssetCheckResult:
    iv = reward_model_evaluation.interval
    finite = all(np.isfinite([iv.champion, iv.challenger, iv.ci_low, iv.ci_high]))
    return dg.AssetCheckResult(passed=bool(finite and iv.n >= 1), metadata={"pairs": iv.n, "finite": bool(finite)})


class RewardGateConfig(GateConfig):
    primary_metric: Literal["pairwise_accuracy"] = Field("pairwise_accuracy", description="Held-out pairwise accuracy (ties half).")


@dg.asset(group_name="release", kinds={"mlflow"},
          description="promote / keep / needs_review for the new reward model; moves feedback-reward@champion on "
                      "promote. Hands the judge to use (the champion, else this candidate) to the chat evaluations.")
def reward_promotion_decision(context: dg.AssetExecutionContext, config: RewardGateConfig,
                              reward_model_evaluation: RewardEvaluation, feedback_store: FeedbackStoreResource,
                              mlflow_tracking: MlflowResource) -> ReleaseDecision:
    ev, candidate = reward_model_evaluation, reward_model_evaluation.candidate
    iv, detail = ev.interval, ev.detail
    rule = Evidence("length_rule_accuracy", "secondary", detail["length_rule_accuracy"], detail["accuracy"],
                    detail["accuracy"] - detail["length_rule_accuracy"],
                    detail["difference_vs_length_rule_ci_low"] or float("nan"),
                    detail["difference_vs_length_rule_ci_high"] or float("nan"), detail["n_pairs"], None,
                    "the longer-answer rule on the same pairs (champion column)")
    decision = decide(config.policy(), iv, secondary=[rule])
    mlflow_tracking.activate()
    result = act_on_decision(context, feedback_store.store(), candidate.name, candidate.version, "reward", decision,
                             candidate.run_id, ev.champion_version, extra={"compared_with_label": ev.champion})
    # The judge of generated answers: the champion reward model; a candidate that was not promoted still judges
    # while no reward model is champion (the metric names it, so nobody mistakes it for a vetted judge).
    if result.champion == candidate.version:
        judge = Judge(f"{candidate.name}/{candidate.version}", candidate.model_dir, True)
    elif result.champion is not None:
        judge = Judge(f"{candidate.name}/{result.champion}", ev.champion_dir, True)
    else:
        judge = Judge(f"{candidate.name}/{candidate.version} (not champion)", candidate.model_dir, False)
    context.add_output_metadata({"judge": judge.ref})
    return dataclasses.replace(result, judge=judge)


@dg.asset_check(asset=reward_promotion_decision, blocking=True,
                description="The registry's champion alias agrees with the decision.")
def check_reward_decision_applied(reward_promotion_decision: ReleaseDecision) -> dg.AssetCheckResult:
    return decision_check(reward_promotion_decision)
