"""The loop closed on a running service (SIMULATED users): the router splits users between the champion (arm A)
and a challenger (arm B); simulated users like answers with a measurable property (their length) that B's answers
have more often; their thumbs go through the real capture path; the A/B sensor detects B and promotes it; the same
service process then serves B as champion, without a restart and without a failed request.

Retraining is not repeated here: the two versions are the serving tests' registered LoRA adapters, and
test_pipeline.py covers training -> registration of a challenger."""

from __future__ import annotations

import json
import time
import urllib.request

import dagster as dg
from mlflow.tracking import MlflowClient

from feedback_pipeline.defs.ab_testing import build_ab_test_sensor
from feedback_pipeline.evaluation.ab_stats import AbPolicy
from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource
from feedback_pipeline.release.models import aliases_of
from feedback_pipeline.serving.simulate import QUESTIONS, UserModel, simulate
from feedback_pipeline.store.experiments import create_experiment, get_experiment
from feedback_pipeline_tests.test_service import _stop
from feedback_pipeline_tests.test_serving import MODEL, _service, registry  # noqa: F401 (fixture)

MAX_TOKENS = 8
USERS = 170
# The experimenter's stated minimum detectable effect: the planted taste moves the like-rate by far more than this.
POLICY = AbPolicy(mde=0.25, min_rated_per_arm=60)


def _chat(base: str, key: str, model: str, question: str, user: str) -> dict:
    request = urllib.request.Request(f"{base}/v1/chat/completions", method="POST", data=json.dumps({
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS,
        "user": user}).encode(), headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _length_preference(answers: dict[str, list[str]]) -> UserModel:
    """The length threshold and direction under which B's answers have the liked property most often vs A's."""
    best = None
    for threshold in sorted({len(a) for side in answers.values() for a in side}):
        for prefer in ("shorter", "longer"):
            model = UserModel(prefer=prefer, threshold_chars=threshold)
            share = {arm: sum(model.like_probability(a, None) > 0.5 for a in side) / len(side)
                     for arm, side in answers.items()}
            gap = share["B"] - share["A"]
            if best is None or gap > best[0]:
                best = (gap, model)
    assert best[0] >= 0.4, f"the two fixture versions answer too alike to tell apart by length: {answers}"
    return best[1]


def test_ab_experiment_promotes_the_better_arm_and_the_service_serves_it(registry, base_model_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    proc, base, store, keys = _service(tmp_path, url, registry, base_model_dir)
    try:
        # What each version answers (pinned, outside any experiment): the users' taste is defined on that.
        answers = {arm: [_chat(base, keys["app"], f"{MODEL}/{version}", q, "probe")["choices"][0]["message"]["content"]
                         for q in QUESTIONS] for arm, version in (("A", "1"), ("B", "2"))}
        users = _length_preference(answers)
        create_experiment(store, "loop", [{"name": "A", "model": MODEL, "alias": "champion", "weight": 0.5},
                                          {"name": "B", "model": MODEL, "version": "2", "weight": 0.5}])
        time.sleep(1.5)  # the service re-reads running experiments every SERVING_POLL_S (1 s here)
        report = simulate(base, keys["app"], users=USERS, model=users, seed=7, max_tokens=MAX_TOKENS)
        assert not report.errors and report.users == USERS
        assert min(report.served["A"], report.served["B"]) >= POLICY.min_rated_per_arm
        assert report.like_rate("B") > report.like_rate("A")

        sensor, instance = build_ab_test_sensor(POLICY), dg.DagsterInstance.ephemeral()
        resources = {"feedback_store": FeedbackStoreResource(db_url=url),
                     "mlflow_tracking": MlflowResource(tracking_uri=registry, artifact_root=str(tmp_path / "art"))}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            sensor(context)
        decided = get_experiment(store, "loop")
        assert decided.decision == "deploy_test_model" and decided.evidence["winner_arm"] == "B"
        assert aliases_of(MlflowClient(registry), MODEL)["champion"] == "2"

        # The same process picks the new champion up by itself (alias poll), with every request answered.
        deadline, served = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            body = _chat(base, keys["app"], "auto", QUESTIONS[0], f"after-{len(served)}")
            variant = body["feedback_pipeline"]
            served.append((variant["model_version"], variant["experiment"]))
            if served[-1] == ("2", None):  # champion now, and the stopped experiment routes nobody
                break
            time.sleep(0.5)
        assert served[-1] == ("2", None), served
        assert proc.poll() is None  # no restart
        frame = store.read_frame()
        assert (frame["source"] == "simulated").all() and frame["metadata"].map(lambda m: m["simulated"]).all()
        assert set(frame["arm"].dropna()) == {"A", "B"}
    finally:
        _stop(proc)
        store.dispose()
