"""How the pipeline runs beyond one process: the training pool and the Kubernetes step executor.

Nothing here changes ``make run`` (embedded instance, default executor). Deployments choose:

- ``TRAINING_POOL``: the Dagster concurrency pool of every training asset (``pool=TRAINING_POOL`` on its decorator).
  The instance limits the pool (``concurrency: pools: default_limit``; see dagster.yaml, deploy/docker/dagster.yaml
  and deploy/k8s/values.yaml), so two trainings never run at once on one machine.
- ``deployment_executor(default)``: ``k8s_job_executor`` when ``FEEDBACK_EXECUTOR=k8s`` (set by deploy/k8s/values.yaml
  on the code location, and so on its run and step pods), else ``default`` (the job's own executor, ``None`` for
  Dagster's default). Each step then runs in its own pod; the training steps ask for a GPU and land on GPU nodes (node selector + toleration), and a pod
  anti-affinity keeps two training pods off one node.
"""

from __future__ import annotations

from typing import Any

TRAINING_POOL = "training"

# The op names of the training assets (an asset's op is named after its key): the keys of per_step_k8s_config.
TRAINING_OPS = ("chat_adapter", "chat_preference_adapter", "reward_model", "embedding_model")

EXECUTOR_ENV = "FEEDBACK_EXECUTOR"

# Label set by NVIDIA's GPU feature discovery / GPU operator on GPU nodes, and the taint most GPU node pools carry.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
TRAINING_POD_LABELS = {"feedback-pipeline/pool": TRAINING_POOL}

# Every other step (cleaning, datasets, evaluation, registry moves): small CPU pods.
DEFAULT_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    },
}

# A training step: one whole GPU, the node's cores it needs, and never a second training pod on the same node.
TRAINING_STEP_K8S_CONFIG: dict[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
        },
    },
    "pod_template_spec_metadata": {"labels": TRAINING_POD_LABELS},
    "pod_spec_config": {
        "node_selector": GPU_NODE_SELECTOR,
        "tolerations": GPU_TOLERATIONS,
        "affinity": {
            "pod_anti_affinity": {
                "required_during_scheduling_ignored_during_execution": [{
                    "label_selector": {"match_labels": TRAINING_POD_LABELS},
                    "topology_key": "kubernetes.io/hostname",
                }],
            },
        },
    },
}


def k8s_executor_config() -> dict[str, Any]:
    """Config of ``k8s_job_executor``: small pods by default, GPU pods for the training ops."""
    return {
        "step_k8s_config": DEFAULT_STEP_K8S_CONFIG,
        "per_step_k8s_config": {op: TRAINING_STEP_K8S_CONFIG for op in TRAINING_OPS},
    }


def deployment_executor(default=None, choice: str | None = None):
    """The executor for ``dg.Definitions(executor=...)`` and ``define_asset_job(executor_def=...)``.

    ``k8s_job_executor`` (a pod per step, GPU pods for training) when ``choice`` is ``"k8s"``, else ``default``
    (``None``: Dagster's default; a job that runs in-process on one machine passes ``dg.in_process_executor``).
    ``choice`` defaults to ``Settings.executor`` (``FEEDBACK_EXECUTOR``), read when the definitions are built.
    """
    if choice is None:
        from feedback_pipeline.settings import load_settings

        choice = load_settings().executor
    choice = choice.strip().lower()
    if choice in ("", "default"):
        return default
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(k8s_executor_config(), name="k8s_gpu_aware")
    raise ValueError(f"{EXECUTOR_ENV} must be 'k8s' or unset, got {choice!r}")
