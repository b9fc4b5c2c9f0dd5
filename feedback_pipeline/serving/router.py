"""Which model answers a request: A/B assignment, eligibility, rule-based routing by task, fallbacks. Pure.

    router = Router("feedback-chat", task_routes={"vision": ModelRef("feedback-vision", alias="champion")})
    route = router.route(RequestContext(user_id="u1", intent="howto"), list_experiments(store, running_only=True))
    route.candidates  # try in order: the arm's (or the task's) model, then the champion, then the base model

Assignment hashes (experiment name, user_id or session_id) with sha256, never ``hash()`` (salted per process), so a
user stays on one arm across requests, workers and restarts, and experiments split independently of each other.
A request without a user or session id joins no experiment: it could not keep its arm, and would not count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from feedback_pipeline.store.experiments import Arm, Experiment

BASE = "base"  # the registered-model name reported when the bare base model answered


@dataclass(frozen=True)
class ModelRef:
    """A registered model by alias or version; ``ModelRef.base()`` is the unregistered base model."""
    model: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def base(cls) -> ModelRef:
        return cls(BASE, version="0")

    @classmethod
    def of_arm(cls, arm: Arm) -> ModelRef:
        return cls(arm.model, alias=arm.alias, version=arm.version)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``NAME@ALIAS`` or ``NAME/VERSION`` (the release tools' notation)."""
        name, sep_alias, alias = text.strip().partition("@")
        if sep_alias and name and alias:
            return cls(name, alias=alias)
        name, sep_version, version = text.strip().rpartition("/")
        if sep_version and name and version.isdigit():
            return cls(name, version=version)
        raise ValueError(f"model reference {text!r}: use NAME@ALIAS or NAME/VERSION")

    @property
    def is_base(self) -> bool:
        return self.model == BASE

    def __str__(self) -> str:
        return f"{self.model}@{self.alias}" if self.alias else f"{self.model}/{self.version}"


@dataclass(frozen=True)
class RequestContext:
    user_id: str | None = None
    session_id: str | None = None
    intent: str | None = None
    project: str | None = None
    task: str | None = None

    @property
    def unit(self) -> str | None:
        return self.user_id or self.session_id


@dataclass(frozen=True)
class Route:
    candidates: tuple[ModelRef, ...]  # the first that loads answers
    experiment: str | None = None
    arm: str | None = None


def bucket(experiment: str, unit: str) -> float:
    """A stable uniform number in [0, 1) for (experiment, unit)."""
    digest = hashlib.sha256(f"{experiment}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_arm(experiment: Experiment, unit: str) -> Arm:
    """The arm whose slice of the cumulative weights holds the unit's bucket."""
    point, total = bucket(experiment.name, unit) * sum(a.weight for a in experiment.arms), 0.0
    for arm in experiment.arms:
        total += arm.weight
        if point < total:
            return arm
    return experiment.arms[-1]  # float rounding at the very top


def eligible(experiment: Experiment, ctx: RequestContext) -> bool:
    """Every eligibility key the experiment names must hold the request's value (a missing value never matches)."""
    return all(getattr(ctx, key) in values for key, values in experiment.eligibility.items())


class Router:
    def __init__(self, model_name: str, task_routes: dict[str, ModelRef] | None = None, default_alias: str = "champion"):
        self.champion = ModelRef(model_name, alias=default_alias)
        self.task_routes = dict(task_routes or {})

    def route(self, ctx: RequestContext, experiments: list[Experiment]) -> Route:
        """The first running experiment the request is eligible for decides the model; otherwise the task's rule,
        otherwise the champion. A task with its own rule (e.g. vision) joins only experiments that name the task."""
        routed = self.task_routes.get(ctx.task) if ctx.task else None
        for experiment in experiments:
            if not experiment.running or ctx.unit is None or not eligible(experiment, ctx):
                continue
            if routed is not None and ctx.task not in experiment.eligibility.get("task", ()):
                continue
            arm = assign_arm(experiment, ctx.unit)
            return Route(self.with_fallbacks(ModelRef.of_arm(arm)), experiment.name, arm.name)
        return Route(self.with_fallbacks(routed or self.champion))

    def with_fallbacks(self, first: ModelRef) -> tuple[ModelRef, ...]:
        """``first``, then the champion, then the base model: what answers when a model fails to load."""
        return tuple(dict.fromkeys((first, self.champion, ModelRef.base())))
