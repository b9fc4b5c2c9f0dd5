"""Importers on the real public feedback sets and our JSONL/CSV format (the HTTP capture service has its own
tests: test_service*.py)."""

import json

import pytest

from feedback_pipeline.ingestion.importers import import_records, read_csv, read_feedbackqa, read_jsonl, read_oasst1
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA, feedback


def test_oasst1_import_maps_votes_history_and_is_idempotent(store):
    first = import_records(store, read_oasst1(OASST1), "oasst1")
    again = import_records(store, read_oasst1(OASST1), "oasst1")
    assert first.summary()["inserted"] > 1000 and not first.rejected
    assert again.summary()["inserted"] == 0 and again.summary()["unchanged"] == first.summary()["read"]
    frame = store.read_frame()
    raw = [json.loads(line) for line in OASST1.open()]
    # Independent count of replies with net positive votes, straight from the file.
    def net(m):
        votes = dict(zip((m.get("emojis") or {}).get("name", []), (m.get("emojis") or {}).get("count", [])))
        return votes.get("+1", 0) - votes.get("-1", 0)
    by_id = {m["message_id"]: m for m in raw}
    replies = [m for m in raw if m["role"] == "assistant" and not m["deleted"] and by_id.get(m["parent_id"], {}).get("role") == "prompter"]
    assert len(frame) == len(replies)
    assert (frame["rating_thumb"] == 1).sum() == sum(net(m) > 0 for m in replies)
    assert (frame["rating_thumb"] == -1).sum() == sum(net(m) < 0 for m in replies)
    deep = frame[frame["message_index"] >= 3].iloc[0]
    assert len(deep["history"]) == deep["message_index"] - 1
    assert deep["history"][0]["role"] == "user" and deep["history"][-1]["role"] == "assistant"
    parent = by_id[by_id[deep["id"]]["parent_id"]]
    assert deep["query"] == parent["text"] and deep["session_id"] == parent["message_tree_id"]


def test_feedbackqa_import_keeps_each_rater(tmp_path, store):
    report = import_records(store, read_feedbackqa(SHARED_DATA / "feedbackqa-dev"), "feedbackqa")
    frame = store.read_frame()
    assert len(frame) == report.summary()["inserted"] > 3000
    assert set(frame["subject"]) == {"Australia", "CDC", "UK", "WHO"}
    per_item = frame.groupby("session_id").size()
    assert per_item.min() >= 2  # 2-3 raters per rated answer, each a row
    assert frame["comment"].notna().all() and frame["retrieved_context"].map(len).eq(1).all()


def test_jsonl_and_csv_report_bad_lines_by_number(tmp_path, store):
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text("\n".join([json.dumps(feedback()), "{not json", json.dumps(feedback(query="")),
                                json.dumps(feedback(query="q2", stars=5, rating=None))]) + "\n")
    report = import_records(store, read_jsonl(jsonl), "jsonl")
    assert report.summary()["inserted"] == 2
    assert [(r["line"], r["field"]) for r in report.rejected] == [(2, "line"), (3, "query")]
    csv_file = tmp_path / "f.csv"
    csv_file.write_text('query,response,rating,history,subject\n'
                        'Hi,Hello there,down,"[{""role"": ""user"", ""content"": ""x""}]",billing\n'
                        'Hi,,up,,\n')
    report = import_records(store, read_csv(csv_file), "csv")
    assert report.summary()["inserted"] == 1 and report.rejected[0]["field"] == "response"
    row = store.read_frame().query("subject == 'billing'").iloc[0]
    assert row["rating_thumb"] == -1 and row["history"] == [{"role": "user", "content": "x"}]
