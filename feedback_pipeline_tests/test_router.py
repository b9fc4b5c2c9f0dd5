"""The router, pure: stable hashed assignment, split accuracy, eligibility, task rules and fallbacks."""

import hashlib
from collections import Counter
from datetime import datetime, timezone

import pytest

from feedback_pipeline.serving.router import ModelRef, RequestContext, Router, assign_arm, bucket
from feedback_pipeline.store.experiments import Arm, Experiment

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _experiment(name="exp", weights=(0.5, 0.5), **kw) -> Experiment:
    arms = tuple(Arm(chr(65 + i), "feedback-chat", w, version=str(i + 1)) for i, w in enumerate(weights))
    return Experiment(name=name, arms=arms, baseline_arm="A", started_at=T0, **kw)


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.1, 0.9), (0.2, 0.3, 0.5)])
def test_split_accuracy_over_100k_users(weights):
    experiment = _experiment(weights=weights)
    counts = Counter(assign_arm(experiment, f"user-{i}").name for i in range(100_000))
    for arm in experiment.arms:
        assert abs(counts[arm.name] / 100_000 - arm.weight) < 0.01, counts


def test_assignment_is_deterministic_and_independent_across_experiments():
    first, second = _experiment("exp1"), _experiment("exp2")
    users = [f"user-{i}" for i in range(2000)]
    assert [assign_arm(first, u) for u in users] == [assign_arm(first, u) for u in users]
    # A known value pins the hash: a change of the function would silently reshuffle running experiments.
    assert bucket("exp1", "user-1") == int.from_bytes(hashlib.sha256(b"exp1\x00user-1").digest()[:8], "big") / 2**64
    same = sum(assign_arm(first, u).name == assign_arm(second, u).name for u in users)
    assert 0.4 < same / len(users) < 0.6  # uncorrelated splits


def test_eligibility_task_rules_and_fallbacks():
    router = Router("feedback-chat", task_routes={"vision": ModelRef.parse("feedback-vision@champion")})
    champion, base = ModelRef("feedback-chat", alias="champion"), ModelRef.base()
    howto = _experiment("howto", eligibility={"intent": ("howto",)})
    stopped = _experiment("old", stopped_at=T0)
    route = router.route(RequestContext(user_id="u1", intent="howto"), [stopped, howto])
    assert route.experiment == "howto" and route.arm in {"A", "B"}
    assert route.candidates == (ModelRef("feedback-chat", version="1" if route.arm == "A" else "2"), champion, base)
    # Not eligible, or no unit to hash: the champion answers, outside any experiment.
    assert router.route(RequestContext(user_id="u1", intent="billing"), [howto]).candidates == (champion, base)
    assert router.route(RequestContext(intent="howto"), [howto]).experiment is None
    assert router.route(RequestContext(session_id="s1", intent="howto"), [howto]).experiment == "howto"
    # A task with its own rule goes to its model, and joins only experiments naming that task.
    vision = router.route(RequestContext(user_id="u1", task="vision"), [_experiment("all")])
    assert vision == router.route(RequestContext(user_id="u1", task="vision"), [])
    assert vision.candidates == (ModelRef("feedback-vision", alias="champion"), champion, base)
    named = _experiment("vision-test", eligibility={"task": ("vision",)})
    assert router.route(RequestContext(user_id="u1", task="vision"), [named]).experiment == "vision-test"
    with pytest.raises(ValueError):
        ModelRef.parse("feedback-chat")
    assert ModelRef.parse("feedback-chat/3") == ModelRef("feedback-chat", version="3")
