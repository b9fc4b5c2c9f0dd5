"""The FastAPI capture service over real sockets: a uvicorn subprocess per test on a free port, SQLite and
PostgreSQL stores, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from feedback_pipeline.service.deps import KEY_CACHE_S
from feedback_pipeline.service.keys import create_key, revoke
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import feedback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(db_url: str, tmp_path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "FEEDBACK_DB_URL": db_url, "FEEDBACK_DATA_DIR": str(tmp_path / "data"), **(env or {})}
    # The log goes to a file: a pipe nobody reads would block the server once it fills.
    log = tmp_path / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "feedback_pipeline.cli", "serve-api", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text(errors='replace')}")
        try:
            if call("GET", base + "/healthz")[0] == 200:
                return proc, base
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise AssertionError("server did not answer /healthz within 30 s")


def _stop(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def call(method: str, url: str, body=None, key: str | None = None, headers: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read()
    return status, (json.loads(text) if text else None)


@dataclass
class Service:
    base: str
    store: FeedbackStore
    keys: dict[str, tuple[str, str]]  # name -> (id, secret)

    def __call__(self, method, path, body=None, key=None, **kwargs):
        return call(method, self.base + path, body, self.keys[key][1] if key else None, **kwargs)


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = FeedbackStore(url)
    store.migrate()
    keys = {name: create_key(store, name, scopes) for name, scopes in (
        ("writer", "write"), ("writer2", "write"), ("reader", "read"), ("admin", "admin"), ("both", "write,read"))}
    proc, base = _start(url, tmp_path)
    try:
        yield Service(base, store, keys)
    finally:
        _stop(proc)
        store.dispose()


def test_auth_401_without_key_403_with_wrong_scope(service):
    assert service("POST", "/v1/feedback", feedback())[0] == 401
    status, body = call("POST", service.base + "/v1/feedback", feedback(), key="fbk_not-a-key")
    assert status == 401 and body["errors"][0]["field"] == "Authorization"
    assert service("POST", "/v1/feedback", feedback(), key="reader")[0] == 403
    status, created = service("POST", "/v1/feedback", feedback(), headers={"X-API-Key": service.keys["writer"][1]})
    assert status == 201
    assert service("GET", f"/v1/feedback/{created['id']}", key="writer")[0] == 403
    assert service("GET", f"/v1/feedback/{created['id']}", key="reader")[0] == 200
    revoke(service.store, service.keys["reader"][0])
    time.sleep(KEY_CACHE_S + 0.2)  # a running service trusts a verified key this long
    assert service("GET", f"/v1/feedback/{created['id']}", key="reader")[0] == 401
    assert service.store.count() == 1


def test_create_get_delete(service):
    status, created = service("POST", "/v1/feedback", feedback(rating="down", comment="wrong menu"), key="both")
    assert status == 201 and created["created"] is True
    status, row = service("GET", f"/v1/feedback/{created['id']}", key="both")
    assert status == 200
    assert (row["id"], row["rating"], row["comment"], row["source"]) == (created["id"], -1.0, "wrong menu", "api")
    assert row["metadata"]["api_key_id"] == service.keys["both"][0]
    # Two users' identical answers are two rows, never merged by a content-derived id.
    first = service("POST", "/v1/feedback", feedback(), key="writer")[1]["id"]
    second = service("POST", "/v1/feedback", feedback(), key="writer")[1]["id"]
    assert first != second and service.store.count() == 3
    assert service("DELETE", f"/v1/feedback/{created['id']}", key="writer")[0] == 403  # not the writing key
    assert service("DELETE", f"/v1/feedback/{created['id']}", key="both")[0] == 204
    assert service("GET", f"/v1/feedback/{created['id']}", key="reader")[0] == 404
    assert service("DELETE", f"/v1/feedback/{first}", key="admin")[0] == 204
    assert service("DELETE", f"/v1/feedback/{first}", key="admin")[0] == 404
    assert service("GET", "/v1/feedback/not-a-uuid", key="reader")[0] == 422
    assert service.store.count() == 1


def _in_an_hour() -> str:
    from datetime import datetime, timedelta, timezone
    return (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()


def test_idempotent_retries_store_one_row(service):
    retry = {"Idempotency-Key": "req-42"}
    status1, one = service("POST", "/v1/feedback", feedback(), key="writer", headers=retry)
    status2, two = service("POST", "/v1/feedback", feedback(), key="writer", headers=retry)
    assert (status1, status2) == (201, 200) and one["id"] == two["id"] and service.store.count() == 1
    # The same Idempotency-Key from another key is another request.
    assert service("POST", "/v1/feedback", feedback(), key="writer2", headers=retry)[1]["id"] != one["id"]
    client_id = "0b7f6f0e-3d55-4c1e-8a47-4f1f7a0c9d21"
    assert service("POST", "/v1/feedback", feedback(id=client_id), key="writer") == (201, {"id": client_id, "created": True})
    assert service("POST", "/v1/feedback", feedback(id=client_id), key="writer") == (200, {"id": client_id, "created": False})
    # Another key cannot overwrite a record it did not write.
    status, body = service("POST", "/v1/feedback", feedback(id=client_id, rating="down",
                                                           updated_at=_in_an_hour()), key="writer2")
    assert status == 409 and body["errors"][0]["field"] == "id"
    assert service("GET", f"/v1/feedback/{client_id}", key="admin")[1]["rating"] == 1.0
    assert service.store.count() == 3


_VALID = '"query": "q", "response": "r"'
BAD_INPUTS = [
    ("invalid JSON", b'{"query": "q", "response": ', "body"),
    ("not UTF-8", b'{"query": "\xff", "response": "r"}', "body"),
    ("a list", b'[{"query": "q", "response": "r"}]', "body"),
    ("missing query", b'{"response": "r"}', "query"),
    ("unknown field", ('{' + _VALID + ', "ratting": 1}').encode(), "ratting"),
    ("NaN rating", ('{' + _VALID + ', "rating": NaN}').encode(), "rating"),
    ("Infinity latency", ('{' + _VALID + ', "latency_ms": Infinity}').encode(), "latency_ms"),
    ("lone surrogate", b'{"query": "q\\ud800", "response": "r"}', "query"),
    ("NUL character", b'{"query": "q\\u0000", "response": "r"}', "query"),
    ("1e300 message_index", ('{' + _VALID + ', "message_index": 1e300}').encode(), "message_index"),
    ("1e400 message_index", ('{' + _VALID + ', "message_index": 1e400}').encode(), "message_index"),
    ("2**40 prompt_tokens", ('{' + _VALID + f', "prompt_tokens": {2**40}}}').encode(), "prompt_tokens"),
    ("rating_scale object", ('{' + _VALID + ', "rating_scale": {"a": 1}}').encode(), "rating_scale"),
    ("NaN in metadata", ('{' + _VALID + ', "metadata": {"x": NaN}}').encode(), "metadata.x"),
    ("deep nesting", ('{' + _VALID + ', "metadata": ' + '[' * 100_000 + ']' * 100_000 + '}').encode(), "body"),
    ("bad id", ('{' + _VALID + ', "id": "abc"}').encode(), "id"),
    ("year 9999", ('{' + _VALID + ', "created_at": "9999-01-01T00:00:00Z"}').encode(), "created_at"),
    ("year 1970", ('{' + _VALID + ', "created_at": "1970-01-01T00:00:00Z"}').encode(), "created_at"),
    ("9 MB query", ('{"query": "' + "x" * 900_000 + '", "response": "r"}').encode(), "query"),
    ("1,000-character user_id", ('{' + _VALID + ', "user_id": "' + "u" * 1000 + '"}').encode(), "user_id"),
    ("300 KB metadata", ('{' + _VALID + ', "metadata": {"x": "' + "m" * 300_000 + '"}}').encode(), "metadata"),
]


def test_bad_inputs_are_4xx_naming_the_field_and_store_nothing(service):
    for name, raw, field in BAD_INPUTS:
        status, body = service("POST", "/v1/feedback", key="writer", raw=raw)
        assert 400 <= status < 500, (name, status, body)
        assert body["errors"][0]["field"].startswith(field), (name, body)
        assert body["errors"][0]["reason"], name
    assert service.store.count() == 0
    assert service("POST", "/v1/feedback", feedback(), key="writer")[0] == 201  # the server still works


def test_healthz_and_readyz(service):
    assert service("GET", "/healthz") == (200, {"status": "ok"})
    assert service("GET", "/readyz") == (200, {"status": "ready"})
    assert service("GET", "/openapi.json")[0] == 200


def test_readyz_503_when_the_database_is_unreachable(tmp_path):
    proc, base = _start("postgresql://postgres@127.0.0.1:1/none", tmp_path)
    try:
        assert call("GET", base + "/healthz")[0] == 200
        assert call("GET", base + "/readyz")[0] == 503
        assert call("POST", base + "/v1/feedback", feedback(), key="fbk_x")[0] == 503
    finally:
        _stop(proc)


def test_keys_cli_create_list_revoke(tmp_path):
    env = {**os.environ, "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'keys.db'}", "FEEDBACK_DATA_DIR": str(tmp_path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "feedback_pipeline.cli", "keys", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    created = cli("create", "widget", "--scopes", "write,read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fbk_")
    listed = cli("list")
    key_id = listed.stdout.split()[0]
    assert "widget" in listed.stdout and "read,write" in listed.stdout and secret not in listed.stdout
    store = FeedbackStore(env["FEEDBACK_DB_URL"])
    assert (tmp_path / "keys.db").read_bytes().find(secret.encode()) == -1  # only the hash is stored
    assert cli("revoke", key_id).returncode == 0
    assert cli("revoke", key_id).returncode == 1
    assert "revoked" in cli("list").stdout
    assert cli("create", "bad", "--scopes", "root").returncode == 1
    store.dispose()
