"""What the embedder trains and validates on: pairs from a JSONL file or a BEIR folder, hard negatives mined with
sentence-transformers' own ``mine_hard_negatives``, and the retrieval sets for validation and test.

A BEIR folder (``corpus.jsonl``, ``queries-<split>.jsonl``, ``qrels-<split>.tsv``) gives one training pair per
judged (query, relevant document); ``holdout_fraction`` of its judged queries become the validation set that early
stopping watches, and are never trained on. The corpus is also the pool hard negatives are mined from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from feedback_pipeline.training.config_file import jsonl_records


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, the documents searched and the judgements: what an InformationRetrievalEvaluator needs."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def __post_init__(self) -> None:
        if not any(d for d in self.qrels.values()):
            raise ValueError("a retrieval set needs at least one query with a relevant document")


@dataclass
class TrainingPairs:
    rows: list[dict[str, Any]]  # {"query", "positive", "negatives": [str], "score": float | None}
    corpus: list[str] = field(default_factory=list)  # candidate negatives (BEIR corpus; else the pairs' own texts)
    validation: RetrievalSet | None = None


def load_pairs(path) -> list[dict[str, Any]]:
    """Validated rows of a pairs JSONL (``export_pairs`` writes it): a negative may be one string, a list or null."""
    rows = []
    for where, record in jsonl_records(path):
        for key in ("query", "positive"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        negatives = record.get("negatives", record.get("negative"))
        negatives = [] if negatives is None else [negatives] if isinstance(negatives, str) else negatives
        if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
            raise ValueError(f"{where}: 'negative' must be a non-empty string, a list of them, or null")
        score = record.get("score", record.get("label"))
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            score = None  # a feedback label ("liked") is not a similarity score
        elif not math.isfinite(score):
            raise ValueError(f"{where}: 'score' must be a finite number, got {score!r}")
        rows.append({"query": record["query"], "positive": record["positive"], "negatives": list(negatives),
                     "score": None if score is None else float(score)})
    return rows


def pairs_from_beir_folder(folder, split: str = "train", holdout_fraction: float = 0.0,
                           seed: int = 0) -> TrainingPairs:
    """Training rows from a BEIR folder's ``split``; ``holdout_fraction`` of the judged queries (whole groups of
    identical text) become the validation set over the full corpus."""
    from feedback_pipeline.datasets.embedding_pairs import split_beir_queries

    corpus, train_qrels, queries, held_qrels = split_beir_queries(folder, split, holdout_fraction, seed)
    rows = [{"query": queries[q], "positive": corpus[d], "negatives": [], "score": None}
            for q in sorted(train_qrels, key=lambda q: (len(q), q)) for d in sorted(train_qrels[q])]
    validation = (RetrievalSet({q: queries[q] for q in held_qrels}, corpus, held_qrels) if held_qrels else None)
    return TrainingPairs(rows=rows, corpus=list(corpus.values()), validation=validation)


def beir_retrieval_set(folder, split: str) -> RetrievalSet:
    from feedback_pipeline.datasets.embedding_pairs import load_beir

    corpus, queries, qrels = load_beir(folder, split)
    return RetrievalSet({q: queries[q] for q in qrels}, corpus, qrels)


def mine_negatives(rows: list[dict[str, Any]], corpus: list[str], model, *, num_negatives: int, range_min: int,
                   range_max: int, relative_margin: float | None, absolute_margin: float | None,
                   max_score: float | None, sampling: str, batch_size: int, log) -> list[dict[str, Any]]:
    """Give each row without negatives ``num_negatives`` hard negatives from ``corpus`` (plus the rows' own texts),
    mined by ``sentence_transformers.util.mine_hard_negatives``: candidates ranked ``range_min``..``range_max`` by
    the model, skipping any that score within the margins of the positive or above ``max_score`` (SciFact-like data
    has many unlabelled relevant documents: such near-positives would be false negatives). Every positive of a
    repeated query is excluded. A row for which too few candidates survive keeps no negative rather than being
    dropped."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    todo = [r for r in rows if not r["negatives"]]
    if not todo or num_negatives < 1:
        return rows
    pool = list(dict.fromkeys([*corpus, *(r["positive"] for r in rows)]))
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": [r["query"] for r in todo], "positive": [r["positive"] for r in todo]}), model,
        corpus=pool, range_min=range_min, range_max=range_max, relative_margin=relative_margin,
        absolute_margin=absolute_margin, max_score=max_score, num_negatives=num_negatives,
        sampling_strategy=sampling, output_format="n-tuple", batch_size=batch_size, verbose=False)
    found: dict[tuple[str, str], list[str]] = {}
    for record in mined:
        found[(record["anchor"], record["positive"])] = [record[f"negative_{i}"] for i in range(1, num_negatives + 1)]
    out = [r if r["negatives"] else {**r, "negatives": found.get((r["query"], r["positive"]), [])} for r in rows]
    log(f"hard negatives: {len(found)} of {len(todo)} pairs got {num_negatives} each "
        f"(ranks {range_min}..{range_max}, relative margin {relative_margin}, max score {max_score})")
    return out


def training_datasets(rows: list[dict[str, Any]], loss: str):
    """The datasets for ``loss``: one Dataset, or a dict of them (in-batch losses: rows with k negatives, grouped by
    k, and rows without, sampled proportionally)."""
    from datasets import Dataset

    with_neg = [r for r in rows if r["negatives"]]
    if loss in ("mnrl", "cached_mnrl"):
        groups: dict[int, list[dict]] = {}
        for r in rows:
            groups.setdefault(len(r["negatives"]), []).append(r)
        parts = {}
        for k, group in sorted(groups.items()):
            columns = {"anchor": [r["query"] for r in group], "positive": [r["positive"] for r in group]}
            for i in range(k):
                columns[f"negative_{i + 1}" if k > 1 else "negative"] = [r["negatives"][i] for r in group]
            parts["pairs" if k == 0 else "triplets" if k == 1 else f"tuples_{k}"] = Dataset.from_dict(columns)
        return next(iter(parts.values())) if len(parts) == 1 else parts
    if loss == "triplet":
        if not with_neg:
            raise ValueError("loss=triplet needs pairs with a 'negative'; none has one (mine hard negatives first)")
        triples = [(r["query"], r["positive"], n) for r in with_neg for n in r["negatives"]]
        return Dataset.from_dict({"anchor": [t[0] for t in triples], "positive": [t[1] for t in triples],
                                  "negative": [t[2] for t in triples]})
    examples = [(r["query"], r["positive"], 1.0 if r["score"] is None else r["score"]) for r in rows]
    examples += [(r["query"], n, 0.0) for r in with_neg for n in r["negatives"]]
    if len({score for _, _, score in examples}) < 2:
        raise ValueError("loss=cosine needs varying targets: add 'score' values or negatives to the pairs")
    return Dataset.from_dict({"sentence1": [e[0] for e in examples], "sentence2": [e[1] for e in examples],
                              "score": [e[2] for e in examples]})


def dataset_len(data) -> int:
    return sum(len(d) for d in data.values()) if isinstance(data, dict) else len(data)
