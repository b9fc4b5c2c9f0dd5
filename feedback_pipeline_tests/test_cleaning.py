"""clean_feedback: normalisation, rejection reasons, re-rating de-duplication, redaction, labels, purity."""

import copy

import numpy as np
import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback, normalise_line, normalise_multiline


def ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def record(n: int, **overrides) -> dict:
    row = {
        "id": f"00000000-0000-4000-8000-{n:012d}", "created_at": ts("2024-03-01"), "updated_at": ts("2024-03-01"),
        "ingested_at": ts("2024-03-02"), "user_id": f"user-{n}", "session_id": f"session-{n}", "message_index": 0,
        "query": f"question {n}?", "history": [], "response": f"answer {n}.", "model_name": "chat",
        "model_version": "1", "intent": None, "project": "demo", "subject": None, "rating": 1.0, "rating_thumb": 1,
        "rating_stars": None, "rating_raw": "up", "rating_scale": "thumbs", "comment": None, "tools_called": [],
        "retrieved_context": [], "latency_ms": 120.0, "prompt_tokens": 10, "completion_tokens": 20,
        "source": "test", "metadata": {},
    }
    row.update(overrides)
    return row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


# --- normalisation -------------------------------------------------------------------------------------------

def test_normalise_line_collapses_all_whitespace_and_composes_unicode():
    assert normalise_line("  Cafe\u0301\u00a0 is\t\tnice\n\nreally \u200b ") == "Café is nice really"
    assert normalise_line(None) is None


def test_normalise_multiline_keeps_newlines_indentation_and_code():
    text = "Steps:\r\n\r\n\r\n\r\n  -  first   step\n```python\ndef f():\n    x  =  1   \n```\n\n"
    assert normalise_multiline(text) == "Steps:\n\n  - first step\n```python\ndef f():\n    x  =  1\n```"


def test_texts_are_normalised_in_the_cleaned_frame():
    result = clean_feedback(frame(record(1, query="  What\tis   X? ", response="Line one.  \n\n\n\nLine\u00a0two.",
                                         comment="good\n answer")))
    row = result.cleaned.iloc[0]
    assert (row["query"], row["response"], row["comment"]) == ("What is X?", "Line one.\n\nLine two.", "good answer")


# --- validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, reason", [
    ({"response": "   \n "}, "response: empty"),
    ({"response": None}, "response: missing"),
    ({"query": ""}, "query: empty"),
    ({"rating": np.nan}, "rating: missing"),
    ({"rating": None}, "rating: missing"),
    ({"rating": 1.5}, "rating: out of range [-1, 1] (1.5)"),
    ({"rating": "great"}, "rating: not a number ('great')"),
    ({"query": " ", "rating": -2.0}, "query: empty; rating: out of range [-1, 1] (-2)"),
])
def test_rejection_reason_names_the_field(overrides, reason):
    result = clean_feedback(frame(record(1), record(2, **overrides)))
    assert list(result.rejected["reject_reason"]) == [reason]
    assert list(result.rejected["id"]) == [record(2)["id"]]
    assert list(result.cleaned["id"]) == [record(1)["id"]]
    assert result.stats["rows_rejected"] == 1 and result.stats["rows_out"] == 1


def test_rejected_rows_are_redacted_too():
    result = clean_feedback(frame(record(1, query="mail me at ann@example.com", rating=None)))
    assert result.rejected.loc[0, "query"] == "mail me at [EMAIL]"


# --- de-duplication ------------------------------------------------------------------------------------------

def test_same_user_rerating_keeps_the_latest_by_updated_at():
    first = record(1, user_id="u1", query="Q", response="R", rating=1.0, updated_at=ts("2024-03-01"))
    latest = record(2, user_id="u1", query="Q ", response="R", rating=-1.0, updated_at=ts("2024-03-05"))
    middle = record(3, user_id="u1", query="Q", response="R", rating=0.0, updated_at=ts("2024-03-03"))
    result = clean_feedback(frame(first, latest, middle))
    assert list(result.cleaned["id"]) == [latest["id"]]
    assert result.cleaned.loc[0, "label"] == "disliked"
    assert result.stats["duplicates_removed"] == 2 and result.stats["rows_out"] == 1


def test_different_users_are_kept_with_duplicate_count():
    rows = [record(i, user_id=f"u{i}", query="How do I reset?", response="Click reset.") for i in (1, 2, 3)]
    other = record(4, user_id="u1", query="Other?", response="Other.")
    result = clean_feedback(frame(*rows, other))
    assert list(result.cleaned["id"]) == [r["id"] for r in rows] + [other["id"]]
    assert list(result.cleaned["duplicate_count"]) == [3, 3, 3, 1]
    assert result.stats["duplicates_removed"] == 0


