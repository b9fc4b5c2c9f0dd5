"""/v1/jobs and /v1/improvement over real sockets: a real ``dagster-webserver`` on the project's definitions (temp
DAGSTER_HOME, temp stores) and the real uvicorn service pointed at it, both started once for the module.

The webserver runs without the daemon, so a launched run stays QUEUED until it is cancelled: the test exercises
launch, read, list and terminate without spending the CPU on a training run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from feedback_pipeline.analysis.patterns import ErrorPatterns, patterns_markdown
from feedback_pipeline.analysis.suggestions import Suggestion, suggestions_frame
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.service.dagster_jobs import DagsterJobs, DagsterUnavailable
from feedback_pipeline.service.keys import create_key
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.suggestions import save_suggestions
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import Service, _free_port, _start, _stop, call

MIN_NEW = 5  # RETRAIN_MIN_NEW_FEEDBACK of both servers
UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


@dataclass
class Dagster:
    url: str
    port: int
    home: Path
    data_dir: Path
    db_url: str


def _wait_http(proc: subprocess.Popen, url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited: {proc.stdout.read().decode(errors='replace')[-3000:]}")
        try:
            if call("GET", url)[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def dagster_web(tmp_path_factory):
    root = tmp_path_factory.mktemp("dagster")
    home, data_dir = root / "home", root / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    db_url = f"sqlite:///{root / 'feedback.db'}"
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "FEEDBACK_DATA_DIR": str(data_dir), "FEEDBACK_DB_URL": db_url,
           "RETRAIN_MIN_NEW_FEEDBACK": str(MIN_NEW)}
    webserver = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen([str(webserver), "-m", "feedback_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(proc, url + "/server_info", 120)
        yield Dagster(url, port, home, data_dir, db_url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the webserver and its code server
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def service(dagster_web):
    store = FeedbackStore(dagster_web.db_url)
    store.migrate()
    keys = {name: create_key(store, name, scopes) for name, scopes in (("reader", "read"), ("admin", "admin"))}
    # _start puts FEEDBACK_DATA_DIR at <dir>/data: the webserver's data dir, where the reports are.
    proc, base = _start(dagster_web.db_url, dagster_web.data_dir.parent, env={
        "DAGSTER_WEBSERVER_URL": dagster_web.url, "RETRAIN_MIN_NEW_FEEDBACK": str(MIN_NEW)})
    try:
        yield Service(base, store, keys)
    finally:
        _stop(proc)
        store.dispose()


def test_launch_read_list_and_cancel_a_retraining_run(service, dagster_web):
    status, run = service("POST", "/v1/jobs", {"tags": {"reason": "test"}}, key="admin")
    assert status == 201, run
    run_id = run["run_id"]
    assert run["job_name"] == "retraining_job" and run["tags"]["reason"] == "test"
    assert run["tags"]["feedback_pipeline/api_key_id"] == service.keys["admin"][0]
    # The run is Dagster's own: the webserver, asked directly, knows it by that id.
    direct = DagsterGraphQLClient("127.0.0.1", port_number=dagster_web.port, timeout=10)
    assert direct.get_run_status(run_id).value == run["status"]

    status, read = service("GET", f"/v1/jobs/{run_id}", key="admin")
    assert status == 200 and read["run_id"] == run_id and read["status"] in ("QUEUED", "STARTING", "STARTED",
                                                                                 "FAILURE", "SUCCESS")
    status, listed = service("GET", "/v1/jobs?limit=5", key="admin")
    assert status == 200 and run_id in [r["run_id"] for r in listed["runs"]]

    status, cancelled = service("POST", f"/v1/jobs/{run_id}/cancel", key="admin")
    if status == 202:
        assert cancelled["status"] in ("CANCELING", "CANCELED")
        deadline = time.monotonic() + 60
        while direct.get_run_status(run_id).value == "CANCELING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert direct.get_run_status(run_id).value == "CANCELED"
    else:  # it had already finished (failed fast on an empty store)
        assert status == 409, cancelled
    # Cancelling a finished run says so.
    status, again = service("POST", f"/v1/jobs/{run_id}/cancel", key="admin")
    assert status == 409 and again["errors"][0]["field"] == "run_id" and "status" in again["errors"][0]["reason"]

    status, bad = service("POST", "/v1/jobs", {"run_config": {"ops": {"no_such_asset": {}}}}, key="admin")
    assert status == 422 and bad["errors"][0]["field"] == "run_config"
    assert service("POST", "/v1/jobs", {"priority": 1}, key="admin")[0] == 422  # unknown body field


def test_unknown_run_404_and_non_admin_403(service):
    for method, path in (("GET", f"/v1/jobs/{UNKNOWN_RUN}"), ("POST", f"/v1/jobs/{UNKNOWN_RUN}/cancel"),
                         ("GET", "/v1/jobs/not-a-run")):
        status, body = service(method, path, key="admin")
        assert status == 404 and body["errors"][0]["field"] == "run_id", (path, body)
    for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{UNKNOWN_RUN}"),
                         ("POST", f"/v1/jobs/{UNKNOWN_RUN}/cancel")):
        assert service(method, path, key="reader")[0] == 403, path
        assert service(method, path)[0] == 401, path


def test_503_fast_when_the_webserver_is_unreachable(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.migrate()
    _, secret = create_key(store, "admin", "admin")
    proc, base = _start(store.url, tmp_path, env={"DAGSTER_WEBSERVER_URL": f"http://127.0.0.1:{_free_port()}"})
    try:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{UNKNOWN_RUN}"),
                             ("POST", f"/v1/jobs/{UNKNOWN_RUN}/cancel"), ("POST", "/v1/jobs/check")):
            started = time.monotonic()
            status, body = call(method, base + path, key=secret)
            assert status == 503 and "Dagster webserver" in body["errors"][0]["reason"], (path, body)
            assert time.monotonic() - started < 6, path
    finally:
        _stop(proc)
        store.dispose()


def test_a_webserver_that_never_answers_is_unavailable_after_the_timeout():
    with socket.socket() as hanging:  # accepts connections (backlog) and never replies
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(4)
        jobs = DagsterJobs(f"http://127.0.0.1:{hanging.getsockname()[1]}", timeout_s=1)
        started = time.monotonic()
        with pytest.raises(DagsterUnavailable, match="timed out"):
            jobs.runs("retraining_job")
        assert time.monotonic() - started < 3


def test_patterns_and_suggestions_are_the_latest_analysis(service, dagster_web):
    assert service("GET", "/v1/improvement/suggestions", key="reader") == (
        200, {"run_id": None, "created_at": None, "suggestions": []})
    assert service("GET", "/v1/improvement/patterns", key="reader") == (200, {"updated_at": None, "report": None})
    assert service("GET", "/v1/improvement/patterns")[0] == 401

    older = [Suggestion("error_type", "refusal", "Fewer refusals", "12 refusals", {"flagged": 12}, 12.0)]
    newer = [Suggestion("too_little_data", "intent=billing", "Collect billing ratings", "3 rated", {"rated": 3}, 0.3),
             Suggestion("sft_candidates", "cluster 1", "Rewrite password answers", "8 disliked", {"rows": 8}, 8.0)]
    save_suggestions(service.store, "run-older", suggestions_frame(older))
    time.sleep(0.01)
    save_suggestions(service.store, "run-newer", suggestions_frame(newer))
    status, body = service("GET", "/v1/improvement/suggestions", key="reader")
    assert status == 200 and body["run_id"] == "run-newer" and body["created_at"]
    assert [(s["rank"], s["kind"], s["title"], s["metrics"]) for s in body["suggestions"]] == [
        (1, "sft_candidates", "Rewrite password answers", {"rows": 8}),
        (2, "too_little_data", "Collect billing ratings", {"rated": 3})]
    status, only = service("GET", "/v1/improvement/suggestions?kind=too_little_data", key="admin")
    assert [s["target"] for s in only["suggestions"]] == ["intent=billing"]

    # Where and how the error_patterns asset writes its report.
    report = patterns_markdown(ErrorPatterns(by_segment={}, clusters=[], n_disliked=4, n_unclustered=4))
    reports = dagster_web.data_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "error_patterns.md").write_text(report, encoding="utf-8")
    status, body = service("GET", "/v1/improvement/patterns", key="reader")
    assert status == 200 and body["report"] == report and body["updated_at"]


def test_check_flips_when_enough_rated_rows_arrive(service, dagster_web):
    def check():
        status, body = service("POST", "/v1/jobs/check", key="reader")
        assert status == 200, body
        return body

    first = check()
    assert (first["due"], first["new_rated"], first["min_new_rated"], first["since"]) == (False, 0, MIN_NEW, None)
    rows = lambda prefix, n: [normalise_record(feedback(query=f"{prefix}{i}", rating="up" if i % 2 else "down"), "t")  # noqa: E731
                              for i in range(n)]
    service.store.write(rows("a", MIN_NEW - 1) + [normalise_record(feedback(query="unrated", rating=None), "t")])
    assert check()["due"] is False
    service.store.write(rows("b", 1))
    due = check()
    assert due["due"] is True and due["new_rated"] == MIN_NEW and "due" in due["reason"]

    # A dataset built from those rows moves the sensor's watermark in Dagster: nothing new since then.
    instance = dg.DagsterInstance.from_config(str(dagster_web.home))
    try:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="sft_dataset", metadata={"data_watermark": due["newest"]}))
    finally:
        instance.dispose()
    after = check()
    assert (after["due"], after["new_rated"], after["since"]) == (False, 0, due["newest"])
