"""The data plane: feedback stays in the store. Chunked cleaning gives exactly ``clean_feedback`` + ``apply_signals``;
the table assets hand over a TableRef (nothing pickled); reports group in SQL; samples are stable and bounded."""

import itertools
import uuid
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pandas as pd
import pytest

from feedback_pipeline.cleaning.clean import clean_feedback
from feedback_pipeline.cleaning.signals import apply_signals
from feedback_pipeline.cleaning.windowed import clean_window
from feedback_pipeline.defs.cleaning import cleaned_feedback
from feedback_pipeline.defs.ingestion import raw_feedback
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.ingestion.importers import import_records, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.store.cleaned import analysis_sample, cleaned_chunks, label_counts, read_cleaned, read_rejected
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline_tests.conftest import OASST1, feedback

T0 = datetime(2025, 3, 3, 9, tzinfo=timezone.utc)
NOW = datetime(2025, 3, 10, tzinfo=timezone.utc)


def _row(i: int, **overrides) -> dict:
    record = feedback(id=str(uuid.UUID(int=i)), created_at=(T0 + timedelta(seconds=37 * i)).isoformat(), **overrides)
    return normalise_record(record, "t", now=NOW)


def tricky_rows() -> list[dict]:
    """Rows that exercise every cross-row rule across chunk boundaries: re-ratings, duplicates across users,
    whitespace-only differences, anonymous rows, bursts, floods, repeated comments, garbage, PII, rejects."""
    rows = []
    n = itertools.count(1)
    # A user re-rating one answer three times (the latest updated_at wins), the same answer from two other users.
    for k, rating in enumerate(["up", "down", "up"]):
        rows.append(_row(next(n), user_id="rerater", rating=rating, query="Reset my password?",
                         response="Open  Settings.", updated_at=(T0 + timedelta(hours=k + 1)).isoformat()))
    rows += [_row(next(n), user_id=u, query="Reset my password?  ", response="Open Settings.") for u in ("a", "b")]
    # No user and no session: every row is its own rater. A session without a user.
    rows += [_row(next(n), user_id=None, session_id=None, query="Anon?", response="Yes.") for _ in range(2)]
    rows += [_row(next(n), user_id=None, session_id="sess-x", query="Session?", response="Yes.") for _ in range(2)]
    # A burst: 25 ratings from one user inside a minute (alternating, so no flood on top).
    start = next(n)
    rows += [normalise_record(feedback(id=str(uuid.UUID(int=start * 1000 + j)), user_id="bot", session_id=f"b{j}",
                                       query=f"Egg {j}?", response=f"Boil it {j} minutes.", rating="up" if j % 2 else "down",
                                       created_at=(T0 + timedelta(hours=5, seconds=2 * j)).isoformat()), "t", now=NOW)
             for j in range(25)]
    # A flood: 12 identical uncommented ratings in ten minutes; a commented row breaks another user's run.
    start = next(n)
    rows += [normalise_record(feedback(id=str(uuid.UUID(int=start * 1000 + j)), user_id="clicker", session_id=f"c{j}",
                                       query=f"Tea {j}?", response=f"Steep {j} minutes.", rating="up",
                                       created_at=(T0 + timedelta(hours=6, seconds=40 * j)).isoformat()), "t", now=NOW)
             for j in range(12)]
    start = next(n)
    rows += [normalise_record(feedback(id=str(uuid.UUID(int=start * 1000 + j)), user_id="reader", session_id=f"r{j}",
                                       query=f"Rice {j}?", response=f"Cook {j} minutes.", rating="up",
                                       comment="fine" if j == 6 else None,
                                       created_at=(T0 + timedelta(hours=7, seconds=40 * j)).isoformat()), "t", now=NOW)
             for j in range(12)]
    # One long comment from five users (case and spacing differ); another from four.
    spam = "Great answer, visit my site for more tips!"
    rows += [_row(next(n), user_id=f"s{k}", comment=spam.upper() if k else spam.replace(" ", "  "),
                  query=f"Spam {k}?") for k in range(5)]
    rows += [_row(next(n), user_id=f"f{k}", comment="This is wrong, the egg explodes", query=f"F {k}?") for k in range(4)]
    # Garbage, PII, and rows cleaning rejects (no rating; an empty response after normalisation).
    rows += [_row(next(n), query="asdfasdf qwerty", response="sdfsdfsdfsdf"),
             _row(next(n), query="Mail me at jane.doe@example.com or +44 20 7946 0958", response="Sure, Jane."),
             _row(next(n), rating=None), _row(next(n), response="\u200b\u200b ok")]
    rows[-1]["response"] = "\u200b\u200b"
    # Rows sent without their own time (created_at = ingested_at): kept out of bursts.
    rows += [normalise_record(feedback(id=str(uuid.UUID(int=900_000 + j)), user_id="importer", query=f"Old {j}?",
                                       session_id=f"i{j}"), "t", now=T0 + timedelta(hours=8)) for j in range(25)]
    return rows