def test_same_user_different_response_is_not_a_duplicate():
    a = record(1, user_id="u1", query="Q", response="R1")
    b = record(2, user_id="u1", query="Q", response="R2")
    assert len(clean_feedback(frame(a, b)).cleaned) == 2


def test_rows_without_user_fall_back_to_session_and_anonymous_rows_are_never_merged():
    a = record(1, user_id=None, session_id="s", query="Q", response="R", updated_at=ts("2024-03-01"))
    b = record(2, user_id=None, session_id="s", query="Q", response="R", updated_at=ts("2024-03-02"))
    c = record(3, user_id=None, session_id=None, query="Q", response="R")
    d = record(4, user_id=None, session_id=None, query="Q", response="R")
    result = clean_feedback(frame(a, b, c, d))
    assert list(result.cleaned["id"]) == [b["id"], c["id"], d["id"]]


# --- redaction -----------------------------------------------------------------------------------------------

def test_pii_is_redacted_everywhere_including_history_and_retrieved_context():
    row = record(
        1, query="I'm at 10.0.0.7, call +44 20 7946 0958", response="Email jane.doe@example.com.",
        comment="my card 4111 1111 1111 1111 was charged",
        history=[{"role": "user", "content": "I am @jlee"}, {"role": "assistant", "content": "Hi!"}],
        retrieved_context=[{"doc_id": "kb-1", "text": "Pay to DE89 3704 0044 0532 0130 00", "score": 0.8}],
    )
    result = clean_feedback(frame(row))
    out = result.cleaned.iloc[0]
    assert out["query"] == "I'm at [IP], call [PHONE]"
    assert out["response"] == "Email [EMAIL]."
    assert out["comment"] == "my card [CARD] was charged"
    assert out["history"] == [{"role": "user", "content": "I am [HANDLE]"}, {"role": "assistant", "content": "Hi!"}]
    assert out["retrieved_context"] == [{"doc_id": "kb-1", "text": "Pay to [IBAN]", "score": 0.8}]
    assert out["pii_redacted"] == 6
    assert result.stats["pii_redactions"] == {"credit_card": 1, "email": 1, "handle": 1, "iban": 1, "ip": 1, "phone": 1}


def test_dedup_happens_before_redaction():
    a = record(1, user_id="u1", query="my email is a@example.com", response="R")
    b = record(2, user_id="u1", query="my email is b@example.com", response="R")
    result = clean_feedback(frame(a, b))
    assert len(result.cleaned) == 2 and list(result.cleaned["duplicate_count"]) == [1, 1]


# --- labels, stats, purity -----------------------------------------------------------------------------------

def test_labels_and_columns():
    result = clean_feedback(frame(record(1, rating=0.5), record(2, rating=-0.25), record(3, rating=0.0)))
    assert list(result.cleaned["label"]) == ["liked", "disliked", "neutral"]
    assert {"duplicate_count", "label", "pii_redacted"} <= set(result.cleaned.columns)
    assert result.stats == {"rows_in": 3, "rows_rejected": 0, "duplicates_removed": 0, "rows_out": 3,
                            "pii_redactions": {}, "rejected_by_field": {}}


def test_input_is_not_mutated_and_output_is_deterministic():
    rows = [record(1, query="  call 555-123-4567 ", history=[{"role": "user", "content": "me@x.org"}],
                   retrieved_context=[{"text": "10.0.0.1"}]),
            record(2, rating=None)]
    df = frame(*rows)
    before = frame(*copy.deepcopy(rows))
    first, second = clean_feedback(df), clean_feedback(df)
    pd.testing.assert_frame_equal(df, before)
    assert df.loc[0, "history"] == [{"role": "user", "content": "me@x.org"}]
    assert df.loc[0, "retrieved_context"] == [{"text": "10.0.0.1"}]
    pd.testing.assert_frame_equal(first.cleaned, second.cleaned)
    pd.testing.assert_frame_equal(first.rejected, second.rejected)


def test_a_non_unique_index_is_handled():
    df = frame(record(1, user_id="u"), record(2, user_id="u", query="question 1?", response="answer 1.",
                                               updated_at=ts("2024-03-09")), record(3))
    df.index = [7, 7, 7]
    result = clean_feedback(df)
    assert list(result.cleaned["id"]) == [record(2)["id"], record(3)["id"]]


def test_empty_frame_and_missing_columns():
    empty = clean_feedback(frame(record(1)).iloc[:0])
    assert empty.cleaned.empty and empty.rejected.empty and empty.stats["rows_in"] == 0
    assert "reject_reason" in empty.rejected.columns
    with pytest.raises(ValueError, match="rating"):
        clean_feedback(frame(record(1)).drop(columns=["rating"]))
