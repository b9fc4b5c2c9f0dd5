"""Champion vs challenger embedder on held-out query -> document pairs: nDCG@10, MRR@10, Recall@k, paired.

The held-out pairs are the ``eval`` split of ``embedding_pairs`` (no query of it was trained on). The corpus is
every distinct document of both splits (positives and negatives), so a model must find the liked document among
all the others; a query's relevant documents are all its positives.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from feedback_pipeline.evaluation.gate import Interval, paired_interval
from feedback_pipeline.evaluation.retrieval import evaluate_retrieval


@dataclass(frozen=True)
class RetrievalTask:
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]


def retrieval_task(train_pairs: Iterable[Mapping[str, Any]], eval_pairs: Iterable[Mapping[str, Any]],
                   max_queries: int | None = None, max_corpus: int | None = None) -> RetrievalTask:
    """Queries, corpus and relevance judgements from embedding pair records (``query``, ``positive``, ``negative``).
    ``max_corpus`` keeps every relevant document and fills the rest with distractors chosen by a hash of their text
    (stable from run to run), so both models search the same smaller corpus."""
    doc_ids: dict[str, str] = {}

    def doc(text: str) -> str:
        return doc_ids.setdefault(text, f"d{len(doc_ids)}")

    for pair in train_pairs:
        for key in ("positive", "negative"):
            if pair.get(key):
                doc(pair[key])
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for pair in eval_pairs:
        if not pair.get("positive"):
            continue
        if pair.get("negative"):
            doc(pair["negative"])
        qid = query_ids.setdefault(pair["query"], f"q{len(query_ids)}")
        qrels[qid][doc(pair["positive"])] = 1
    if not qrels:
        raise ValueError("no held-out pair with a positive document: nothing to evaluate the embedders on")
    kept = sorted(qrels, key=lambda q: int(q[1:]))[:max_queries]
    corpus = {i: t for t, i in doc_ids.items()}
    if max_corpus is not None and len(corpus) > max_corpus:
        relevant = {d for q in kept for d in qrels[q]}
        others = sorted((d for d in corpus if d not in relevant),
                        key=lambda d: hashlib.sha256(corpus[d].encode()).hexdigest())
        keep = relevant | set(others[: max(0, max_corpus - len(relevant))])
        corpus = {d: t for d, t in corpus.items() if d in keep}
    return RetrievalTask(queries={q: t for t, q in query_ids.items() if q in kept}, corpus=corpus,
                         qrels={q: qrels[q] for q in kept})


def compare_embedders(champion, challenger, task: RetrievalTask, k: int = 10, seed: int = 0
                      ) -> dict[str, Interval]:
    """Paired intervals of challenger - champion per metric (``ndcg@k``, ``mrr@k``, ``recall@k``)."""
    scored = [evaluate_retrieval(model, task.queries, task.corpus, task.qrels, k=k) for model in (champion, challenger)]
    if scored[0]["query_ids"] != scored[1]["query_ids"]:
        raise RuntimeError("the two evaluations scored different queries")
    return {f"{name}@{k}": paired_interval(scored[0][f"per_query_{name}"], scored[1][f"per_query_{name}"], seed=seed)
            for name in ("ndcg", "mrr", "recall")}