def _compare(store) -> None:
    frame = store.read_frame()
    old = clean_feedback(frame)
    expected = apply_signals(old.cleaned)
    done = clean_window(store, None, None, chunk_size=7)
    got = read_cleaned(store)
    assert done.written == len(got) == len(expected)
    columns = [c for c in got.columns if c not in ("cleaned_at", "partition_date", "sample_key")]
    want = expected.assign(spam_reason=expected["spam_reason"].replace("", None))[columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[columns].reset_index(drop=True), want, check_dtype=False)
    stats = {k: v for k, v in done.stats.items() if k != "spam_flagged"}
    assert stats == old.stats and done.stats["spam_flagged"] == int(expected["exclude_from_training"].sum())
    rejected = read_rejected(store).set_index("id")["reject_reason"].sort_index()
    assert rejected.to_dict() == old.rejected.set_index("id")["reject_reason"].sort_index().to_dict()


def test_chunked_cleaning_equals_the_whole_frame_cleaning_on_tricky_rows(store):
    store.write(tricky_rows())
    _compare(store)
    cleaned = read_cleaned(store)
    reasons = dict(zip(cleaned["user_id"], cleaned["spam_reason"]))
    assert reasons["bot"] == "burst: user" and reasons["clicker"] == "rating flood" and reasons["s1"] == "repeated comment"
    assert reasons.get("importer") is None and reasons.get("f1") is None and reasons.get("reader") is None
    assert (cleaned["user_id"] == "rerater").sum() == 1 and cleaned.set_index("user_id").loc["a", "duplicate_count"] == 3
    assert not cleaned["query"].str.contains("jane.doe@example.com").any()


def test_chunked_cleaning_equals_the_whole_frame_cleaning_on_oasst1(store):
    import_records(store, itertools.islice(read_oasst1(OASST1), 300), "oasst1")
    _compare(store)


def test_table_assets_hand_over_references_and_pickle_nothing(store, tmp_path):
    store.write(tricky_rows())
    instance = dg.DagsterInstance.ephemeral(tempdir=str(tmp_path / "dagster_home"))
    result = dg.materialize([raw_feedback, cleaned_feedback], instance=instance, resources={
        "feedback_store": FeedbackStoreResource(db_url=store.url), "workspace": WorkspaceResource(data_dir=str(tmp_path))})
    assert result.success
    raw, cleaned = result.output_for_node("raw_feedback"), result.output_for_node("cleaned_feedback")
    assert isinstance(raw, TableRef) and raw.table == "feedback" and raw.rows == len(tricky_rows())
    assert isinstance(cleaned, TableRef) and cleaned.rows == len(read_cleaned(store)) and len(cleaned.fingerprint) == 64
    # The rejected-rows report holds ids and reasons, never the text.
    report = pd.read_csv(cleaned.files[0])
    assert list(report.columns) == ["id", "partition_date", "reject_reason"] and len(report) == 2
    storage = tmp_path / "dagster_home" / "storage"
    assert not storage.exists() or not any(p.is_file() for p in storage.rglob("*"))
    # The same input, rebuilt, has the same fingerprint; a re-rating changes it.
    again = dg.materialize([raw_feedback, cleaned_feedback], instance=instance, resources={
        "feedback_store": FeedbackStoreResource(db_url=store.url), "workspace": WorkspaceResource(data_dir=str(tmp_path))})
    assert again.output_for_node("cleaned_feedback").fingerprint == cleaned.fingerprint
    store.write([{**tricky_rows()[0], "rating": -1.0, "rating_thumb": -1, "rating_raw": "down",
                  "updated_at": NOW}])
    third = dg.materialize([raw_feedback, cleaned_feedback], instance=instance, resources={
        "feedback_store": FeedbackStoreResource(db_url=store.url), "workspace": WorkspaceResource(data_dir=str(tmp_path))})
    assert third.output_for_node("raw_feedback").fingerprint != raw.fingerprint
    assert third.output_for_node("cleaned_feedback").fingerprint != cleaned.fingerprint


def test_label_counts_equal_pandas_group_bys(store):
    store.write(tricky_rows())
    clean_window(store, None, None)
    frame = read_cleaned(store)
    overall, per = label_counts(store, None, None, ["model_name", "subject", "user_id"])
    assert overall.groupby("label")["n"].sum().to_dict() == frame["label"].value_counts().to_dict()
    by_user = per["user_id"].fillna("-").groupby(["value", "label"])["n"].sum()
    expected = frame.fillna({"user_id": "-"}).groupby(["user_id", "label"]).size()
    assert by_user.to_dict() == expected.to_dict()
    assert set(per["subject"]["value"].map(lambda v: v if isinstance(v, str) else None)) == {None}


