"""One MLflow run per training, written the same way by every training asset.

    with training_run(f"chat-sft-{tag}", "chat_sft", context.run.run_id,
                      params={**config_params(cfg), "dataset_fingerprint": fp}) as run:
        result = train(cfg, log=context.log.info)
        metrics = run.log_metrics({"final_train_loss": result.final_train_loss, "eval_loss": result.eval_loss})
        run.log_artifacts(result.adapter_dir, "adapter")
    version = register_version(name, run.run_id, model_uri=..., alias=CHALLENGER, tags=...)

``register_version`` (in ``tracking.registry``) registers after the run has ended: a logged MLflow model
(``model_uri``) or a folder of run artifacts (``source``) becomes a new version with its alias.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow


def config_params(cfg: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config dataclass as MLflow params: lists become comma-separated text, ``exclude`` is left out."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
            for k, v in values.items() if k not in exclude}


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """The active MLflow run of one training."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float | None]) -> dict[str, float]:
        """Log the finite values (None and NaN are not metrics); return what was logged."""
        logged = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if logged:
            mlflow.log_metrics(logged)
        return logged

    def log_artifacts(self, folder: str, artifact_path: str) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


@contextlib.contextmanager
def training_run(run_name: str, stage: str, dagster_run_id: str | None, params: Mapping[str, Any],
                 tags: Mapping[str, str] | None = None) -> Iterator[TrainingRun]:
    """Start an MLflow run (in the active experiment: ``MlflowResource.activate()`` first) tagged with its stage and
    the Dagster run, with ``params`` logged; the step logger of the trainers writes per-step metrics into it."""
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"stage": stage, **({"dagster_run_id": dagster_run_id} if dagster_run_id else {}),
                         **(tags or {})})
        mlflow.log_params(dict(params))
        yield TrainingRun(run.info.run_id)
