"""The one MLflow helper of the training assets: a run with stage tags and config params, finite metrics, artifacts,
and a registered version with its alias."""

from dataclasses import dataclass, field

import pytest
from mlflow.tracking import MlflowClient

from feedback_pipeline.tracking.registry import register_version, use_tracking
from feedback_pipeline.tracking.runs import config_params, training_run


@dataclass
class _Cfg:
    max_steps: int = 3
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    eval_file: str | None = None


def test_a_training_run_is_tagged_logged_and_registered(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking(uri, str(tmp_path / "artifacts"), "test")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x")
    params = {**config_params(_Cfg()), "dataset_fingerprint": "abc"}
    with training_run("reward-abc", "reward", "dagster-run-1", params) as run:
        logged = run.log_metrics({"final_train_loss": 0.5, "eval_loss": None, "tokens_per_s": float("nan")})
        run.log_artifacts(str(folder), "reward_model")
    assert logged == {"final_train_loss": 0.5}  # None and NaN are not metrics
    client = MlflowClient(uri)
    stored = client.get_run(run.run_id)
    assert stored.data.tags["stage"] == "reward" and stored.data.tags["dagster_run_id"] == "dagster-run-1"
    assert stored.data.params["lora_target_modules"] == "q_proj,v_proj" and stored.data.params["max_steps"] == "3"
    assert stored.data.metrics == {"final_train_loss": 0.5}

    source = f"{stored.info.artifact_uri}/reward_model"
    first = register_version("m", run.run_id, source=source, alias="challenger", tags={"family": "reward"})
    second = register_version("m", run.run_id, source=source, alias=None)  # the registered model exists already
    assert (first, second) == ("1", "2")
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "1"
    assert client.get_model_version("m", "1").tags["family"] == "reward"
    with pytest.raises(ValueError, match="exactly one"):
        register_version("m", run.run_id)
