"""File importers: our JSONL/CSV format, and the two public feedback sets in ../shared/data.

Readers yield records (dicts) or ``Line``s (a record, raw JSONL bytes or a read error, with the file's line
number). ``import_records`` streams them through ``strict.parse_json`` + ``strict.validate_record`` (the HTTP
service's checks) and writes the valid rows in committed chunks, so memory does not grow with the file and a
bad line is reported, never fatal.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from feedback_pipeline.ingestion.records import FeedbackValidationError
from feedback_pipeline.ingestion.strict import MAX_BODY_BYTES, parse_json, validate_record
from feedback_pipeline.store.bulk import chunk_writer
from feedback_pipeline.store.repository import CONFLICT_REASON, FeedbackStore, WriteResult

# FeedbackQA's four answer grades, onto our [-1, 1] scale (Excellent/Acceptable like, the others dislike).
FEEDBACKQA_GRADES = {"Excellent": 1.0, "Acceptable": 0.5, "Could be Improved": -0.5, "Bad": -1.0}
CHUNK_ROWS = 10_000
# Rejections kept in detail; beyond that only counted, so a file of bad lines cannot fill memory.
MAX_REJECTED_KEPT = 1_000


@dataclass(frozen=True)
class Line:
    number: int
    value: dict | bytes | FeedbackValidationError


@dataclass
class ImportReport:
    source: str
    read: int = 0
    written: WriteResult | None = None
    rejected: list[dict] = field(default_factory=list)  # {"line": n, "field": ..., "reason": ...}, the first ones
    rejected_count: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def reject(self, line: int, error: FeedbackValidationError) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTED_KEPT:
            # strict names a problem with the whole input "body"; in a file that input is the line.
            self.rejected.append({"line": line, "field": "line" if error.field == "body" else error.field,
                                  "reason": error.reason})

    def add(self, result: WriteResult | None, lines: list[int] | None = None) -> None:
        """Count a written chunk; its conflicts (``lines``: the chunk's line numbers) are rejected by line."""
        if result is None:
            return
        for position in result.conflict_positions:
            self.reject(lines[position] if lines else position + 1, FeedbackValidationError("id", CONFLICT_REASON))
        w = self.written or WriteResult(0, 0, 0)
        self.written = WriteResult(w.received + result.received, w.inserted + result.inserted,
                                   w.updated + result.updated, w.conflicts + result.conflicts)

    def summary(self) -> dict:
        w = self.written or WriteResult(0, 0, 0)
        return {"source": self.source, "read": self.read, "inserted": w.inserted, "updated": w.updated,
                "unchanged": w.unchanged, "conflicts": w.conflicts, "rejected": self.rejected_count,
                "skipped": self.skipped}


def import_records(store: FeedbackStore, records: Iterable[dict | Line], source: str,
                   chunk_size: int = CHUNK_ROWS, report: ImportReport | None = None) -> ImportReport:
    """Validate every record and write the valid ones in committed chunks; report the rejected by line.

    A plain dict counts as line = its position. Pass ``report`` to keep the counts of the chunks committed before
    a database failure.
    """
    report = report if report is not None else ImportReport(source=source)
    rows = _valid_rows(records, source, report)
    lines: list[int] = []  # line numbers of the chunk in flight, to report its conflicts
    with chunk_writer(store) as writer:
        try:
            while chunk := list(itertools.islice(rows, chunk_size)):
                report.add(writer.submit([row for _, row in chunk]), lines)
                lines = [number for number, _ in chunk]
        except OSError:  # the file failed mid-way: still count the chunk already in flight
            report.add(writer.flush(), lines)
            raise
        report.add(writer.flush(), lines)
    return report


def _valid_rows(records: Iterable[dict | Line], source: str, report: ImportReport) -> Iterator[tuple[int, dict]]:
    for position, item in enumerate(records, start=1):
        number, value = (item.number, item.value) if isinstance(item, Line) else (position, item)
        report.read += 1
        try:
            if isinstance(value, FeedbackValidationError):
                raise value
            row = (validate_record(parse_json(value), source, checked=True) if isinstance(value, bytes)
                   else validate_record(value, source))
        except FeedbackValidationError as exc:
            report.reject(number, exc)
            continue
        yield number, row


def read_jsonl(path: Path) -> Iterator[Line]:
    """Raw lines as bytes (decoded and parsed by the importer, so a bad byte rejects one line); blank lines skipped."""
    with open(path, "rb") as handle:
        number = 0
        while raw := handle.readline(MAX_BODY_BYTES + 1):
            number += 1
            if len(raw) > MAX_BODY_BYTES and not raw.endswith(b"\n"):
                while (rest := handle.readline(MAX_BODY_BYTES)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of an over-long line without holding it
                yield Line(number, FeedbackValidationError("line", f"is longer than {MAX_BODY_BYTES} bytes"))
            elif raw.strip():
                yield Line(number, raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)


def read_csv(path: Path) -> Iterator[Line]:
    """CSV with a header row of record field names; JSON-valued fields (history, metadata ...) as JSON text.

    Bytes that are not UTF-8 become lone surrogates, which validation rejects for that row only.
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Line(reader.line_num, FeedbackValidationError("line", f"is not valid CSV ({exc})"))
                continue
            yield Line(reader.line_num, {key: value for key, value in row.items() if key and value != ""})


def read_oasst1(path: Path) -> Iterator[dict | Line]:
    """Assistant replies of an oasst1 message-tree export, each with its prompt and conversation history.

    The whole message tree is held in memory (a reply needs its ancestors, which may come later in the file);
    the records then stream through the same chunked writer as any import. An unreadable line is yielded as a
    ``Line`` carrying the error, so the import reports it.
    The rating is the net of the ``+1`` and ``-1`` emoji votes, normalised as (up - down) / (up + down);
    replies without votes are imported unrated. Sibling ``rank`` and the quality labels go to metadata.
    """
    messages = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                message = parse_json(line)
                messages[message["message_id"]] = message
            except FeedbackValidationError as exc:
                yield Line(number, exc)
            except (TypeError, KeyError):
                yield Line(number, FeedbackValidationError("message_id", "is missing: not an oasst1 message"))
    for message in messages.values():
        if message["role"] != "assistant" or message.get("deleted"):
            continue
        parent = messages.get(message["parent_id"])
        if parent is None or parent["role"] != "prompter":
            continue
        chain, node = [], messages.get(parent["parent_id"])
        while node is not None:
            chain.append({"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]})
            node = messages.get(node["parent_id"])
        emojis = message.get("emojis") or {}
        votes = dict(zip(emojis.get("name", []), emojis.get("count", [])))
        up, down = int(votes.get("+1", 0)), int(votes.get("-1", 0))
        labels = message.get("labels") or {}
        yield {
            "id": message["message_id"],
            "created_at": message["created_date"],
            "user_id": message["user_id"],
            "session_id": message["message_tree_id"],
            "message_index": len(chain) + 1,
            "query": parent["text"],
            "history": chain[::-1],
            "response": message["text"],
            "model_name": "oasst1-volunteer",
            "model_version": "oasst1-2023-04-12",
            "project": "oasst1",
            "rating": (up - down) / (up + down) if up + down else None,
            "rating_scale": "votes",
            "source": "oasst1",
            "metadata": {
                "votes_up": up, "votes_down": down, "rank": message.get("rank"),
                "parent_id": message["parent_id"], "lang": message.get("lang"),
                "labels": dict(zip(labels.get("name", []), labels.get("value", []))),
            },
        }


def read_feedbackqa(root: Path) -> Iterator[dict]:
    """FeedbackQA rated answers: one record per rater, the domain as subject, the rater's explanation as comment."""
    for file in sorted(root.glob("*/feedback_*.json")):
        domain = file.parent.name
        for item_index, item in enumerate(json.loads(file.read_text(encoding="utf-8"))):
            passage = item["passage"]["reference"]
            for rater, (grade, explanation) in enumerate(zip(item["rating"], item["feedback"])):
                yield {
                    "user_id": f"feedbackqa-{domain}-rater{rater}",
                    "session_id": f"feedbackqa-{domain}-{file.stem}-{item_index}",
                    "query": item["question"],
                    "response": passage["section_content"],
                    "model_name": "feedbackqa-retriever",
                    "model_version": file.stem,
                    "project": "feedbackqa",
                    "subject": domain,
                    "intent": "faq",
                    "rating": FEEDBACKQA_GRADES[grade],
                    "rating_scale": "label",
                    "comment": explanation,
                    "retrieved_context": [{"id": str(item["passage"]["passage_id"]), "uri": item["passage"].get("uri"),
                                           "title": passage.get("page_title"), "text": passage["section_content"]}],
                    "source": "feedbackqa",
                    "metadata": {"grade": grade},
                }


READERS = {"jsonl": read_jsonl, "csv": read_csv, "oasst1": read_oasst1, "feedbackqa": read_feedbackqa}
