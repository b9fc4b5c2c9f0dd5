"""Validation of incoming records: every bad field is named with its reason."""

import pytest

from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record
from feedback_pipeline_tests.conftest import feedback


@pytest.mark.parametrize("overrides, field, reason", [
    ({"query": "  "}, "query", "non-empty"),
    ({"response": None}, "response", "non-empty"),
    ({"rating": 3}, "rating", "[-1, 1]"),
    ({"rating": "meh"}, "rating", "up/down"),
    ({"stars": 6}, "stars", "1 to 5"),
    ({"stars": 2.5}, "stars", "whole number"),
    ({"created_at": "yesterday"}, "created_at", "ISO-8601"),
    ({"id": "not-a-uuid"}, "id", "UUID"),
    ({"history": [{"role": "bot", "content": "x"}]}, "history[0]", "role"),
    ({"latency_ms": -5}, "latency_ms", "non-negative"),
    ({"message_index": 1.5}, "message_index", "whole number"),
    ({"metadata": "{broken"}, "metadata", "valid JSON"),
    ({"colour": "red"}, "colour", "unknown field"),
])
def test_bad_fields_are_named(overrides, field, reason):
    with pytest.raises(FeedbackValidationError) as err:
        normalise_record(feedback(**overrides), source="t")
    assert err.value.field == field and reason in err.value.reason


@pytest.mark.parametrize("given, rating, thumb", [
    ("up", 1.0, 1), ("down", -1.0, -1), (True, 1.0, 1), (False, -1.0, -1), (-1, -1.0, -1), ("0", 0.0, 0), (0.4, 0.4, 1),
])
def test_thumb_forms_normalise(given, rating, thumb):
    row = normalise_record(feedback(rating=given), source="t")
    assert (row["rating"], row["rating_thumb"], row["rating_raw"]) == (rating, thumb, str(given))


@pytest.mark.parametrize("stars, rating, thumb", [(1, -1.0, -1), (2, -0.5, -1), (3, 0.0, 0), (4, 0.5, 1), (5, 1.0, 1)])
def test_stars_map_onto_one_scale_and_keep_the_original(stars, rating, thumb):
    row = normalise_record(feedback(rating=None, stars=stars), source="t")
    assert (row["rating"], row["rating_thumb"], row["rating_stars"], row["rating_scale"]) == (rating, thumb, stars, "stars")


def test_ids_are_deterministic_without_an_id_and_kept_with_one():
    a, b = normalise_record(feedback(), "t"), normalise_record(feedback(), "t")
    assert a["id"] == b["id"]
    assert normalise_record(feedback(query="other"), "t")["id"] != a["id"]
    given = "0b9f6a52-1c4c-4f0e-9d55-0b0c2a1e9f10"
    assert normalise_record(feedback(id=given.upper()), "t")["id"] == given


@pytest.mark.parametrize("overrides, field, reason", [
    # Booleans are thumbs for ``rating`` only, never numbers.
    ({"rating": None, "stars": True}, "stars", "whole number"),
    ({"rating": None, "rating_stars": True}, "rating_stars", "whole number"),
    ({"latency_ms": True}, "latency_ms", "number"),
    ({"message_index": False}, "message_index", "whole number"),
    ({"prompt_tokens": True}, "prompt_tokens", "whole number"),
    # NaN and Infinity are rejected, never read as "no value".
    ({"rating": float("nan")}, "rating", "finite"),
    ({"rating": float("inf")}, "rating", "finite"),
    ({"rating": None, "stars": float("nan")}, "stars", "finite"),
    ({"latency_ms": float("inf")}, "latency_ms", "finite"),
    ({"latency_ms": 1e999}, "latency_ms", "finite"),
    ({"message_index": float("nan")}, "message_index", "finite"),
    ({"rating": "NaN"}, "rating", "[-1, 1]"),
    # Timestamps outside the documented window (2000-01-01 .. now + 1 day), also ones that overflow.
    ({"created_at": "2999-01-01T00:00:00Z"}, "created_at", "between 2000-01-01"),
    ({"created_at": "1999-12-31T23:59:59Z"}, "created_at", "between 2000-01-01"),
    ({"created_at": "0001-01-01T00:00:00+05:00"}, "created_at", "out of range"),
    ({"updated_at": "9999-12-31T23:59:59-05:00"}, "updated_at", "out of range"),
    ({"updated_at": "2100-01-01T00:00:00Z"}, "updated_at", "between 2000-01-01"),
    ({"created_at": True}, "created_at", "ISO-8601"),
])
def test_non_numbers_and_out_of_window_times_are_rejected_at_the_door(overrides, field, reason):
    with pytest.raises(FeedbackValidationError) as err:
        normalise_record(feedback(**overrides), source="t")
    assert err.value.field == field and reason in err.value.reason


def test_window_edges_and_a_thumb_as_boolean_are_accepted():
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 6, 30, 12, tzinfo=timezone.utc)
    row = normalise_record(feedback(created_at="2000-01-01T00:00:00Z", rating=True), "t", now=now)
    assert row["created_at"] == datetime(2000, 1, 1, tzinfo=timezone.utc) and row["rating"] == 1.0
    almost = (now + timedelta(hours=23)).isoformat()
    assert normalise_record(feedback(created_at=almost), "t", now=now)["created_at"] == now + timedelta(hours=23)
    with pytest.raises(FeedbackValidationError, match="between 2000-01-01"):
        normalise_record(feedback(created_at=(now + timedelta(days=2)).isoformat()), "t", now=now)
