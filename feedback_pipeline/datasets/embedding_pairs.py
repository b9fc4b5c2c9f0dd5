"""(query, positive, negative) pairs for fine-tuning the retrieval embedder, from feedback or a BEIR dataset.

From feedback: the documents retrieved for a *liked* answer are positives for its query (the answer itself when the
turn had no retrieved context); the documents behind a *disliked* answer to the same query are its negatives,
unless they were also behind a liked one (then the dislike was about the generation, not the retrieval). A dislike
is noisy evidence against a document, so negatives are optional; the trainer mines the rest
(``EmbedderConfig.mine_negatives``, sentence-transformers' ``mine_hard_negatives``).

The split comes from ``assign_split`` (whole conversations / identical queries on one side), so no query is in
both the training pairs and the evaluation pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from feedback_pipeline.datasets.build import Chunks, InsufficientDataError, _digest, _scan_rows, trainable_rows
from feedback_pipeline.datasets.splits import _query_key


PAIR_COLUMNS = ["query", "positive", "negative", "feedback_id", "split", "positive_id", "negative_id",
                "negative_feedback_id"]


def _documents(context: Any) -> list[tuple[str | None, str]]:
    """(id, text) of each retrieved document; accepts a list of dicts or strings, a JSON string, or nothing."""
    if context is None or (isinstance(context, float) and np.isnan(context)):
        return []
    if isinstance(context, str):
        try:
            context = json.loads(context)
        except json.JSONDecodeError:
            return [(None, context)] if context.strip() else []
    docs = []
    for item in list(context):
        if isinstance(item, dict):
            text = item.get("text") or item.get("content") or ""
            doc_id = item.get("id")
            doc_id = None if doc_id is None else str(doc_id)
        else:
            text, doc_id = str(item), None
        if str(text).strip():
            docs.append((doc_id, str(text)))
    return docs


def _texts_or_response(row) -> list[tuple[str | None, str]]:
    return _documents(getattr(row, "retrieved_context", None)) or [(None, str(row.response))]


def pairs_from_feedback(df: pd.DataFrame, eval_fraction: float = 0.15) -> pd.DataFrame:
    """One row per (query, positive document) of a liked answer, with at most one negative from a disliked answer
    to the same (normalised) query; ``split`` is 'train' or 'eval', leakage-free by conversation and query."""
    rows = trainable_rows(df, eval_fraction) if len(df) else df.assign(split=pd.Series(dtype=str))
    if rows.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return _pairs(rows.itertuples(index=False))


def _pairs(rows: Iterable) -> pd.DataFrame:
    """The pairs of rated rows (``id``, ``query``, ``response``, ``retrieved_context``, ``label``, ``split``) in
    their stream order."""
    positives: dict[str, list[tuple]] = defaultdict(list)  # query key -> (row, doc id, text)
    negatives: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        target = positives if row.label == "liked" else negatives
        source = _Source(row.id, row.query, row.split)
        for doc_id, text in _texts_or_response(row):
            target[_query_key(row.query)].append((source, doc_id, text))

    records = []
    for key, liked in positives.items():
        positive_texts = {text for _, _, text in liked}
        seen, usable = set(), []
        for bad_row, doc_id, text in negatives.get(key, []):
            if text not in positive_texts and text not in seen:
                seen.add(text)
                usable.append((bad_row, doc_id, text))
        emitted = set()
        for i, (row, doc_id, text) in enumerate(liked):
            if (row.query, text) in emitted:
                continue
            emitted.add((row.query, text))
            neg = usable[i % len(usable)] if usable else None  # cycle: each negative is used, none repeated early
            records.append({
                "query": row.query, "positive": text, "negative": neg[2] if neg else None,
                "feedback_id": row.id, "split": row.split, "positive_id": doc_id,
                "negative_id": neg[1] if neg else None, "negative_feedback_id": neg[0].id if neg else None})
    return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)


class _Source(NamedTuple):
    """What a pair keeps of the row its document came from."""

    id: str
    query: str
    split: str


# What pass 1 reads (the split) and pass 2 (the rated rows' texts) of each row.
SPLIT_COLUMNS = ("id", "session_id", "user_id", "query", "label", "ingested_at", "exclude_from_training")
TEXT_COLUMNS = ("id", "query", "response", "retrieved_context", "label", "exclude_from_training")


def pairs_from_chunks(split_chunks: Chunks, text_chunks: Chunks, eval_fraction: float = 0.15) -> pd.DataFrame:
    """:func:`pairs_from_feedback` over a stream: ``split_chunks()`` yields frames of cleaned rows
    (``SPLIT_COLUMNS``) in (created_at, id) order for the split, ``text_chunks()`` the same rows with
    ``TEXT_COLUMNS``. Memory: a few short fields per row, and the documents of liked answers and of disliked ones
    to a query some liked answer shares (the pairs are made of them); other rows' text is never kept."""
    def liked_query(usable: pd.DataFrame) -> dict[str, list]:
        liked = (usable["label"] == "liked").to_numpy()
        return {"_liked_query": [_digest(_query_key(q)) if ok else None for q, ok in zip(usable["query"], liked)]}

    rows, _ = _scan_rows(split_chunks, eval_fraction, True, answered=(), extra=liked_query)
    rated = rows[rows["label"].isin(["liked", "disliked"])] if len(rows) else rows
    if rated.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    side = dict(zip(rated["id"], rated["split"]))
    liked_queries = set(rated["_liked_query"].dropna())

    def stream():
        for chunk in text_chunks():
            for row in chunk.itertuples(index=False):
                split = side.get(str(row.id))
                if split is not None and (row.label == "liked" or _digest(_query_key(row.query)) in liked_queries):
                    yield _Rated(str(row.id), row.query, row.response, row.retrieved_context, row.label, split)

    return _pairs(stream())


