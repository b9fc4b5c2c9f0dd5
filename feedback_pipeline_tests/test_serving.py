"""Serving over real sockets: the OpenAI client against the uvicorn service, A/B assignment and attribution of
feedback to the served variant, hot swap of a moved alias under a loopback load, and the base model when nothing is
registered. Two tiny LoRA versions (random, r=2) are registered in a temp MLflow sqlite store by the pipeline's own
``register_chat_adapter``; generation is a few tokens."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from feedback_pipeline.service.keys import create_key
from feedback_pipeline.serving.router import assign_arm
from feedback_pipeline.store.experiments import arm_outcomes, create_experiment, get_experiment
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import _start, _stop

MODEL = "serving-chat"
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def registry(base_model_dir, tmp_path_factory):
    """MLflow sqlite store with MODEL versions 1 (champion) and 2 (challenger): random LoRA adapters on the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from feedback_pipeline.tracking.registry import register_chat_adapter, use_tracking

    root = tmp_path_factory.mktemp("serving-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    use_tracking(uri, str(root / "artifacts"), "serving-test")
    import mlflow

    for seed, alias in ((1, "champion"), (2, "challenger")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_model_dir)), LoraConfig(
            r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        adapter = root / f"adapter-{seed}"
        model.save_pretrained(str(adapter))
        with mlflow.start_run() as run:
            pass
        # No tags: serving finds the adapter and its base through the logged model's artifacts, as a fresh machine would.
        register_chat_adapter(run.info.run_id, str(adapter), str(base_model_dir), MODEL, alias=alias)
    return uri


def _service(tmp_path, db_url: str, registry_uri: str, base_model_dir, model_name: str = MODEL, poll_s: float = 1.0):
    store = FeedbackStore(db_url)
    store.migrate()
    keys = {name: create_key(store, name, scopes)[1] for name, scopes in (("app", "write"), ("reader", "read"))}
    env = {"SERVING_ENABLED": "1", "SERVING_POLL_S": str(poll_s), "MLFLOW_TRACKING_URI": registry_uri,
           "CHAT_BASE_MODEL": str(base_model_dir), "CHAT_REGISTERED_MODEL": model_name, "SERVING_MAX_TOKENS": "8"}
    proc, base = _start(db_url, tmp_path, env)
    return proc, base, store, keys


def _openai(base: str, key: str):
    from openai import OpenAI

    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_openai_client_ab_assignment_and_feedback_attribution(db, registry, base_model_dir, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'feedback.db'}" if db == "sqlite" else request.getfixturevalue("postgres_url")
    store = FeedbackStore(url)
    store.migrate()
    experiment = create_experiment(store, "greeting", [
        {"name": "A", "model": MODEL, "alias": "champion", "weight": 0.5},
        {"name": "B", "model": MODEL, "version": "2", "weight": 0.5}], eligibility={"intent": ["smalltalk"]})
    proc, base, store, keys = _service(tmp_path, url, registry, base_model_dir)
    try:
        client = _openai(base, keys["app"])
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=HELLO, max_tokens=4, user="user-0", metadata={"intent": "smalltalk"})
        answer = raw.parse()
        variant = answer.model_extra["feedback_pipeline"]
        arm = assign_arm(experiment, "user-0")
        assert answer.id.startswith("chatcmpl-") and answer.choices[0].message.content
        assert answer.usage.completion_tokens <= 4 and raw.headers["x-response-id"] == answer.id
        assert (variant["experiment"], variant["arm"], variant["model_version"]) == (
            "greeting", arm.name, "1" if arm.name == "A" else "2")
        assert raw.headers["x-arm"] == arm.name and answer.model == f"{MODEL}/{variant['model_version']}"
        # Each user keeps one arm; requests outside the eligible intent go to the champion, outside the experiment.
        seen = Counter()
        for i in range(12):
            got = client.chat.completions.create(model="auto", messages=HELLO, max_tokens=1, user=f"user-{i % 6}",
                                                 metadata={"intent": "smalltalk"}).model_extra["feedback_pipeline"]
            assert got["arm"] == assign_arm(experiment, f"user-{i % 6}").name
            seen[got["arm"]] += 1
        other = client.chat.completions.create(model="auto", messages=HELLO, max_tokens=1, user="user-0",
                                               metadata={"intent": "billing"}).model_extra["feedback_pipeline"]
        assert (other["experiment"], other["model_version"], other["alias"]) == (None, "1", "champion")
        # Feedback naming the answer is attributed to the served variant, whatever the client says.
        record = feedback(query="Say hello.", response=answer.choices[0].message.content, response_id=answer.id,
                          model_version="made-up", user_id="user-0", rating="up")
        status, created = _call(base, "POST", "/v1/feedback", record, keys["app"])
        assert status == 201, created
        stored = _call(base, "GET", f"/v1/feedback/{created['id']}", None, keys["reader"])[1]
        assert (stored["experiment"], stored["arm"], stored["model_name"], stored["model_version"]) == (
            "greeting", arm.name, MODEL, variant["model_version"])
        outcomes = arm_outcomes(store, "greeting")
        assert len(outcomes) == 13 and outcomes.set_index("response_id").loc[answer.id, "rating_thumb"] == 1
        # Streaming through the same client; the row is written before the first chunk.
        chunks = list(client.chat.completions.create(model=f"{MODEL}/2", messages=HELLO, max_tokens=4, stream=True,
                                                     user="user-9"))
        assert chunks[0].id == chunks[-1].id and chunks[-1].choices[0].finish_reason in ("stop", "length")
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.strip() and chunks[-1].model_extra["feedback_pipeline"]["model_version"] == "2"
        assert _call(base, "POST", "/v1/feedback", feedback(response_id=chunks[0].id), keys["app"])[0] == 201
        listed = {m.id for m in client.models.list()}
        assert {"auto", f"{MODEL}@champion", f"{MODEL}/2"} <= listed
        assert get_experiment(store, "greeting").running
    finally:
        _stop(proc)
        store.dispose()


