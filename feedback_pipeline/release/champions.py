"""What each family's current champion is, as local files an evaluation can load.

When a registered model has no champion yet, the model we started from stands in as "version 0": the bare base chat
model for ``feedback-chat``, the bundled embedder for ``feedback-embedder``, and the "longer answer wins" rule for
``feedback-reward`` (a reward model that cannot beat that rule adds nothing, so that is the bar a first one clears).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from feedback_pipeline.release.models import champion


@dataclass(frozen=True)
class Champion:
    label: str  # "feedback-chat/3" or "base (version 0)"
    version: str | None  # None: version 0, nothing registered is champion
    path: str | None  # local adapter / model folder; None for the bare base chat model or the length rule
    base_model_path: str | None = None


def version_zero(kind: str) -> str:
    return f"{kind} (version 0)"


def chat_champion(client: MlflowClient, name: str) -> Champion:
    """The champion chat adapter (its folder on disk when still there, else downloaded from MLflow)."""
    found = champion(client, name)
    if found is None:
        return Champion(version_zero("base"), None, None)
    tags = found.tags or {}
    adapter = tags.get("adapter_dir")
    if not (adapter and (Path(adapter) / "adapter_config.json").is_file()):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{found.version}"))
        adapter = str(local / "artifacts" / "adapter")
    return Champion(f"{name}/{found.version}", str(found.version), adapter, tags.get("base_model_path"))


def embedder_champion(client: MlflowClient, name: str, base_model_path: str) -> Champion:
    found = champion(client, name)
    if found is None:
        return Champion(version_zero("base embedder"), None, base_model_path)
    folder = (found.tags or {}).get("model_dir")
    if not (folder and Path(folder).is_dir()):
        folder = mlflow.artifacts.download_artifacts(f"models:/{name}/{found.version}")
        # the sentence_transformers flavor keeps the model under model.st/ (or data/) inside the logged folder
        for sub in ("model.st", "data/model.st", "data"):
            if (Path(folder) / sub / "config.json").is_file():
                folder = str(Path(folder) / sub)
                break
    return Champion(f"{name}/{found.version}", str(found.version), folder)


def reward_champion(client: MlflowClient, name: str) -> Champion:
    from feedback_pipeline.training.reward import resolve_reward_model

    found = champion(client, name)
    if found is None:
        return Champion(version_zero("longer-answer rule"), None, None)
    folder = (found.tags or {}).get("model_dir")
    if not (folder and Path(folder).is_dir()):
        folder = resolve_reward_model(f"{name}/{found.version}")
    return Champion(f"{name}/{found.version}", str(found.version), folder)