class _Rated(NamedTuple):
    id: str
    query: str
    response: str
    retrieved_context: Any
    label: str
    split: str


# ---------------------------------------------------------------------------------------------------------------------
# BEIR (corpus.jsonl, queries-<split>.jsonl, qrels-<split>.tsv)
# ---------------------------------------------------------------------------------------------------------------------


def load_beir(folder: str | Path, split: str = "train") -> tuple[dict[str, str], dict[str, str], dict[str, dict]]:
    """(corpus id -> "title text", query id -> text, query id -> {doc id: relevance})."""
    folder = Path(folder)
    corpus, queries, qrels = {}, {}, defaultdict(dict)
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                doc = json.loads(line)
                corpus[str(doc["_id"])] = f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()
    with open(folder / f"queries-{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                query = json.loads(line)
                queries[str(query["_id"])] = query["text"]
    qrels_frame = pd.read_csv(folder / f"qrels-{split}.tsv", sep="\t", dtype={"query-id": str, "corpus-id": str})
    for qid, doc_id, score in qrels_frame[["query-id", "corpus-id", "score"]].itertuples(index=False):
        if score > 0 and doc_id in corpus and qid in queries:
            qrels[qid][doc_id] = int(score)
    return corpus, queries, dict(qrels)


def split_beir_queries(folder: str | Path, split: str = "train", holdout_fraction: float = 0.1, seed: int = 0
                       ) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus, kept qrels, queries, held-out qrels): ``holdout_fraction`` of the judged queries of ``split`` are
    held out, whole groups of identical (normalised) text at a time, in a seeded random order; 0 holds out none."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    corpus, queries, qrels = load_beir(folder, split)
    if not qrels:
        raise ValueError(f"{folder}: qrels-{split}.tsv judges no query of queries-{split}.jsonl relevant to a document")
    groups: dict[str, list[str]] = defaultdict(list)
    for qid in sorted(qrels, key=lambda q: (len(q), q)):
        groups[_query_key(queries[qid])].append(qid)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_eval = round(len(qrels) * holdout_fraction)
    if holdout_fraction > 0:
        n_eval = max(1, n_eval)
    held_out: list[str] = []
    for index in order:
        if len(held_out) >= n_eval:
            break
        held_out.extend(groups[keys[index]])
    held = set(held_out)
    kept = {q: dict(rel) for q, rel in qrels.items() if q not in held}
    return corpus, kept, queries, {q: dict(qrels[q]) for q in held_out}


