"""The short summary ``make run`` prints: numbers read back from the Dagster instance and MLflow."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.settings import Settings

# (asset, metadata keys shown) in lineage order
_SHOWN = [
    ("raw_feedback", ["rows", "rated_rows", "liked", "disliked"]),
    ("cleaned_feedback", ["rows_out", "rows_rejected", "duplicates_removed", "spam_flagged"]),
    ("feedback_quality_report", ["rated", "like_rate", "drop_alarms"]),
    ("error_patterns", ["disliked", "clusters"]),
    ("improvement_suggestions", ["suggestions"]),
    ("sft_dataset", ["train_rows", "eval_rows", "fingerprint"]),
    ("kto_dataset", ["train_rows", "eval_rows"]),
    ("chat_adapter", ["steps", "final_train_loss", "eval_loss", "train_runtime_s", "mlflow_run_id"]),
    ("reward_model", ["backbone", "steps", "final_train_loss", "train_runtime_s"]),
    ("reward_model_evaluation", ["champion", "challenger_accuracy", "champion_accuracy", "length_rule_accuracy",
                                 "difference_ci_low", "difference_ci_high", "n_pairs"]),
    ("reward_promotion_decision", ["decision", "version", "compared_with", "champion_now", "judge"]),
    ("chat_model_evaluation", ["champion", "judge", "win_rate", "lc_win_rate", "lc_win_rate_ci_low",
                               "lc_win_rate_ci_high", "preference_accuracy_diff", "preference_margin_diff",
                               "preference_margin_ci_low", "preference_margin_ci_high", "liked_logprob_diff",
                               "challenger_gold_chrf", "champion_gold_chrf", "n"]),
    ("chat_model_version", ["registered_model", "version", "alias", "uri"]),
    ("chat_promotion_decision", ["decision", "version", "compared_with", "champion_now"]),
    ("merged_chat_model", ["merged_dir", "size_mb"]),
    ("chat_preference_adapter", ["method", "steps", "final_train_loss", "registered_version"]),
    ("chat_preference_evaluation", ["champion", "win_rate", "lc_win_rate", "lc_win_rate_ci_low",
                                    "lc_win_rate_ci_high", "preference_accuracy_diff", "preference_margin_diff",
                                    "preference_margin_ci_low", "preference_margin_ci_high"]),
    ("chat_preference_promotion_decision", ["decision", "version", "compared_with", "champion_now"]),
    ("embedding_model", ["steps", "final_train_loss", "registered_version"]),
    ("embedding_model_evaluation", ["champion", "ndcg@10_champion", "ndcg@10_challenger", "ndcg@10_ci_low",
                                    "ndcg@10_ci_high", "queries"]),
    ("embedder_promotion_decision", ["decision", "version", "compared_with", "champion_now"]),
]


def _fmt(value) -> str:
    value = getattr(value, "value", value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def pipeline_summary(settings: Settings, instance: dg.DagsterInstance | None = None) -> str:
    instance = instance or dg.DagsterInstance.get()
    lines = ["feedback_pipeline: latest results"]
    for asset, keys in _SHOWN:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            lines.append(f"  {asset:<24} not materialized yet")
            continue
        metadata = event.asset_materialization.metadata
        shown = ", ".join(f"{k}={_fmt(metadata[k])}" for k in keys if k in metadata)
        lines.append(f"  {asset:<24} {shown}")
        if asset.endswith("promotion_decision") and "evidence" in metadata:
            # why: the decision's reasons, the lines of its evidence that start with "- "
            reasons = [ln for ln in str(_fmt(metadata["evidence"])).splitlines() if ln.startswith("- ")]
            lines += [f"  {'':<24}   {ln}" for ln in reasons]
    lines += ["", f"  data directory   {settings.data_dir}", f"  feedback store   {settings.feedback_db_url}",
              f"  MLflow tracking  {settings.mlflow_tracking_uri}",
              "", "Open the Dagster UI:  make ui   (http://127.0.0.1:3000)",
              f"Open the MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}",
              "Release decisions:    .venv/bin/feedback-pipeline models list   (promote / approve / rollback / lineage)"]
    return "\n".join(lines)
