"""A re-sent id with another query or response is a conflict (rejected and reported, never merged) through
``FeedbackStore.write``, the bulk import and the HTTP service, on SQLite and PostgreSQL; bad values written before
the door checked them never break ``raw_feedback`` -> ``cleaned_feedback``."""

import json
import math
from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from feedback_pipeline.defs.cleaning import cleaned_feedback
from feedback_pipeline.defs.ingestion import raw_feedback
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.ingestion.importers import import_records, read_jsonl
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.store.repository import CONFLICT_REASON
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import service  # noqa: F401  (the fixture)

ID = "0b9f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10"


def _row(**overrides) -> dict:
    return normalise_record(feedback(id=ID, **overrides), "test")


def test_write_rejects_a_known_id_with_other_text_and_keeps_the_stored_row(store):
    assert store.write([_row(created_at="2025-01-01T00:00:00Z")]).inserted == 1
    later = "2025-01-02T00:00:00Z"
    result = store.write([_row(query="Something else entirely?", rating="down", updated_at=later),
                          _row(response="Another answer.", rating="down", updated_at=later),
                          _row(rating="down", created_at="2025-01-01T00:00:00Z", updated_at=later)])
    assert (result.received, result.inserted, result.updated, result.conflicts, result.unchanged) == (3, 0, 1, 2, 0)
    assert result.conflict_positions == (0, 1)
    stored = store.read_frame().iloc[0]
    assert (stored["query"], stored["response"], stored["rating"]) == (feedback()["query"], feedback()["response"], -1.0)
    # Within one call: the first row of a new id defines it, a later one with other text is the conflict.
    other = "1c0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10"
    with store.engine.begin() as conn:
        _, outcomes = store.write_in(conn, [normalise_record(feedback(id=other), "t"),
                                            normalise_record(feedback(id=other, response="Different."), "t"),
                                            normalise_record(feedback(id=other), "t")])
    assert outcomes == ["inserted", "conflict", "unchanged"]
    assert store.count() == 2


def test_bulk_import_reports_conflicts_by_line(store, tmp_path):
    store.write([_row()])
    lines = [feedback(id=ID),  # the same record again: unchanged
             feedback(id=ID, response="A different answer."),  # conflict with the stored row
             feedback(id="2d0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", query="New?"),
             feedback(id="2d0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", query="Changed?"),  # conflict inside the chunk
             feedback(query="Stars as a boolean", stars=True),
             feedback(query="Latency as a boolean", latency_ms=True),
             feedback(query="Year 2999", created_at="2999-01-01T00:00:00Z")]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{\"query\": \"q\", \"response\": \"r\", "
                    "\"rating\": NaN}\n")
    report = import_records(store, read_jsonl(path), "jsonl", chunk_size=3)
    summary = report.summary()
    assert (summary["inserted"], summary["unchanged"], summary["conflicts"], summary["rejected"]) == (1, 1, 2, 6)
    by_line = {r["line"]: (r["field"], r["reason"]) for r in report.rejected}
    assert by_line[2] == by_line[4] == ("id", CONFLICT_REASON)
    assert {by_line[5][0], by_line[6][0], by_line[7][0], by_line[8][0]} == {"stars", "latency_ms", "created_at",
                                                                              "rating"}
    frame = store.read_frame()
    assert len(frame) == 2 and "A different answer." not in set(frame["response"]) and "Changed?" not in set(frame["query"])


