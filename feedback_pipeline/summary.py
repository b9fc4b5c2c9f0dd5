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
    ("chat_model_evaluation", ["base_nll", "candidate_nll", "base_perplexity",
                               "candidate_perplexity", "preference_margin", "preference_margin_ci_low",
                               "preference_margin_ci_high", "n_liked", "n_disliked"]),
    ("chat_model_version", ["registered_model", "version", "alias", "uri"]),
    ("merged_chat_model", ["merged_dir", "size_mb"]),
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
    lines += ["", f"  data directory   {settings.data_dir}", f"  feedback store   {settings.feedback_db_url}",
              f"  MLflow tracking  {settings.mlflow_tracking_uri}",
              "", "Open the Dagster UI:  make ui   (http://127.0.0.1:3000)",
              f"Open the MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}"]
    return "\n".join(lines)
