"""The gold-standard set: held-out prompts with reference answers, scored with BLEU, chrF and ROUGE-L.

A gold set is a versioned, hand-editable JSONL file, one item per line:

    {"id": "g-3f2a...", "prompt": [{"role": "user", "content": "..."}], "references": ["...", "..."],
     "source": "held_out_liked" | "curated", "added_at": "2026-12-01T10:00:00+00:00"}

``seed_gold_set`` writes a first version from held-out liked answers; curators then edit, add or remove lines (with
``"source": "curated"``), and the seed never overwrites the file. The version is the file's content hash, so every
score can name exactly the gold set it was computed on. Other keys on a line (``feedback_ids``, notes) are kept out
of the way: loading ignores them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

SOURCES = ("held_out_liked", "curated")
ROLES = ("system", "user", "assistant")


class GoldSetError(ValueError):
    """A gold-set line that is not a valid item; the message starts with ``path:line:``."""


@dataclass(frozen=True)
class GoldItem:
    id: str
    prompt: tuple[dict[str, str], ...]
    references: tuple[str, ...]
    source: str
    added_at: str


@dataclass(frozen=True)
class GoldSet:
    items: tuple[GoldItem, ...]
    version: str  # first 12 hex digits of the sha256 of the file's bytes
    path: Path

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [list(item.prompt) for item in self.items]

    @property
    def references(self) -> list[list[str]]:
        return [list(item.references) for item in self.items]


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def seed_gold_set(path: str | Path, held_out_rows: Iterable[dict], n: int = 50, seed: int = 0) -> GoldSet:
    """Write a gold set of at most ``n`` prompts drawn (seeded) from the liked (``label`` True) KTO records in
    ``held_out_rows``, every liked answer to a prompt becoming one of its references; return it loaded.

    If ``path`` already exists it is returned as it is (a curated file is never overwritten, not even by a run
    that raced this one: the file is created with an atomic no-replace link)."""
    path = Path(path)
    if path.exists():
        return load_gold_set(path)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    groups: dict[str, dict[str, Any]] = {}  # insertion order = first appearance
    for row in held_out_rows:
        if row.get("label") is not True:
            continue
        answer = "".join(m["content"] for m in row["completion"] if m.get("role") == "assistant").strip()
        if not answer:
            continue
        group = groups.setdefault(_prompt_key(row["prompt"]),
                                  {"prompt": row["prompt"], "references": [], "feedback_ids": []})
        if answer not in group["references"]:
            group["references"].append(answer)
        if row.get("feedback_id") is not None:
            group["feedback_ids"].append(row["feedback_id"])
    if not groups:
        raise ValueError("no liked answer among the held-out rows: nothing to seed a gold set from")
    keys = list(groups)
    chosen = sorted(random.Random(seed).sample(range(len(keys)), min(n, len(keys))))
    added_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = []
    for k in chosen:
        group = groups[keys[k]]
        item_id = "g-" + hashlib.sha256(keys[k].encode()).hexdigest()[:12]  # stable: the same prompt, the same id
        lines.append(json.dumps({"id": item_id, "prompt": group["prompt"], "references": group["references"],
                                 "source": "held_out_liked", "added_at": added_at,
                                 "feedback_ids": group["feedback_ids"]}, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        try:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never replaces it
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return load_gold_set(path)


def _parse_item(obj: Any) -> GoldItem:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("id", "prompt", "references", "source", "added_at") if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    item_id = obj["id"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id).strip() == "":
        raise ValueError(f"'id' must be a non-empty string or integer, got {item_id!r}")
    prompt = obj["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("'prompt' must be a non-empty list of chat messages")
    for j, m in enumerate(prompt):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ValueError(f"'prompt' message {j} must be {{'role': one of {list(ROLES)}, 'content': str}}, "
                             f"got {m!r}")
    if prompt[-1]["role"] != "user":
        raise ValueError("'prompt' must end with a user message (the turn the model answers)")
    refs = obj["references"]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise ValueError("'references' must be a non-empty list of non-empty strings")
    if obj["source"] not in SOURCES:
        raise ValueError(f"'source' must be one of {list(SOURCES)}, got {obj['source']!r}")
    added_at = obj["added_at"]
    try:
        datetime.fromisoformat(added_at)
    except (TypeError, ValueError):
        raise ValueError(f"'added_at' must be an ISO 8601 date or timestamp, got {added_at!r}") from None
    return GoldItem(str(item_id), tuple({"role": m["role"], "content": m["content"]} for m in prompt),
                    tuple(refs), obj["source"], added_at)


def load_gold_set(path: str | Path) -> GoldSet:
    """Read and validate a gold-set JSONL file (blank lines allowed); raises ``GoldSetError`` naming the line."""
    path = Path(path)
    data = path.read_bytes()
    items, seen = [], {}
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:  # decoded line by line, so an invalid byte is reported with its line too
            item = _parse_item(json.loads(raw.decode("utf-8")))
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise GoldSetError(f"{path}:{lineno}: {exc}") from exc
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise GoldSetError(f"{path}: the gold set holds no items")
    return GoldSet(tuple(items), hashlib.sha256(data).hexdigest()[:12], path)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------------


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout: stream k holds every item's k-th reference. Items with fewer references are padded by
    repeating theirs cyclically. That changes no score: BLEU clips n-gram counts by the maximum over references and
    picks the closest reference length, chrF keeps the best-matching reference, and a duplicate never raises a
    maximum."""
    width = max(len(refs) for refs in references)
    return [[refs[k % len(refs)] for refs in references] for k in range(width)]


def score_gold(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults, 0-100), mean ROUGE-L F1 (0-1, stemmed, best reference per item),
    and per-item arrays ``sentence_chrf`` and ``sentence_rougeL`` aligned with ``hypotheses`` for paired bootstraps.

    ROUGE-L uses rouge-score's default tokenizer, which keeps only ASCII letters and digits: non-Latin answers score 0
    there; chrF (characters) is the script-independent metric."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("score_gold needs at least one item")
    if any(not refs for refs in references):
        raise ValueError("every item needs at least one reference")
    hyps = [str(h) for h in hypotheses]
    refs = [[str(r) for r in item] for item in references]
    chrf = CHRF()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    sentence_chrf = np.array([chrf.sentence_score(h, r).score for h, r in zip(hyps, refs)])
    sentence_rouge = np.array([max(scorer.score(ref, h)["rougeL"].fmeasure for ref in r) for h, r in zip(hyps, refs)])
    streams = reference_streams(refs)
    return {
        "bleu": float(BLEU().corpus_score(hyps, streams).score),
        "chrf": float(chrf.corpus_score(hyps, streams).score),
        "rougeL": float(sentence_rouge.mean()),
        "n_items": len(hyps),
        "sentence_chrf": sentence_chrf,
        "sentence_rougeL": sentence_rouge,
    }
