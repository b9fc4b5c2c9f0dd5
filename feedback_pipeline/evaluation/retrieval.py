"""Retrieval quality of an embedding model: nDCG@k, MRR@k, Recall@k, and a paired bootstrap between two models.

The metric functions are written from the definitions (not taken from sentence-transformers' evaluator), so they
can check it: with graded relevance ``rel`` (as in BEIR / trec_eval, gain = rel),

    DCG@k  = sum_{i=1..k} rel(d_i) / log2(i + 1),   nDCG@k = DCG@k / DCG@k of the ideal ranking
    RR@k   = 1 / rank of the first relevant document in the top k (0 if none)
    R@k    = |relevant in top k| / |relevant|

Queries without any relevant document are not scored; a judged query missing from the run scores 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    gains = {d: float(r) for d, r in relevant.items() if r > 0}
    if not gains:
        raise ValueError("nDCG is undefined for a query without relevant documents")
    dcg = sum(gains.get(doc, 0.0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:k]))
    return dcg / ideal


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    wanted = {d for d, r in relevant.items() if r > 0}
    if not wanted:
        raise ValueError("recall is undefined for a query without relevant documents")
    return len(wanted & set(ranked[:k])) / len(wanted)


def retrieval_metrics(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]],
                      k: int = 10) -> dict:
    """Mean nDCG/MRR/Recall@k over the judged queries, plus the per-query values (ordered as ``query_ids``)."""
    query_ids = sorted(q for q, rel in qrels.items() if any(r > 0 for r in rel.values()))
    if not query_ids:
        raise ValueError("qrels hold no query with a relevant document")
    per = {name: [fn(list(run.get(q, [])), qrels[q], k) for q in query_ids]
           for name, fn in (("ndcg", ndcg_at_k), ("mrr", mrr_at_k), ("recall", recall_at_k))}
    return {f"ndcg@{k}": float(np.mean(per["ndcg"])), f"mrr@{k}": float(np.mean(per["mrr"])),
            f"recall@{k}": float(np.mean(per["recall"])), "n_queries": len(query_ids), "query_ids": query_ids,
            "per_query_ndcg": per["ndcg"], "per_query_mrr": per["mrr"], "per_query_recall": per["recall"]}


def encode_corpus(model, corpus: Mapping[str, str], batch_size: int = 64, show_progress_bar: bool = False):
    """Normalised document embeddings (a float32 tensor, rows in ``corpus`` order)."""
    return model.encode_document(list(corpus.values()), batch_size=batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=show_progress_bar).float().cpu()


def search(model, queries: Mapping[str, str], corpus_ids: Sequence[str], corpus_embeddings, k: int = 10,
           batch_size: int = 64) -> dict[str, list[str]]:
    """Top-k document ids per query by dot product of normalised embeddings (= cosine)."""
    import torch

    qids = list(queries)
    q_emb = model.encode_query([queries[q] for q in qids], batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True).float().cpu()
    _, top = torch.topk(q_emb @ corpus_embeddings.T, k=min(k, len(corpus_ids)), dim=1)
    return {q: [corpus_ids[int(i)] for i in row] for q, row in zip(qids, top)}


def evaluate_retrieval(model, queries: Mapping[str, str], corpus: Mapping[str, str],
                       qrels: Mapping[str, Mapping[str, float]], batch_size: int = 64, k: int = 10,
                       corpus_embeddings=None) -> dict:
    """Encode the corpus once (or reuse ``corpus_embeddings``, aligned with ``corpus``), retrieve the top k for each
    judged query and score it. Returns the metrics, per-query lists and the encoding/search wall times."""
    judged = {q: queries[q] for q in qrels if q in queries}
    if not judged:
        raise ValueError("none of the judged queries is in `queries`")
    start = time.perf_counter()
    if corpus_embeddings is None:
        corpus_embeddings = encode_corpus(model, corpus, batch_size)
    encode_s = time.perf_counter() - start
    if corpus_embeddings.shape[0] != len(corpus):
        raise ValueError(f"corpus_embeddings has {corpus_embeddings.shape[0]} rows for {len(corpus)} documents")
    start = time.perf_counter()
    run = search(model, judged, list(corpus), corpus_embeddings, k, batch_size)
    search_s = time.perf_counter() - start
    result = retrieval_metrics(run, {q: qrels[q] for q in judged}, k)
    result.update(corpus_size=len(corpus), corpus_encode_s=encode_s, query_search_s=search_s)
    return result


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict:
    """Percentile bootstrap CI of mean(b - a) over paired per-query scores (``scipy.stats.bootstrap``: queries
    resampled with replacement).

    ``p_not_better`` is the share of resamples where b does not beat a (a one-sided bootstrap p-value)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("a and b must be non-empty 1-d sequences of the same length (paired per query)")
    diff = b - a
    if np.ptp(diff) == 0:  # every resample has the same mean (scipy needs two distinct values)
        means = np.full(n, diff.mean())
        low = high = float(diff.mean())
    else:
        res = stats.bootstrap((diff,), np.mean, vectorized=True, n_resamples=n, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))
        means, low, high = res.bootstrap_distribution, res.confidence_interval.low, res.confidence_interval.high
    return {"mean_diff": float(diff.mean()), "ci_low": float(low), "ci_high": float(high), "confidence": confidence,
            "n_resamples": n, "p_not_better": float((means <= 0).mean())}
