"""Champion vs challenger embedder on held-out query -> document pairs: nDCG@10, MRR@10, Recall@k, paired.

The held-out pairs are the ``eval`` split of ``embedding_pairs`` (no query of it was trained on). The corpus is
every distinct document of both splits (positives and negatives), so a model must find the liked document among
all the others; a query's relevant documents are all its positives.
"""

from __future__ import annotations

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
                   max_queries: int | None = None) -> RetrievalTask:
    """Queries, corpus and relevance judgements from embedding pair records (``query``, ``positive``, ``negative``)."""
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
    return RetrievalTask(queries={q: t for t, q in query_ids.items() if q in kept},
                         corpus={i: t for t, i in doc_ids.items()}, qrels={q: qrels[q] for q in kept})


def compare_embedders(champion, challenger, task: RetrievalTask, k: int = 10, seed: int = 0
                      ) -> dict[str, Interval]:
    """Paired intervals of challenger - champion per metric (``ndcg@k``, ``mrr@k``, ``recall@k``)."""
    scored = [evaluate_retrieval(model, task.queries, task.corpus, task.qrels, k=k) for model in (champion, challenger)]
    if scored[0]["query_ids"] != scored[1]["query_ids"]:
        raise RuntimeError("the two evaluations scored different queries")
    return {f"{name}@{k}": paired_interval(scored[0][f"per_query_{name}"], scored[1][f"per_query_{name}"], seed=seed)
            for name in ("ndcg", "mrr", "recall")}
