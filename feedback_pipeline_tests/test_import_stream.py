"""Streaming bulk import on real SQLite and PostgreSQL: bad lines are reported and never stop it, re-imports are
idempotent, the COPY path and the SQLite path store the same rows, memory does not grow with the file."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.ingestion.importers import import_records, read_csv, read_jsonl, read_oasst1
from feedback_pipeline.ingestion.strict import MAX_BODY_BYTES
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import feedback

_GOOD = '"query": "q", "response": "r"'
# Each bad line (bytes as written to the file) -> the field the report must name.
BAD_LINES = [
    (b"{not json", "line"),
    (b'\xff\xfe{"query": "q", "response": "r"}', "line"),  # not UTF-8
    (b"null", "record"),
    (b"42", "record"),
    (b"[1, 2]", "record"),
    (b'"just text"', "record"),
    (b'{%s, "rating": NaN}' % _GOOD.encode(), "rating"),
    (b'{%s, "latency_ms": 1e400}' % _GOOD.encode(), "latency_ms"),  # overflows to infinity
    (b'{"query": "\\ud800", "response": "r"}', "query"),  # lone surrogate
    (b'{"query": "a\\u0000b", "response": "r"}', "query"),
    (b'{%s, "message_index": 2147483648}' % _GOOD.encode(), "message_index"),
    (b'{%s, "prompt_tokens": %s}' % (_GOOD.encode(), b"9" * 5000), "line"),  # too many digits to read
    (b'{"query": "%s", "response": "r"}' % (b"x" * 100_001), "query"),
    (b'{%s, "user_id": "%s"}' % (_GOOD.encode(), b"u" * 513), "user_id"),
    (b'{%s, "created_at": "1999-12-31T00:00:00Z"}' % _GOOD.encode(), "created_at"),
    (b'{%s, "created_at": "2100-01-01T00:00:00Z"}' % _GOOD.encode(), "created_at"),
    (b'{%s, "updated_at": "9999-12-31T23:00:00-05:00"}' % _GOOD.encode(), "updated_at"),  # overflows on UTC
    (b'{%s, "metadata": "{\\"a\\": \\"\\\\ud800\\"}"}' % _GOOD.encode(), "metadata.a"),  # JSON as text
    (b'{%s, "colour": "red"}' % _GOOD.encode(), "colour"),
    (b'{%s, "rating": 7}' % _GOOD.encode(), "rating"),
    (b'{"query": "q"}', "response"),
    (b'{"query": "q", "response": "%s"}' % (b"y" * MAX_BODY_BYTES), "line"),  # longer than a line may be
]


def _line(i: int, **overrides) -> bytes:
    return json.dumps(feedback(**{"query": f"question {i}", "created_at": "2024-05-01T10:00:00Z", **overrides})).encode()


def _write(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _contents(store: FeedbackStore):
    frame = store.read_frame().drop(columns=["ingested_at"]).sort_values("id").reset_index(drop=True)
    return frame.to_dict("records")


def test_bad_lines_are_reported_by_number_and_good_ones_imported(tmp_path, store):
    lines, expected = [], []
    for i, (bad, field) in enumerate(BAD_LINES):
        lines += [_line(i), bad]
        expected.append((len(lines), field))
    # Blank lines are skipped but keep their numbers; an escaped surrogate pair (an emoji) is fine.
    lines += [b"", b"   ", _line(999, comment="ok \U0001F600")]
    _write(tmp_path / "mixed.jsonl", lines)
    report = import_records(store, read_jsonl(tmp_path / "mixed.jsonl"), "jsonl", chunk_size=7)
    assert [(r["line"], r["field"]) for r in report.rejected] == expected
    assert report.summary()["inserted"] == len(BAD_LINES) + 1 == store.count()
    assert report.summary()["rejected"] == len(BAD_LINES) and report.read == 2 * len(BAD_LINES) + 1
    assert all(r["reason"] for r in report.rejected)


def test_reimport_is_idempotent_and_a_later_rating_updates(tmp_path, store):
    path = tmp_path / "f.jsonl"
    ids = [str(uuid.uuid4()) for _ in range(30)]
    _write(path, [_line(i, id=ids[i], updated_at="2024-05-01T10:00:00Z") for i in range(30)])
    first = import_records(store, read_jsonl(path), "jsonl", chunk_size=8)
    again = import_records(store, read_jsonl(path), "jsonl", chunk_size=8)
    assert (first.summary()["inserted"], again.summary()["inserted"], again.summary()["unchanged"]) == (30, 0, 30)
    _write(path, [_line(0, id=ids[0], updated_at="2024-06-01T10:00:00Z", rating="down"),  # re-rated: updates
                  _line(1, id=ids[1], updated_at="2024-06-01T10:00:00Z"),  # newer but same rating: unchanged
                  _line(2, id=ids[2], updated_at="2024-04-01T10:00:00Z", rating="down")])  # older: ignored
    later = import_records(store, read_jsonl(path), "jsonl").summary()
    assert (later["inserted"], later["updated"], later["unchanged"]) == (0, 1, 2)
    thumbs = store.read_frame().set_index("id")["rating_thumb"]
    assert (thumbs[ids[0]], thumbs[ids[1]], thumbs[ids[2]]) == (-1, 1, 1)


def test_duplicate_ids_in_one_chunk_keep_the_newest(tmp_path, store):
    same = str(uuid.uuid4())
    _write(tmp_path / "dup.jsonl", [
        _line(1, id=same, updated_at="2024-05-02T00:00:00Z", rating="down"),
        _line(1, id=same, updated_at="2024-05-03T00:00:00Z", rating="up", comment="newest"),
        _line(1, id=same, updated_at="2024-05-01T00:00:00Z", rating="down"),
        _line(2), _line(2),  # the same derived id twice, same updated_at
    ])
    report = import_records(store, read_jsonl(tmp_path / "dup.jsonl"), "jsonl")
    assert report.summary()["inserted"] == 2 and not report.rejected
    row = store.read_frame().set_index("id").loc[same]
    assert (row["rating_thumb"], row["comment"]) == (1, "newest")


def test_copy_path_and_sqlite_path_store_the_same_rows(tmp_path, postgres_url):
    lines = [_line(i, metadata={"n": i, "tags": ["a", "é"]}, history=[{"role": "user", "content": f"h{i}"}],
                   stars=1 + i % 5, rating=None, latency_ms=12.5, tools_called=["search"],
                   retrieved_context=[{"id": "d1", "text": "ctx"}], message_index=i) for i in range(50)]
    lines += [_line(5, updated_at="2024-05-02T00:00:00Z", stars=1, rating=None, message_index=5,
                    metadata={"n": 5, "tags": ["a", "é"]}, history=[{"role": "user", "content": "h5"}],
                    latency_ms=12.5, tools_called=["search"], retrieved_context=[{"id": "d1", "text": "ctx"}])]
    lines += [bad for bad, _ in BAD_LINES[:5]]
    _write(tmp_path / "same.jsonl", lines)
    stores = [FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}"), FeedbackStore(postgres_url)]
    summaries = []
    for s in stores:
        s.migrate()
        summaries.append(import_records(s, read_jsonl(tmp_path / "same.jsonl"), "jsonl", chunk_size=16).summary())
    try:
        assert summaries[0] == summaries[1]
        assert _contents(stores[0]) == _contents(stores[1])
    finally:
        for s in stores:
            s.dispose()


def test_csv_rows_go_through_the_same_checks(tmp_path, store):
    path = tmp_path / "f.csv"
    path.write_bytes(b'query,response,rating,metadata\n'
                     b'Hi,Hello,up,"{""k"": 1}"\n'
                     b'Hi,Bad \xff byte,up,\n'
                     b'Hi,Hello,up,"{""k"": ""\\u0000""}"\n'
                     b'Hi again,Hello,7,\n')
    report = import_records(store, read_csv(path), "csv")
    assert [(r["line"], r["field"]) for r in report.rejected] == [(3, "response"), (4, "metadata.k"), (5, "rating")]
    assert report.summary()["inserted"] == 1


def test_cli_exits_0_with_rejected_lines_and_2_when_the_file_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDBACK_DB_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    _write(tmp_path / "f.jsonl", [_line(1), b"null", _line(2)])
    assert main(["import", "jsonl", str(tmp_path / "f.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["inserted"] == 2 and "rejected line 2: record:" in err
    assert main(["import", "jsonl", str(tmp_path / "missing.jsonl")]) == 2
    assert "error: import stopped" in capsys.readouterr().err
    monkeypatch.setenv("FEEDBACK_DB_URL", "postgresql://postgres@127.0.0.1:1/test")  # nothing listens there
    assert main(["import", "jsonl", str(tmp_path / "f.jsonl")]) == 2
    assert "error: import stopped: OperationalError" in capsys.readouterr().err


def test_oasst1_reports_an_unreadable_line_and_imports_the_rest(tmp_path, store):
    prompt = {"message_id": str(uuid.uuid4()), "parent_id": None, "role": "prompter", "text": "Hi?",
              "message_tree_id": "t1", "user_id": "u1", "created_date": "2023-02-01T00:00:00Z"}
    reply = {**prompt, "message_id": str(uuid.uuid4()), "parent_id": prompt["message_id"], "role": "assistant",
             "text": "Hello.", "emojis": {"name": ["+1"], "count": [2]}}
    _write(tmp_path / "tree.jsonl", [json.dumps(prompt).encode(), b"\xff broken", json.dumps(reply).encode()])
    report = import_records(store, read_oasst1(tmp_path / "tree.jsonl"), "oasst1")
    assert [(r["line"], r["field"]) for r in report.rejected] == [(2, "line")]
    assert report.summary()["inserted"] == 1 and store.read_frame()["rating_thumb"].tolist() == [1]


_MEASURE = """
import resource, sys
from pathlib import Path
from feedback_pipeline.ingestion.importers import import_records, read_jsonl
from feedback_pipeline.store.repository import FeedbackStore
store = FeedbackStore(sys.argv[2]); store.migrate()
import_records(store, read_jsonl(Path(sys.argv[3])), "jsonl")  # warm-up: imports, connection, caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = import_records(store, read_jsonl(Path(sys.argv[1])), "jsonl")
print(report.summary()["inserted"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_memory_does_not_grow_with_the_file(tmp_path, postgres_url):
    path, warm = tmp_path / "big.jsonl", tmp_path / "warm.jsonl"
    rows = 200_000
    with open(path, "wb") as out:
        for i in range(rows):
            out.write(json.dumps(feedback(query=f"question {i} " + "q" * 90, response="a" * 500,
                                          metadata={"i": i}, created_at="2024-05-01T10:00:00Z")).encode() + b"\n")
    _write(warm, [_line(i, query=f"warm {i}") for i in range(30_000)])
    size_mb = path.stat().st_size / 2**20
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), postgres_url, str(warm)],
                          capture_output=True, text=True, check=True, timeout=600)
    inserted, growth_kb = map(int, done.stdout.split())
    assert inserted == rows
    # Holding the file's rows as dicts would take several times its size (~140 MB); streaming stays flat.
    assert growth_kb / 1024 < size_mb / 4, (growth_kb, size_mb)