def pairs_from_beir(folder: str | Path, split_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[pd.DataFrame, dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Hold out ``split_fraction`` of the judged training *queries* (queries with the same normalised text stay
    together; 0 holds out none); return (train pairs, held-out queries, corpus, held-out qrels). No pair of a
    held-out query is in the training pairs."""
    corpus, kept, queries, held = split_beir_queries(folder, "train", split_fraction, seed)
    records = [{"query": queries[qid], "positive": corpus[doc_id], "negative": None, "feedback_id": f"beir:{qid}",
                "split": "train", "positive_id": doc_id, "negative_id": None, "negative_feedback_id": None}
               for qid in sorted(kept, key=lambda q: (len(q), q)) for doc_id in sorted(kept[qid])]
    train = pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
    return train, {q: queries[q] for q in held}, corpus, held


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------


def _records(pairs: pd.DataFrame) -> list[dict]:
    clean = pairs.astype(object).where(pairs.notna(), None)
    return [{k: v for k, v in r.items()} for r in clean.to_dict(orient="records")]


def export_pairs(pairs: pd.DataFrame, directory: str | Path, min_train_pairs: int = 1,
                 fingerprinted: bool = False) -> dict[str, Path]:
    """Write ``pairs.jsonl``, ``pairs.csv``, one ``<split>.jsonl`` per split (the trainer's ``train_file``), an HF
    ``DatasetDict`` folder (``hf/``, one dataset per split) and ``manifest.json`` (sha256 fingerprint of the
    content, counts, feedback ids per split). Returns the paths by kind. ``fingerprinted`` writes into
    ``directory/<fingerprint[:16]>/`` instead, so every registered embedder keeps the exact pairs it was trained on
    (lineage, trained-on) and the same pairs reuse the same folder."""
    from datasets import Dataset, DatasetDict

    if "split" not in pairs:
        pairs = pairs.assign(split="train")
    n_train = int((pairs["split"] == "train").sum())
    if n_train < min_train_pairs:
        raise InsufficientDataError(f"embedding pairs: {n_train} training pairs, fewer than {min_train_pairs}")
    records = _records(pairs)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) for r in records]
    fingerprint = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    directory = Path(directory) / fingerprint[:16] if fingerprinted else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    paths = {"jsonl": directory / "pairs.jsonl", "csv": directory / "pairs.csv", "hf": directory / "hf",
             "manifest": directory / "manifest.json"}
    paths["jsonl"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs.to_csv(paths["csv"], index=False)
    splits = sorted(pairs["split"].unique())
    for split in splits:
        paths[split] = directory / f"{split}.jsonl"
        paths[split].write_text("".join(line + "\n" for line, r in zip(lines, records) if r["split"] == split),
                                encoding="utf-8")
    DatasetDict({split: Dataset.from_list([{k: v for k, v in r.items() if k != "split"}
                                           for r in records if r["split"] == split])
                 for split in splits}).save_to_disk(str(paths["hf"]))
    by_split = {split: pairs[pairs["split"] == split] for split in splits}
    manifest = {
        "name": "embedding_pairs", "fingerprint": fingerprint,
        "counts": {split: len(frame) for split, frame in by_split.items()},
        "with_negative": {split: int(frame["negative"].notna().sum()) for split, frame in by_split.items()},
        "unique_queries": {split: int(frame["query"].nunique()) for split, frame in by_split.items()},
        "feedback_ids": {split: sorted(set(frame["feedback_id"].dropna().astype(str))
                                       | set(frame.get("negative_feedback_id", pd.Series(dtype=object))
                                             .dropna().astype(str)))
                         for split, frame in by_split.items()},
        "files": {kind: path.name for kind, path in paths.items() if kind != "manifest"},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return paths
