"""chat_model_evaluation and chat_model_version: base vs candidate on held-out feedback, then registration."""


import math

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.datasets.build import read_jsonl
from feedback_pipeline.defs.resources import MlflowResource
from feedback_pipeline.evaluation.chat_eval import compare_chat_models
from feedback_pipeline.tracking.registry import CHALLENGER, register_chat_adapter


class ChatEvaluationConfig(dg.Config):
    max_per_label: int = Field(40, description="Held-out liked and disliked responses scored per label.")
    max_length: int = Field(256, description="Tokens per scored example.")
    max_nll_increase: float = Field(0.05, description="Relative rise in held-out NLL on liked responses that blocks registration.")


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"},
          description="Held-out NLL/perplexity on liked responses and the preference margin, base vs candidate.")
def chat_model_evaluation(context: dg.AssetExecutionContext, config: ChatEvaluationConfig, chat_adapter: dict,
                          kto_dataset: dict, mlflow_tracking: MlflowResource) -> dict:
    held_out = read_jsonl(kto_dataset["eval_file"])
    examples = {label: [{"prompt": r["prompt"], "response": r["completion"][-1]["content"]}
                        for r in held_out if r["label"] is label][: config.max_per_label] for label in (True, False)}
    metrics = compare_chat_models(chat_adapter["base_model_path"], chat_adapter["adapter_dir"], examples[True],
                                  examples[False], max_length=config.max_length)
    mlflow_tracking.activate()
    with mlflow.start_run(run_id=chat_adapter["run_id"]):
        mlflow.log_metrics({f"eval_{k}": float(v) for k, v in metrics.items()})
    context.add_output_metadata({k: float(v) for k, v in metrics.items()})
    return {"metrics": metrics, "run_id": chat_adapter["run_id"], "max_nll_increase": config.max_nll_increase}


@dg.asset_check(asset=chat_model_evaluation, blocking=True,
                description="The candidate must not be worse than the base on held-out liked responses.")
def check_candidate_not_worse(chat_model_evaluation: dict) -> dg.AssetCheckResult:
    m = chat_model_evaluation["metrics"]
    limit = m["base_nll"] * (1 + chat_model_evaluation["max_nll_increase"])
    finite = all(math.isfinite(float(m[k])) for k in ("base_nll", "candidate_nll", "preference_margin"))
    return dg.AssetCheckResult(
        passed=finite and m["candidate_nll"] <= limit,
        metadata={"base_nll": m["base_nll"], "candidate_nll": m["candidate_nll"],
                  "allowed_max": limit, "all_finite": finite})


@dg.asset(group_name="evaluation", kinds={"mlflow"},
          description="The candidate registered in MLflow as a new version with alias 'challenger'.")
def chat_model_version(context: dg.AssetExecutionContext, chat_adapter: dict, chat_model_evaluation: dict,
                       mlflow_tracking: MlflowResource) -> dict:
    mlflow_tracking.activate()
    name = mlflow_tracking.chat_model_name
    version = register_chat_adapter(
        chat_adapter["run_id"], chat_adapter["adapter_dir"], chat_adapter["base_model_path"], name,
        alias=CHALLENGER, tags={"dataset_fingerprint": chat_adapter["dataset_fingerprint"]})
    context.add_output_metadata({"registered_model": name, "version": version, "alias": CHALLENGER,
                                 "uri": f"models:/{name}@{CHALLENGER}", "mlflow_run_id": chat_adapter["run_id"]})
    return {"name": name, "version": version, "alias": CHALLENGER, "run_id": chat_adapter["run_id"]}
