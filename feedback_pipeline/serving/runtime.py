"""The serving parts of one service process, built from settings: router, model pool, running experiments.

Experiments are re-read from the store at most every ``poll_s`` seconds (a started or stopped experiment takes
effect within that), and their arms' models are preloaded by the pool's poller, so the first user of an arm does
not wait for a load.
"""

from __future__ import annotations

import logging
import threading
import time

from feedback_pipeline.serving.models import ChatRegistry, ModelPool
from feedback_pipeline.serving.router import ModelRef, Router
from feedback_pipeline.settings import Settings
from feedback_pipeline.store.experiments import Experiment, list_experiments
from feedback_pipeline.store.repository import FeedbackStore

log = logging.getLogger(__name__)


class Serving:
    def __init__(self, router: Router, pool: ModelPool, store: FeedbackStore, max_tokens: int, poll_s: float):
        self.router, self.pool, self.store, self.max_tokens, self.poll_s = router, pool, store, max_tokens, poll_s
        self._experiments: tuple[float, list[Experiment]] = (-1e18, [])
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, store: FeedbackStore) -> Serving:
        import torch

        from feedback_pipeline.training.base_model import prepare_base_chat_model

        torch.set_num_threads(settings.serving_torch_threads)
        base = prepare_base_chat_model(settings.models_dir / "smollm2-135m-instruct", settings.chat_base_model)
        router = Router(settings.chat_model_name,
                        {task: ModelRef.parse(ref) for task, ref in settings.serving_task_routes})
        registry = ChatRegistry(settings.mlflow_tracking_uri, str(base), settings.cache_dir / "serving")
        serving = cls(router, ModelPool(registry, settings.serving_poll_s), store, settings.serving_max_tokens,
                      settings.serving_poll_s)
        serving.pool.wanted = serving.wanted
        return serving

    def experiments(self) -> list[Experiment]:
        """Running experiments, re-read when older than poll_s; the last list is kept while the store is down."""
        read_at, cached = self._experiments
        if time.monotonic() - read_at < self.poll_s:
            return cached
        with self._lock:
            if time.monotonic() - self._experiments[0] >= self.poll_s:
                try:
                    self._experiments = (time.monotonic(), list_experiments(self.store, running_only=True))
                except Exception as exc:
                    log.warning("cannot read experiments, routing with the last known ones: %s", exc)
            return self._experiments[1]

    def wanted(self) -> list[ModelRef]:
        arms = [ModelRef.of_arm(arm) for e in self.experiments() for arm in e.arms]
        return list(dict.fromkeys([self.router.champion, *self.router.task_routes.values(), *arms]))

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