def _call(base, method, path, body, key):
    from feedback_pipeline_tests.test_service import call

    return call(method, base + path, body, key)


def _wait_loaded(client, model_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while model_id not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, f"{model_id} not loaded within {timeout} s"
        time.sleep(0.2)


def test_hot_swap_under_load_fails_no_request(registry, base_model_dir, tmp_path):
    client_mlflow = MlflowClient(registry, registry_uri=registry)
    client_mlflow.set_registered_model_alias(MODEL, "champion", "1")
    proc, base, store, keys = _service(tmp_path, f"sqlite:///{tmp_path / 'feedback.db'}", registry, base_model_dir,
                                       poll_s=0.5)
    served: dict[int, list[tuple[float, float, str]]] = {i: [] for i in range(3)}  # worker -> (start, end, version)
    failures: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        client = _openai(base, keys["app"])
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = client.chat.completions.create(model="auto", messages=HELLO, max_tokens=4,
                                                        user=f"load-{worker}")
                served[worker].append((started, time.monotonic(),
                                       answer.model_extra["feedback_pipeline"]["model_version"]))
            except Exception as exc:  # every failure counts: connection, status or body
                failures.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    try:
        _wait_loaded(_openai(base, keys["app"]), f"{MODEL}@champion")
        for w in workers:
            w.start()
        time.sleep(3.0)
        moved_at = time.monotonic()
        client_mlflow.set_registered_model_alias(MODEL, "champion", "2")
        deadline = moved_at + 60
        while time.monotonic() < deadline and sum(v == "2" for rs in served.values() for *_, v in rs) < 9:
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
        _stop(proc)
        client_mlflow.set_registered_model_alias(MODEL, "champion", "1")
        store.dispose()
    every = sorted(r for rs in served.values() for r in rs)
    versions = [v for *_, v in every]
    first_new = min(end for _, end, v in every if v == "2") - moved_at
    latencies = sorted(end - start for start, end, v in every if start < moved_at)
    print(f"\nhot swap: {len(every)} requests, {len(failures)} failed, {versions.count('1')} on v1, "
          f"{versions.count('2')} on v2, first v2 answer {first_new:.1f} s after the move; "
          f"latency before the move (3 concurrent clients, 4 tokens) median {latencies[len(latencies) // 2]:.2f} s")
    assert failures == []
    assert versions.count("1") >= 3 and versions.count("2") >= 9
    for worker in served.values():  # a worker's next request starts after its last answer: once on v2, never back
        seen = [v for *_, v in worker]
        assert seen == sorted(seen), seen


def test_base_model_answers_when_nothing_is_registered(registry, base_model_dir, tmp_path):
    proc, base, store, keys = _service(tmp_path, f"sqlite:///{tmp_path / 'feedback.db'}", registry, base_model_dir,
                                       model_name="never-registered")
    try:
        answer = _openai(base, keys["app"]).chat.completions.create(model="auto", messages=HELLO, max_tokens=2)
        assert answer.model == "base/0" and answer.model_extra["feedback_pipeline"]["alias"] is None
    finally:
        _stop(proc)
        store.dispose()
