"""The capture service's batch, list, update, export and erasure endpoints, and its limits, over real sockets
against a uvicorn subprocess on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.cleaning.signals import apply_signals
from feedback_pipeline.datasets.build import SFTPolicy, sft_records_by_split
from feedback_pipeline.ingestion.records import COLUMNS, SERVED_FIELDS
from feedback_pipeline.service.keys import create_key
from feedback_pipeline.service.openapi import FeedbackIn
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import Service, _start, _stop, call, service  # noqa: F401 (fixture)


def _ago(hours: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).isoformat()


def test_batch_reports_each_record_and_commits_the_valid_ones(service):
    records = [feedback(user_id="a"), feedback(query=""), feedback(user_id="b", rating=float("nan")) | {"rating": "x"},
               feedback(id="7d7c3f0e-1b1a-4c9f-9a57-8c1e3b2a4d10"), feedback(id="7d7c3f0e-1b1a-4c9f-9a57-8c1e3b2a4d10")]
    retry = {"Idempotency-Key": "batch-1"}
    status, body = service("POST", "/v1/feedback/batch", {"records": records}, key="writer", headers=retry)
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == ["inserted", "rejected", "rejected", "inserted", "rejected"]
    assert body["results"][1]["errors"][0]["field"] == "records[1].query"
    assert body["results"][2]["errors"][0]["field"] == "records[2].rating"
    assert body["results"][4]["errors"][0]["field"] == "records[4].id"
    assert body["counts"] == {"inserted": 2, "rejected": 3} and service.store.count() == 2
    # The retried batch lands on the same rows.
    again = service("POST", "/v1/feedback/batch", {"records": records}, key="writer", headers=retry)[1]
    assert again["counts"] == {"unchanged": 2, "rejected": 3} and service.store.count() == 2
    assert again["results"][0]["id"] == body["results"][0]["id"]
    # Another key may not overwrite rows it did not write.
    other = service("POST", "/v1/feedback/batch", {"records": [records[3]]}, key="writer2")[1]
    assert other["results"][0]["status"] == "rejected" and "another key" in other["results"][0]["errors"][0]["reason"]
    too_many = service("POST", "/v1/feedback/batch", {"records": [feedback()] * 1001}, key="writer")
    assert too_many[0] == 422 and too_many[1]["errors"][0]["field"] == "records"
    assert service("POST", "/v1/feedback/batch", [feedback()], key="writer")[0] == 422
    assert service("POST", "/v1/feedback/batch", {"records": []}, key="writer")[1]["counts"] == {}
    assert service.store.count() == 2


def test_list_filters_and_cursor_pagination(service):
    ids = []
    for i in range(7):
        record = feedback(created_at=_ago(10 - i), rating="up" if i % 2 else "down", user_id=f"u{i % 3}",
                          model_version="v2" if i >= 4 else "v1")
        ids.append(service("POST", "/v1/feedback", record, key="writer")[1]["id"])
    seen, cursor = [], None
    while True:
        status, page = service("GET", "/v1/feedback?limit=3" + (f"&cursor={cursor}" if cursor else ""), key="reader")
        assert status == 200 and len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, every row exactly once
    # A row added while paging does not shift later pages (keyset, not offset).
    first = service("GET", "/v1/feedback?limit=3", key="reader")[1]
    newest = service("POST", "/v1/feedback", feedback(), key="writer")[1]["id"]
    second = service("GET", f"/v1/feedback?limit=3&cursor={first['next_cursor']}", key="reader")[1]
    assert [i["id"] for i in second["items"]] == ids[::-1][3:6]

    def ids_of(query):
        return [i["id"] for i in service("GET", "/v1/feedback?" + query, key="reader")[1]["items"]]

    assert ids_of("rating=liked&model_version=v1") == [newest, ids[3], ids[1]]
    assert ids_of("user_id=u0&limit=10") == [ids[6], ids[3], ids[0]]
    since = urllib.parse.quote(_ago(8.5))
    until = urllib.parse.quote(_ago(6.5))
    assert ids_of(f"since={since}&until={until}") == [ids[3], ids[2]]
    for bad, field in (("cursor=abc", "cursor"), ("rating=great", "rating"), ("limit=0", "limit"),
                       ("user_id=%00", "user_id"), (f"since={until}&until={since}", "until")):
        status, body = service("GET", "/v1/feedback?" + bad, key="reader")
        assert status == 422 and body["errors"][0]["field"] == field, (bad, body)
    assert service("GET", "/v1/feedback", key="writer")[0] == 403


def test_patch_put_rerate_and_ownership(service):
    created = service("POST", "/v1/feedback", feedback(rating="up", comment=None), key="writer")[1]["id"]
    status, row = service("PATCH", f"/v1/feedback/{created}", {"rating": "down", "comment": "outdated steps"},
                          key="writer")
    assert status == 200, row
    assert (row["rating"], row["rating_thumb"], row["comment"], row["query"]) == (
        -1.0, -1, "outdated steps", feedback()["query"])
    assert row["updated_at"] > row["created_at"] and row["metadata"]["api_key_id"] == service.keys["writer"][0]
    status, row = service("PATCH", f"/v1/feedback/{created}", {"stars": 4}, key="writer")
    assert (row["rating_stars"], row["rating"], row["rating_scale"]) == (4, 0.5, "stars")
    status, row = service("PATCH", f"/v1/feedback/{created}", {"comment": "still wrong"}, key="writer")
    assert (row["rating_stars"], row["comment"]) == (4, "still wrong")  # untouched rating kept as it was
    assert service("PATCH", f"/v1/feedback/{created}", {"rating": "down"}, key="writer2")[0] == 403
    assert service("PATCH", f"/v1/feedback/{created}", {"rating": "down"}, key="admin")[0] == 200
    for body, field in (({"source": "x"}, "source"), ({"rating": 7}, "rating"), ({"query": ""}, "query"),
                        ({"id": "0b7f6f0e-3d55-4c1e-8a47-4f1f7a0c9d21"}, "id"), ({"colour": 1}, "colour")):
        status, error = service("PATCH", f"/v1/feedback/{created}", body, key="writer")
        assert status == 422 and error["errors"][0]["field"] == field, (body, error)
    status, row = service("PUT", f"/v1/feedback/{created}", {"query": "new q", "response": "new r", "rating": "up"},
                          key="writer")
    assert status == 200 and (row["query"], row["response"], row["comment"], row["user_id"]) == (
        "new q", "new r", None, None)
    assert service("PUT", f"/v1/feedback/{created}", {"response": "r"}, key="writer")[1]["errors"][0]["field"] == "query"
    missing = "0b7f6f0e-3d55-4c1e-8a47-4f1f7a0c9d21"
    assert service("PATCH", f"/v1/feedback/{missing}", {"rating": "up"}, key="writer")[0] == 404
    assert service.store.count() == 1


def test_openapi_documents_the_record_model():
    accepted = set(COLUMNS) - {"rating_thumb", "rating_raw", "rating_stars", "ingested_at", "source",
                               *SERVED_FIELDS} | {"stars"}
    assert set(FeedbackIn.model_fields) == accepted - {"source"} | ({"source"} & set(FeedbackIn.model_fields))


def _seed_for_export(store: FeedbackStore) -> None:
    from feedback_pipeline.ingestion.strict import validate_record

    rows = []
    for i in range(60):
        rows.append(validate_record(feedback(
            user_id=f"user{i % 12}", session_id=f"s{i}", query=f"question {i}: write to me at jane{i}@example.org",
            response=f"answer number {i}", rating="up" if i % 3 else "down", created_at=_ago(i),
            model_version="v1" if i < 40 else "v2"), source="test"))
    store.write(rows)


def test_export_is_the_sft_dataset_builder_output(service):
    _seed_for_export(service.store)
    status, _ = service("GET", "/v1/feedback/export", key="writer")
    assert status == 403
    request = urllib.request.Request(service.base + "/v1/feedback/export?model_version=v1",
                                     headers={"Authorization": f"Bearer {service.keys['reader'][1]}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.read().decode().splitlines()]
    frame = service.store.read_frame()
    frame = frame[frame["model_version"] == "v1"]
    _, by_split = sft_records_by_split(apply_signals(clean_feedback(frame).cleaned), SFTPolicy())
    expected = [{**r, "split": split} for split in ("train", "eval") for r in by_split[split]]
    assert lines == json.loads(json.dumps(expected)) and len(lines) == 26  # the liked v1 rows
    assert all("@example.org" not in json.dumps(line) for line in lines)
    assert {line["split"] for line in lines} == {"train", "eval"} and all(line["weight"] > 0 for line in lines)
    assert service("GET", "/v1/feedback/export?redact=false", key="reader")[0] == 403
    raw = urllib.request.Request(service.base + "/v1/feedback/export?redact=false",
                                 headers={"Authorization": f"Bearer {service.keys['admin'][1]}"})
    with urllib.request.urlopen(raw, timeout=30) as response:
        assert "@example.org" in response.read().decode()


def test_erasure_endpoint(service):
    for user in ("gone", "gone", "kept"):
        service("POST", "/v1/feedback", feedback(user_id=user), key="writer")
    assert service("DELETE", "/v1/users/gone/feedback", key="writer")[0] == 403
    status, erased = service("DELETE", "/v1/users/gone/feedback", key="admin")
    assert status == 200 and erased["user_id"] == "gone" and erased["deleted"] == 2
    assert service("DELETE", "/v1/users/gone/feedback", key="admin")[1]["deleted"] == 0
    assert service("DELETE", "/v1/users/%00/feedback", key="admin")[0] == 422
    assert service.store.read_frame()["user_id"].tolist() == ["kept"]


@pytest.fixture
def limited(tmp_path):
    url = f"sqlite:///{tmp_path / 'limited.db'}"
    store = FeedbackStore(url)
    store.migrate()
    keys = {name: create_key(store, name, "write,read") for name in ("a", "b")}
    proc, base = _start(url, tmp_path, env={"FEEDBACK_RATE_LIMIT_PER_MINUTE": "5", "FEEDBACK_READ_TIMEOUT_S": "1"})
    try:
        yield Service(base, store, keys)
    finally:
        _stop(proc)
        store.dispose()


def _raw_http(base: str, payload: bytes, trickle: bytes = b"", pause: float = 0.0) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        try:
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(pause)
        except OSError:  # the server closed the connection after answering
            pass
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_rate_limit_read_deadline_and_malformed_http(limited):
    statuses = [limited("POST", "/v1/feedback", feedback(), key="a")[0] for _ in range(7)]
    assert statuses[:5] == [201] * 5 and statuses[5:] == [429, 429]
    request = urllib.request.Request(limited.base + "/v1/feedback", data=json.dumps(feedback()).encode(),
                                     headers={"Authorization": f"Bearer {limited.keys['a'][1]}"}, method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("expected 429")
    except urllib.error.HTTPError as err:
        assert err.code == 429 and int(err.headers["Retry-After"]) >= 1
        assert err.headers.get("server") is None  # no version disclosure
    assert limited("POST", "/v1/feedback", feedback(), key="b")[0] == 201  # per key
    assert limited.store.count() == 6
    # A body trickled at 2 bytes/s is answered 408 after the 1 s deadline, not waited on.
    secret = limited.keys["b"][1].encode()
    head = (b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + secret + b"\r\nContent-Length: 60\r\n\r\n")
    started = time.monotonic()
    answer = _raw_http(limited.base, head, trickle=b'{"query": "q", "response": "r"}', pause=0.5)
    assert answer.startswith(b"HTTP/1.1 408") and b'"field":"body"' in answer.replace(b" ", b"")
    assert time.monotonic() - started < 8
    # A malformed Content-Length is answered (400), never a dropped connection.
    bad = _raw_http(limited.base, b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}")
    assert bad.startswith(b"HTTP/1.1 400")
    assert limited.store.count() == 6


def test_concurrent_writers_all_committed(service):
    from concurrent.futures import ThreadPoolExecutor

    def post(i):
        return service("POST", "/v1/feedback", feedback(user_id=f"c{i}"), key="writer")

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(post, range(320)))
    assert [s for s, _ in results] == [201] * 320
    assert service.store.count() == 320 == len({b["id"] for _, b in results})
    frame = service.store.read_frame()
    assert sorted(frame["user_id"]) == sorted(f"c{i}" for i in range(320))
    assert isinstance(frame, pd.DataFrame)
