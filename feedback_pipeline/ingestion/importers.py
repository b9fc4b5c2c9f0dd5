"""File importers: our JSONL/CSV format, and the two public feedback sets in ../shared/data.

Every importer yields raw dicts in the documented record format (see README "Sending feedback"); they all go
through ``normalise_record`` so a file row and an HTTP request are validated by the same code.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record
from feedback_pipeline.store.repository import FeedbackStore, WriteResult

# FeedbackQA's four answer grades, onto our [-1, 1] scale (Excellent/Acceptable like, the others dislike).
FEEDBACKQA_GRADES = {"Excellent": 1.0, "Acceptable": 0.5, "Could be Improved": -0.5, "Bad": -1.0}


@dataclass
class ImportReport:
    source: str
    read: int = 0
    written: WriteResult | None = None
    rejected: list[dict] = field(default_factory=list)  # {"line": n, "field": ..., "reason": ...}
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        w = self.written or WriteResult(0, 0, 0)
        return {"source": self.source, "read": self.read, "inserted": w.inserted, "updated": w.updated,
                "unchanged": w.unchanged, "rejected": len(self.rejected), "skipped": self.skipped}


def import_records(store: FeedbackStore, records: Iterator[dict], source: str) -> ImportReport:
    """Validate every record, write the valid ones in one transaction, and report the rejected by line."""
    report, rows = ImportReport(source=source), []
    for line, record in enumerate(records, start=1):
        report.read += 1
        if "__invalid__" in record:
            report.rejected.append({"line": line, "field": "record", "reason": record["__invalid__"]})
            continue
        try:
            rows.append(normalise_record(record, source=source))
        except FeedbackValidationError as exc:
            report.rejected.append({"line": line, **exc.as_dict()})
    report.written = store.write(rows)
    return report


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    # A broken line is still a record the caller must hear about, not a silent skip.
                    yield {"__invalid__": f"line {number} is not valid JSON ({exc.msg})"}


def read_csv(path: Path) -> Iterator[dict]:
    """CSV with a header row of record field names; JSON-valued fields (history, metadata ...) as JSON text."""
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            yield {key: value for key, value in row.items() if key and value != ""}


def read_oasst1(path: Path) -> Iterator[dict]:
    """Assistant replies of an oasst1 message-tree export, each with its prompt and conversation history.

    The rating is the net of the ``+1`` and ``-1`` emoji votes, normalised as (up - down) / (up + down);
    replies without votes are imported unrated. Sibling ``rank`` and the quality labels go to metadata.
    """
    messages = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            message = json.loads(line)
            messages[message["message_id"]] = message
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