def test_sample_is_the_smallest_hashes_and_stable(store):
    store.write(tricky_rows())
    clean_window(store, None, None)
    everything = read_cleaned(store)
    sample = analysis_sample(store, None, None, cap=10)
    assert len(sample) == 10 and sample.equals(analysis_sample(store, None, None, cap=10))
    from feedback_pipeline.analysis.patterns import embedding_sample

    assert set(sample["id"]) == set(embedding_sample(everything, 10)["id"])
    assert analysis_sample(store, None, None, cap=None).shape[0] == len(everything)


def test_cleaned_chunks_stream_a_window_in_order(store):
    store.write(tricky_rows())
    clean_window(store, None, None)
    chunks = list(cleaned_chunks(store, date(2025, 3, 3), date(2025, 3, 4), ["id", "label"], chunk_size=9))
    assert all(len(c) <= 9 for c in chunks) and len(chunks) > 3
    streamed = pd.concat(chunks, ignore_index=True)
    assert streamed["id"].tolist() == read_cleaned(store, date(2025, 3, 3), date(2025, 3, 4))["id"].tolist()


@pytest.mark.parametrize("workers", [2])
def test_cleaning_in_worker_processes_gives_the_same_rows(store, workers):
    store.write(tricky_rows())
    clean_window(store, None, None, chunk_size=11)
    one = read_cleaned(store).drop(columns=["cleaned_at"])
    clean_window(store, None, None, chunk_size=11, workers=workers)
    pd.testing.assert_frame_equal(read_cleaned(store).drop(columns=["cleaned_at"]), one)


def test_quality_report_from_sql_group_bys_equals_the_frame_report(store):
    from feedback_pipeline.analysis.drift import detect_drops, detect_drops_from_counts, period_counts
    from feedback_pipeline.analysis.plots import like_rate_over_time, like_rate_over_time_from_counts, period_frame
    from feedback_pipeline.analysis.quality import (DEFAULT_SEGMENTS, quality_report, quality_report_from_counts,
                                                    report_markdown, segment_counts)

    rows = tricky_rows()
    for k, row in enumerate(rows):  # spread over five weeks and several segments, some blank
        row["created_at"] = row["created_at"] - timedelta(days=k % 35)
        row["updated_at"] = max(row["updated_at"], row["created_at"])
        row["intent"] = ["billing", " billing", "", None, "login"][k % 5]
        row["model_name"] = ["chat", "chat-2"][k % 2]
    store.write(rows)
    clean_window(store, None, None)
    frame = read_cleaned(store)
    overall, per = label_counts(store, None, None, DEFAULT_SEGMENTS)
    from_counts = quality_report_from_counts(overall, per, min_count=3)
    from_rows = quality_report(frame, min_count=3)
    assert report_markdown(from_counts) == report_markdown(from_rows)
    for column in DEFAULT_SEGMENTS:
        pd.testing.assert_frame_equal(from_counts.tables[column], from_rows.tables[column], check_dtype=False)
        pd.testing.assert_frame_equal(detect_drops_from_counts(period_counts(segment_counts(per[column])), min_count=3),
                                      detect_drops(frame, column, min_count=3), check_dtype=False)
    for freq in ("D", "W"):
        assert like_rate_over_time_from_counts(period_frame(segment_counts(per["model_name"]), freq), freq=freq) \
            == like_rate_over_time(frame, freq=freq)


def test_rated_since_can_stop_counting(store):
    store.write(tricky_rows())
    total, newest = store.rated_since(None)
    assert total > 10 and store.rated_since(None, at_most=10) == (10, newest)
    assert store.rated_since(newest, at_most=10) == (0, None)


def test_memoised_redaction_equals_the_redactor():
    from feedback_pipeline.cleaning import pii
    from feedback_pipeline.cleaning.clean import REDACTED_COLUMNS, redact_with_counts

    rows = list(itertools.islice(read_oasst1(OASST1), 150)) + [
        {"query": "Mail jane.doe@example.com", "response": "Call +44 20 7946 0958", "history": [
            {"role": "assistant", "content": "Write to support@example.com or jane.doe@example.com"}]}]
    for _ in range(2):  # the second pass is served by the memo
        for row in rows:
            for name in REDACTED_COLUMNS:
                if name in row:
                    assert redact_with_counts(row[name], name) == pii.redact_with_counts(row[name], name)