def test_service_answers_409_and_rejects_batch_items_on_conflict(service):  # noqa: F811
    record = feedback(id=ID)
    assert service("POST", "/v1/feedback", record, key="writer")[0] == 201
    assert service("POST", "/v1/feedback", record, key="writer")[0] == 200  # a plain retry
    status, body = service("POST", "/v1/feedback", {**record, "response": "Changed answer."}, key="writer")
    assert status == 409 and body["errors"][0]["field"] == "id" and "conflict" in body["errors"][0]["reason"]
    other = "3e0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10"
    status, body = service("POST", "/v1/feedback/batch", {"records": [
        {**record, "query": "Changed question?"}, feedback(id=other)]}, key="writer")
    assert status == 200 and [r["status"] for r in body["results"]] == ["rejected", "inserted"]
    assert body["results"][0]["errors"] == [{"field": "records[0].id", "reason": CONFLICT_REASON}]
    assert body["counts"]["rejected"] == 1
    for bad in ({"stars": True}, {"rating_stars": True}, {"latency_ms": True}, {"message_index": False},
                {"created_at": "2999-01-01T00:00:00Z"}, {"created_at": "0001-01-01T00:00:00Z"}):
        status, body = service("POST", "/v1/feedback", feedback(**bad), key="writer")
        assert status == 422 and body["errors"][0]["field"] == next(iter(bad)), (bad, body)
    status, body = service("POST", "/v1/feedback", raw=b'{"query": "q", "response": "r", "rating": NaN}', key="writer")
    assert status == 422 and body["errors"][0]["field"] == "rating"
    stored = service.store.read_frame()
    assert len(stored) == 2 and set(stored["query"]) == {feedback()["query"]}


def _bad_rows(dialect: str) -> list[dict]:
    """Rows as an older release stored them: no window, infinity kept, NaN rating (SQLite only: PostgreSQL's
    check constraint on rating refuses NaN; SQLite stores it as NULL)."""
    good = [normalise_record(feedback(query=f"Question {i}?", user_id=f"u{i}", session_id=f"s{i}",
                                      created_at=f"2025-06-0{1 + i}T10:00:00Z"), "t") for i in range(3)]
    rows = [
        {**good[0], "id": "4f0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", "query": "From the year 2999?",
         "created_at": datetime(2999, 1, 1, tzinfo=timezone.utc), "updated_at": datetime(2999, 1, 1, tzinfo=timezone.utc)},
        {**good[0], "id": "5f0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", "query": "From the year 1?",
         "created_at": datetime(1, 1, 1, tzinfo=timezone.utc), "updated_at": datetime(1, 1, 1, tzinfo=timezone.utc)},
        {**good[0], "id": "6f0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", "query": "From 1990?",
         "created_at": datetime(1990, 1, 1, tzinfo=timezone.utc), "updated_at": datetime(1990, 1, 1, tzinfo=timezone.utc)},
        {**good[0], "id": "7f0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", "query": "Infinitely slow?", "latency_ms": math.inf},
        {**good[0], "id": "8f0f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10", "query": "Rated NaN?", "rating": math.nan,
         "rating_thumb": None},
    ]
    return good + rows[:-1] + (rows[-1:] if dialect == "sqlite" else [])


def test_bad_stored_values_never_break_raw_to_cleaned(store, tmp_path):
    rows = _bad_rows(store.dialect)
    store.write(rows)
    frame = store.read_frame()  # raised OutOfBoundsDatetime before
    assert len(frame) == len(rows) and frame["created_at"].isna().sum() == 2
    result = dg.materialize([raw_feedback, cleaned_feedback], resources={
        "feedback_store": FeedbackStoreResource(db_url=store.url), "workspace": WorkspaceResource(data_dir=str(tmp_path))})
    assert result.success
    cleaned = result.output_for_node("cleaned_feedback").read(store)  # a reference: the rows are in the table
    assert sorted(cleaned["query"]) == ["Question 0?", "Question 1?", "Question 2?"]
    # The rejected-rows report holds ids and reasons, never the text.
    rejected = pd.read_csv(tmp_path / "reports" / "rejected_feedback.csv")
    assert list(rejected.columns) == ["id", "partition_date", "reject_reason"]
    query_of = {row["id"]: row["query"] for row in rows}
    reasons = {query_of[i]: r for i, r in zip(rejected["id"], rejected["reject_reason"])}
    assert reasons["From the year 2999?"].startswith("created_at: missing or outside the readable range")
    assert reasons["From the year 1?"].startswith("created_at: missing or outside the readable range")
    assert reasons["From 1990?"].startswith("created_at: outside 2000-01-01")
    assert reasons["Infinitely slow?"] == "latency_ms: not a finite number (inf)"
    assert reasons.get("Rated NaN?", "rating: missing") == "rating: missing"
    assert len(rejected) == len(rows) - 3
