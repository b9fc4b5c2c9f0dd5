"""chat_model_evaluation, chat_model_version and chat_promotion_decision: the SFT candidate against the champion.

The evaluation body is shared with the preference candidate (``evaluate_chat_candidate``): same held-out data, same
judge, same gold set, so the two candidates are judged alike.
"""

import math
from dataclasses import fields
from pathlib import Path
from typing import Literal

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.datasets.build import read_jsonl
from feedback_pipeline.defs.handoffs import ChatAdapter, ChatEvaluation, Family, Judge, RegisteredVersion, ReleaseDecision
from feedback_pipeline.defs.release import GateConfig, act_on_decision, decision_check
from feedback_pipeline.defs.resources import FeedbackStoreResource, JudgeResource, MlflowResource, WorkspaceResource
from feedback_pipeline.evaluation.chat_compare import (ChatCompareOptions, ChatGuardrailTolerances,
                                                       chat_decision, compare_chat_with_champion)
from feedback_pipeline.evaluation.gold import seed_gold_set
from feedback_pipeline.release.champions import chat_champion
from feedback_pipeline.store.cleaned import cleaned_by_ids
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.tracking.registry import CHALLENGER, register_chat_adapter, registration_tags

_OPTIONS = {f.name: f.default for f in fields(ChatCompareOptions)}
_TOLERANCES = {f.name: f.default for f in fields(ChatGuardrailTolerances)}
SEGMENT_COLUMNS = ("model_name", "intent", "project", "subject")


class ChatEvaluationConfig(dg.Config):
    n_generated: int = Field(_OPTIONS["n_generated"], description="Held-out prompts both models answer and the "
                                                                  "reward model judges (scheduled runs can use more).")
    max_new_tokens: int = Field(_OPTIONS["max_new_tokens"], description="Tokens per generated answer.")
    batch_size: int = Field(_OPTIONS["batch_size"], description="Prompts generated together.")
    max_liked: int = Field(_OPTIONS["max_liked"], description="Held-out liked answers scored for NLL.")
    max_pairs: int = Field(_OPTIONS["max_pairs"], description="Held-out chosen/rejected pairs scored.")
    max_gold: int = Field(_OPTIONS["max_gold"], description="Gold-set prompts answered (BLEU, chrF, ROUGE-L).")
    max_length: int = Field(_OPTIONS["max_length"], description="Tokens per scored example / prompt.")
    gold_set_size: int = Field(50, description="Items seeded into the gold set the first time (edit the file later).")
    seed: int = Field(_OPTIONS["seed"], description="Sample of held-out prompts and bootstrap seed.")

    def options(self) -> ChatCompareOptions:
        return ChatCompareOptions(**{k: getattr(self, k) for k in _OPTIONS})


def segments_of(store, ref: TableRef, ids) -> dict[str, dict]:
    """id -> {segment column: value or None} for the rows of ``ref`` among ``ids`` (the held-out records): those
    columns of those rows only, a batch of ids per query."""
    found = {}
    for frame in cleaned_by_ids(store, ref.window_start, ref.window_end, ids, ["id", *SEGMENT_COLUMNS]):
        clean = frame.astype(object).where(frame.notna(), None)
        found.update({row.pop("id"): row for row in clean.to_dict(orient="records")})
    return found


