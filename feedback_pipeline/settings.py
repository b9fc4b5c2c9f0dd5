"""The one place that reads the environment.

Every path anchors to the data directory (``FEEDBACK_DATA_DIR``), never to the current working directory.
Everything has an embedded default so ``make run`` needs no server and no configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# No machine here reaches the model hubs: loading must come from local paths only.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    feedback_db_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    chat_base_model: str  # "" means the bundled SmolLM2-135M-Instruct, converted once into the data dir
    embedding_model: str  # "" means the bundled all-MiniLM-L6-v2
    shared_data_dir: Path
    retrain_min_new_feedback: int
    chat_model_name: str
    embedding_model_name: str
    reward_model_name: str
    judge_base_url: str  # "" = the reward model judges generated answers
    judge_model: str
    judge_api_key: str
    # Capture service (feedback_pipeline/service): browser origins allowed by CORS, per-key requests per minute,
    # open connections, seconds to receive a whole request, and the Dagster webserver the job endpoints drive.
    cors_origins: tuple[str, ...]
    rate_limit_per_minute: int
    max_connections: int
    read_timeout_s: float
    dagster_url: str
    api_workers: int  # uvicorn worker processes (each keeps its own rate-limit buckets and key cache)
    # Chat serving (feedback_pipeline/serving): off by default, so the capture-only service never loads a model.
    # Task routes: "task=NAME@ALIAS,..." (e.g. "vision=feedback-vision@champion"); max_tokens caps each answer.
    serving_enabled: bool
    serving_poll_s: float  # seconds between checks of the MLflow aliases (hot swap) and of running experiments
    serving_task_routes: tuple[tuple[str, str], ...]
    serving_max_tokens: int
    # torch threads per service process: each model generates one request at a time, and two arms answer at once;
    # measured on the shared 2-core box under load, 1 thread gave 0.5 s for 4 tokens where 2 threads gave 4.9 s.
    serving_torch_threads: int
    # "k8s": every job runs on the k8s step executor (a pod per step, GPU pods for training; deploy/k8s/values.yaml
    # sets it); "" keeps each job's own executor (in-process on one machine).
    executor: str

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @cached_property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @cached_property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("FEEDBACK_DATA_DIR") or REPO_ROOT / ".data").expanduser().resolve()
    mlflow_dir = data_dir / "mlflow"
    return Settings(
        data_dir=data_dir,
        feedback_db_url=env.get("FEEDBACK_DB_URL") or f"sqlite:///{data_dir / 'feedback.db'}",
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifact_root=env.get("MLFLOW_ARTIFACT_ROOT") or str(mlflow_dir / "artifacts"),
        chat_base_model=env.get("CHAT_BASE_MODEL", ""),
        embedding_model=env.get("EMBEDDING_MODEL", ""),
        shared_data_dir=Path(env.get("FEEDBACK_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data").resolve(),
        retrain_min_new_feedback=int(env.get("RETRAIN_MIN_NEW_FEEDBACK", "200")),
        chat_model_name=env.get("CHAT_REGISTERED_MODEL", "feedback-chat"),
        embedding_model_name=env.get("EMBEDDING_REGISTERED_MODEL", "feedback-embedder"),
        reward_model_name=env.get("REWARD_REGISTERED_MODEL", "feedback-reward"),
        judge_base_url=env.get("JUDGE_BASE_URL", ""),
        judge_model=env.get("JUDGE_MODEL", ""),
        judge_api_key=env.get("JUDGE_API_KEY", ""),
        cors_origins=tuple(o.strip().rstrip("/") for o in env.get("FEEDBACK_CORS_ORIGINS", "").split(",") if o.strip()),
        rate_limit_per_minute=int(env.get("FEEDBACK_RATE_LIMIT_PER_MINUTE", "60000")),
        max_connections=int(env.get("FEEDBACK_MAX_CONNECTIONS", "512")),
        read_timeout_s=float(env.get("FEEDBACK_READ_TIMEOUT_S", "10")),
        dagster_url=env.get("DAGSTER_WEBSERVER_URL", "http://127.0.0.1:3000"),
        api_workers=int(env.get("FEEDBACK_API_WORKERS", "1")),
        serving_enabled=env.get("SERVING_ENABLED", "0").strip().lower() in ("1", "true", "yes", "on"),
        serving_poll_s=float(env.get("SERVING_POLL_S", "10")),
        serving_task_routes=tuple((task.strip(), ref.strip()) for task, _, ref in (
            item.partition("=") for item in env.get("SERVING_TASK_ROUTES", "").split(",") if item.strip())),
        serving_max_tokens=int(env.get("SERVING_MAX_TOKENS", "256")),
        serving_torch_threads=int(env.get("SERVING_TORCH_THREADS", "1")),
        executor=env.get("FEEDBACK_EXECUTOR", "").strip().lower(),
    )
