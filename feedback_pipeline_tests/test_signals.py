import json

import pandas as pd
import pytest

from feedback_pipeline.cleaning.signals import apply_signals, garbage_kind, spam_signals
from feedback_pipeline_tests.conftest import OASST1

T0 = pd.Timestamp("2024-05-06 09:00", tz="UTC")
COLUMNS = ["id", "created_at", "user_id", "session_id", "query", "response", "comment", "rating", "label"]


def rows(user, n, seconds_apart, *, start=0, session=None, ratings=(1.0, -1.0), comment=None, query="How do I boil an egg?"):
    """``n`` feedback rows from one user, ``seconds_apart`` apart, ratings cycling through ``ratings``."""
    return [
        {"created_at": T0 + pd.Timedelta(seconds=start + i * seconds_apart), "user_id": user, "session_id": session,
         "query": query, "response": f"Put the egg in boiling water for {i + 5} minutes, then cool it.",
         "comment": comment, "rating": ratings[i % len(ratings)]}
        for i in range(n)
    ]


def frame(records):
    df = pd.DataFrame(records)
    df["id"] = [f"r{i}" for i in range(len(df))]
    df["label"] = df["rating"].map(lambda r: "liked" if r > 0 else "disliked")
    return df[COLUMNS]


def reasons_of(df, user):
    return set(spam_signals(df)[df["user_id"] == user])


def test_user_burst_flags_every_row_of_the_burst_and_nothing_at_the_limit():
    df = frame(rows("bot", 25, 2) + rows("fast-human", 20, 2.9, start=1000) + rows("calm", 30, 60, start=5000))
    assert reasons_of(df, "bot") == {"burst: user"}  # ratings alternate, so no rating flood on top
    assert reasons_of(df, "fast-human") == {""}  # exactly burst_max in the minute is allowed
    assert reasons_of(df, "calm") == {""}


def test_session_burst_across_users():
    records = [r for i in range(21) for r in rows(f"u{i}", 1, 1, start=i, session="shared")]
    records += [r for i in range(5) for r in rows(f"v{i}", 1, 1, start=i, session="quiet")]
    reasons = spam_signals(frame(records))
    assert list(reasons[:21]) == ["burst: session"] * 21
    assert set(reasons[21:]) == {""}


def test_repeated_comment_needs_many_users_and_a_real_sentence():
    spam = "Great answer, visit my site for more tips!"
    records = [r for i in range(5) for r in rows(f"s{i}", 1, 1, start=600 * i, comment=spam.upper() if i else spam)]
    records += [r for i in range(4) for r in rows(f"f{i}", 1, 1, start=600 * i, comment="This is wrong, the egg explodes")]
    records += [r for i in range(12) for r in rows(f"g{i}", 1, 1, start=600 * i, comment="good")]
    df = frame(records)
    reasons = spam_signals(df)
    assert list(reasons[:5]) == ["repeated comment"] * 5  # case is ignored
    assert set(reasons[5:]) == {""}


@pytest.mark.parametrize("text,kind", [
    ("", "empty"), ("   \n", "empty"), (None, "empty"), ("?!?! ...", "no letters"), ("zzzzzzzz", "repeated character"),
    ("k", "repeated character"), ("asdfasdf", "keyboard mash"), ("sdfsdfsdfsdf", "keyboard mash"),
    ("qwerty hjkl", "keyboard mash"), ("xkcdqwrtplm", "keyboard mash"),
])
def test_garbage_kinds(text, kind):
    assert garbage_kind(text) == kind


@pytest.mark.parametrize("text", [
    "Property tax in Texas?", "What rhythms does liberty have?", "42", "x = 3.14", "Use the qwerty keyboard layout.",
    "Strengths and weaknesses of Rust", "ok",
])
def test_not_garbage(text):
    assert garbage_kind(text) is None


def test_garbage_reason_names_the_column():
    records = rows("a", 1, 1) + rows("b", 1, 1, start=100, query="asdfgh") + rows("c", 1, 1, start=200)
    records[2]["response"] = "......"
    assert list(spam_signals(frame(records))) == ["", "garbage query: keyboard mash", "garbage response: repeated character"]


def test_rating_flood_needs_identical_uncommented_ratings_close_together():
    flood = rows("clicker", 12, 30, ratings=(1.0,))  # 12 likes in 6 minutes
    mixed = rows("mixed", 12, 30, start=10_000)  # alternating likes and dislikes
    commented = rows("reader", 12, 30, start=20_000, ratings=(1.0,))
    commented[6]["comment"] = "Clear steps, thanks"  # a comment breaks the run: 6 + 5 uncommented
    slow = rows("slow", 30, 300, start=30_000, ratings=(-1.0,))  # one dislike per 5 minutes
    df = frame(flood + mixed + commented + slow)
    assert reasons_of(df, "clicker") == {"rating flood"}
    for user in ("mixed", "reader", "slow"):
        assert reasons_of(df, user) == {""}, user


def test_reasons_combine_and_apply_signals_marks_training_exclusion():
    df = frame(rows("bot", 25, 2, ratings=(-1.0,), query="asdf"))
    out = apply_signals(df)
    assert set(out["spam_reason"]) == {"burst: user; garbage query: keyboard mash; rating flood"}
    assert out["exclude_from_training"].all() and out["exclude_from_training"].dtype == bool
    assert "spam_reason" not in df  # the input is not changed


def real_assistant_rows(limit):
    messages = [json.loads(line) for line in OASST1.read_text(encoding="utf-8").splitlines()]
    by_id = {m["message_id"]: m for m in messages}
    out = []
    for m in messages:
        parent = by_id.get(m["parent_id"])
        if m["role"] == "assistant" and parent is not None and parent["role"] == "prompter":
            votes = dict(zip(m["emojis"]["name"], m["emojis"]["count"])) if m.get("emojis") else {}
            out.append({"created_at": pd.Timestamp(m["created_date"]), "user_id": m["user_id"],
                        "session_id": m["message_tree_id"], "query": parent["text"], "response": m["text"],
                        "comment": None, "rating": 1.0 if votes.get("+1", 0) >= votes.get("-1", 0) else -1.0})
    return frame(out[:limit])


def test_real_oasst1_replies_are_not_flagged():
    df = real_assistant_rows(300)
    out = apply_signals(df)
    assert len(df) == 300
    assert not out["exclude_from_training"].any(), out.loc[out["exclude_from_training"], ["response", "spam_reason"]]


def test_bulk_import_without_timestamps_is_not_a_burst():
    """Records sent without created_at carry their ingestion time: one import is not one user's burst."""
    now = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame({"id": [str(i) for i in range(50)], "user_id": ["rater0"] * 50, "session_id": [f"s{i}" for i in range(50)],
                          "created_at": [now] * 50, "ingested_at": [now] * 50, "rating": [1.0] * 50,
                          "query": ["How long does the virus live on surfaces?"] * 50,
                          "response": ["It can survive up to 72 hours on plastic."] * 50, "comment": [None] * 50})
    assert (spam_signals(frame) == "").all()
    timed = frame.assign(created_at=[now - pd.Timedelta(seconds=i + 1) for i in range(50)])
    assert spam_signals(timed).str.contains("burst: user").all()