def evaluate_chat_candidate(context: dg.AssetExecutionContext, config: ChatEvaluationConfig, candidate: ChatAdapter,
                            kto_dataset: dict, dpo_dataset: dict, cleaned_feedback: TableRef, reward_judge: Judge,
                            external_judge: JudgeResource, feedback_store: FeedbackStoreResource,
                            workspace: WorkspaceResource, mlflow_tracking: MlflowResource) -> ChatEvaluation:
    """Compare ``candidate`` with the feedback-chat champion; the judge is the external endpoint when one is
    configured, else the reward model ``reward_judge`` names."""
    from feedback_pipeline.evaluation.reward_eval import RewardScorer

    external = external_judge.external()
    judge = Judge(external.name, None, True) if external else reward_judge
    scorer = external or RewardScorer(reward_judge.model_dir)

    mlflow_tracking.activate()
    name = mlflow_tracking.chat_model_name
    champ = chat_champion(mlflow.MlflowClient(), name)
    if champ.base_model_path and Path(champ.base_model_path).resolve() != Path(candidate.base_model_path).resolve():
        raise ValueError(f"the champion {champ.label} was trained on base {champ.base_model_path}, the candidate on "
                         f"{candidate.base_model_path}: they cannot share one loaded base; evaluate by hand")
    held_out = read_jsonl(Path(kto_dataset["eval_file"]))
    # Seeded once from held-out liked answers, then a file people curate: an existing file is never overwritten.
    gold = seed_gold_set(workspace.path("gold") / "chat_gold.jsonl", held_out, n=config.gold_set_size,
                         seed=config.seed)
    # Segments are looked up for the held-out records (the only ones compared), not for the whole table.
    segments = segments_of(feedback_store.store(), cleaned_feedback, {str(r.get("feedback_id")) for r in held_out})
    comparison = compare_chat_with_champion(
        candidate.base_model_path, champ.path, candidate.adapter_dir, held_out,
        read_jsonl(Path(dpo_dataset["eval_file"])), scorer, judge.ref, champ.label,
        gold=gold, options=config.options(), segment_of=lambda fid: segments.get(fid, {}),
        cache_dir=workspace.path("cache", "answers"), log=context.log.info)
    metrics = comparison.metrics()
    with mlflow.start_run(run_id=candidate.run_id):
        mlflow.log_metrics({f"gate_{k}": v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.set_tags({"gate_judge": judge.ref, "gate_champion": champ.label, "gold_set_version": gold.version})
        mlflow.log_dict({"examples": comparison.examples}, "gate/generated_examples.json")
    context.add_output_metadata({**{k: v for k, v in metrics.items() if math.isfinite(v)},
                                 "champion": champ.label, "judge": judge.ref, "judge_vetted": judge.vetted,
                                 "gold_set": f"{gold.path} ({gold.version}, {len(gold.items)} items)",
                                 "examples": dg.MetadataValue.json(comparison.examples)})
    return ChatEvaluation(comparison, champ.label, champ.version, candidate.run_id, judge.ref, gold.version)


def evaluation_complete_check(evaluation: ChatEvaluation) -> dg.AssetCheckResult:
    """Every number the gate reads is finite and the judge answered for every prompt."""
    comparison = evaluation.comparison
    numbers = comparison.metrics()
    bad = sorted(k for k, v in numbers.items() if not math.isfinite(v) and not k.endswith(("_ci_low", "_ci_high")))
    n = int(comparison.win["n"])
    return dg.AssetCheckResult(passed=not bad and n > 0,
                               metadata={"generated_prompts": n, "non_finite": ", ".join(bad) or "none",
                                         "judge": evaluation.judge})


def decide_chat(context: dg.AssetExecutionContext, config: GateConfig, evaluation: ChatEvaluation, version: str,
                family: Family, store, mlflow_tracking: MlflowResource) -> ReleaseDecision:
    tolerances = ChatGuardrailTolerances(**{k: getattr(config, k) for k in _TOLERANCES})
    decision = chat_decision(evaluation.comparison, config.policy(), tolerances)
    mlflow_tracking.activate()
    return act_on_decision(context, store, mlflow_tracking.chat_model_name, version, family, decision,
                           evaluation.run_id, evaluation.champion_version,
                           extra={"judge": evaluation.judge, "gold_set_version": evaluation.gold_set_version,
                                  "compared_with_label": evaluation.champion})


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"},
          description="The SFT candidate vs the feedback-chat champion (the base as version 0) on held-out feedback: "
                      "liked-answer NLL, preference accuracy, reward-judged win rate of generated answers (raw and "
                      "length-controlled), guardrails, segments and the gold set.")
def chat_model_evaluation(context: dg.AssetExecutionContext, config: ChatEvaluationConfig, chat_adapter: ChatAdapter,
                          kto_dataset: dict, dpo_dataset: dict, cleaned_feedback: TableRef,
                          reward_promotion_decision: ReleaseDecision, judge: JudgeResource,
                          feedback_store: FeedbackStoreResource, workspace: WorkspaceResource,
                          mlflow_tracking: MlflowResource) -> ChatEvaluation:
    return evaluate_chat_candidate(context, config, chat_adapter, kto_dataset, dpo_dataset, cleaned_feedback,
                                   reward_promotion_decision.judge, judge, feedback_store, workspace, mlflow_tracking)


@dg.asset_check(asset=chat_model_evaluation, blocking=True,
                description="The comparison is complete: every metric finite, every prompt judged.")
def check_chat_evaluation_complete(chat_model_evaluation: ChatEvaluation) -> dg.AssetCheckResult:
    return evaluation_complete_check(chat_model_evaluation)


@dg.asset(group_name="release", kinds={"mlflow"},
          description="The SFT candidate registered in MLflow as a new feedback-chat version with alias 'challenger'.")
def chat_model_version(context: dg.AssetExecutionContext, chat_adapter: ChatAdapter, sft_dataset: dict,
                       chat_model_evaluation: ChatEvaluation, mlflow_tracking: MlflowResource) -> RegisteredVersion:
    mlflow_tracking.activate()
    name = mlflow_tracking.chat_model_name
    adapter = chat_adapter.adapter_dir
    version = register_chat_adapter(
        chat_adapter.run_id, adapter, chat_adapter.base_model_path, name, alias=CHALLENGER,
        tags=registration_tags("chat_sft", sft_dataset, [adapter], adapter_dir=adapter,
                               base_model_path=chat_adapter.base_model_path))
    context.add_output_metadata({"registered_model": name, "version": version, "alias": CHALLENGER,
                                 "uri": f"models:/{name}/{version}", "mlflow_run_id": chat_adapter.run_id})
    return RegisteredVersion(name, version, CHALLENGER, chat_adapter.run_id)


ChatMetric = Literal["lc_win_rate", "win_rate", "reward", "preference_accuracy", "preference_margin", "liked_logprob",
                     "gold_sentence_chrf"]


class ChatGateConfig(GateConfig):
    primary_metric: ChatMetric = Field("lc_win_rate", description="Length-controlled or raw win rate of generated "
                                                                  "answers, mean reward, preference accuracy or "
                                                                  "margin on held-out pairs, liked-answer log-prob, "
                                                                  "gold-set sentence chrF.")
    length_relative: float = Field(_TOLERANCES["length_relative"], description="Allowed relative change of the mean "
                                                                               "answer length, either way.")
    refusal_rate: float = Field(_TOLERANCES["refusal_rate"], description="Allowed rise of the refusal rate.")
    repetition_rate: float = Field(_TOLERANCES["repetition_rate"], description="Allowed rise of repetitive answers.")
    empty_rate: float = Field(_TOLERANCES["empty_rate"], description="Allowed rise of empty answers.")
    liked_nll_relative: float = Field(_TOLERANCES["liked_nll_relative"], description="Allowed relative rise of the "
                                                                                     "held-out NLL of liked answers.")


@dg.asset(group_name="release", kinds={"mlflow"},
          description="promote / keep / needs_review for the SFT candidate; on promote feedback-chat@champion moves "
                      "to it and the old champion becomes previous_champion. Recorded in model_deployments.")
def chat_promotion_decision(context: dg.AssetExecutionContext, config: ChatGateConfig,
                            chat_model_evaluation: ChatEvaluation, chat_model_version: RegisteredVersion,
                            feedback_store: FeedbackStoreResource, mlflow_tracking: MlflowResource) -> ReleaseDecision:
    return decide_chat(context, config, chat_model_evaluation, chat_model_version.version, "chat_sft",
                       feedback_store.store(), mlflow_tracking)


@dg.asset_check(asset=chat_promotion_decision, blocking=True,
                description="The registry's champion alias agrees with the decision.")
def check_chat_decision_applied(chat_promotion_decision: ReleaseDecision) -> dg.AssetCheckResult:
    return decision_check(chat_promotion_decision)

