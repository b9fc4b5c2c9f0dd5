"""MLflow experiments and the model registry.

The chat model is registered as a pyfunc that holds the LoRA adapter as an artifact and names its base model
folder in ``model_config``: the 0.5 GB base is shared by every version instead of copied into each one.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

CHALLENGER = "challenger"
CHAMPION = "champion"
# Explicit requirements: MLflow's inference would import the model and pull in torchvision (not installed).
_CHAT_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0"]


def use_tracking(tracking_uri: str, artifact_root: str, experiment: str) -> str:
    """Point MLflow at the store and return the experiment id (created with our artifact root if missing)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = artifact_root if "://" in artifact_root else Path(artifact_root).resolve().as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=f"{location.rstrip('/')}/{experiment}")
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class ChatAdapterModel(mlflow.pyfunc.PythonModel):
    """Generates a reply for each prompt with base model + LoRA adapter (greedy, short)."""

    def load_context(self, context):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = context.model_config["base_model_path"]
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["adapter"])
        model = AutoModelForCausalLM.from_pretrained(base)
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).eval()
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 64))

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        import torch

        replies = []
        for prompt in model_input:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": str(prompt)}],
                                                     add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
            with torch.no_grad():
                out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False)
            replies.append(self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return replies


def register_chat_adapter(run_id: str, adapter_dir: str, base_model_path: str, model_name: str,
                          alias: str = CHALLENGER, tags: dict | None = None) -> str:
    """Log the adapter as a pyfunc model in ``run_id``, register it, point ``alias`` at it; return the version."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="chat_model", python_model=ChatAdapterModel(), artifacts={"adapter": adapter_dir},
            model_config={"base_model_path": base_model_path, "max_new_tokens": 64},
            pip_requirements=_CHAT_REQUIREMENTS)
    return register_version(model_name, run_id, model_uri=info.model_uri, alias=alias, tags=tags)


def register_version(name: str, run_id: str, *, model_uri: str | None = None, source: str | None = None,
                     alias: str | None = CHALLENGER, tags: dict | None = None) -> str:
    """A new version of the registered model ``name`` (created when missing) from ``run_id``: a logged MLflow model
    (``model_uri``, what ``log_model`` returned) or a folder of the run's artifacts (``source``, its URI); ``alias``
    (None: none) points at it. Returns the version."""
    if (model_uri is None) == (source is None):
        raise ValueError("register_version needs exactly one of model_uri (a logged model) and source (artifacts)")
    tags = {k: str(v) for k, v in (tags or {}).items()}
    client = MlflowClient()
    if model_uri is not None:
        version = mlflow.register_model(model_uri, name, tags=tags)
    else:
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def version_by_alias(model_name: str, alias: str):
    """The registered version an alias points at, or None when the alias is not set."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def registration_tags(family: str, dataset: dict, artifact_dirs: list[str], **extra: str) -> dict[str, str]:
    """Tags every registered version carries, read by the release tools (lineage, trained-on, cleanup):
    its family, the dataset it was trained on (fingerprint and manifest path) and its local folders."""
    manifest = dataset.get("manifest") or str(Path(dataset["directory"]) / "manifest.json")
    return {"family": family, "dataset_fingerprint": dataset["fingerprint"], "dataset_manifest": str(manifest),
            "artifact_dirs": json.dumps([str(d) for d in artifact_dirs]), **{k: str(v) for k, v in extra.items()}}
