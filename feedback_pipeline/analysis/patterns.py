"""Where the model fails: dislikes per subject/intent, and topic clusters of disliked answers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import AgglomerativeClustering, MiniBatchKMeans
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from feedback_pipeline.analysis.quality import fmt_ci, fmt_pct, md_cell, md_table, segment_values
from feedback_pipeline.analysis.stats import wilson_interval

# Words of two or more characters that start with a letter: drops numbers and stray symbols.
_TOKEN_PATTERN = r"(?u)\b[^\W\d_]\w+\b"
# Contraction stubs ("don't" -> "don") and chat filler name no topic.
_STOP_WORDS = sorted(
    ENGLISH_STOP_WORDS
    | {"don", "doesn", "didn", "isn", "aren", "wasn", "ve", "ll", "re", "im", "ok", "okay", "sure", "yes"}
    | {"hi", "hello", "thanks", "thank", "please", "like", "just", "make", "want", "know", "need", "think"}
)


@dataclass
class ErrorCluster:
    id: int
    name: str
    terms: list[str]
    size: int  # disliked rows in the cluster
    liked_nearby: int  # liked rows whose nearest disliked cluster is this one, close enough to count
    dislike_rate: float
    ci_low: float
    ci_high: float
    example_queries: list[str]
    example_responses: list[str]
    sample_comments: list[str]
    ids: list = field(default_factory=list)  # feedback ids of the disliked members, for drill-down
    liked_ids: list = field(default_factory=list)  # feedback ids of the liked rows counted in liked_nearby
    quoted_ids: list = field(default_factory=list)  # feedback ids whose text the examples and comments quote


@dataclass
class ErrorPatterns:
    by_segment: dict[str, pd.DataFrame]
    clusters: list[ErrorCluster]
    n_disliked: int  # disliked rows clustered (the sample's, when sampled)
    n_unclustered: int
    sample_fraction: float = 1.0  # share of rated rows embedded; cluster counts scale by 1 / this
    n_rated: int = 0  # rated rows in all

    def quoted_ids(self) -> set[str]:
        """Feedback ids whose (redacted) text the report quotes: cluster examples, comments, segment examples."""
        ids = {str(i) for c in self.clusters for i in c.quoted_ids}
        for table in self.by_segment.values():
            if "example_ids" in table:
                ids |= {str(i) for examples in table["example_ids"] for i in examples}
        return ids


def embedding_sample(rated: pd.DataFrame, max_rows: int | None) -> pd.DataFrame:
    """``rated`` itself, or when it has more than ``max_rows`` rows, the uniform sample of the ``max_rows`` rows
    with the smallest sha256 of their id.

    Ranking by hash rather than drawing at random keeps the sample stable from run to run: a row once in stays
    in until the data grows enough to push it out, so the embedding cache keeps serving it. Liked and disliked
    rows are sampled at one rate, which leaves dislike rates (and their intervals) unbiased.
    """
    if max_rows is None or len(rated) <= max_rows:
        return rated
    keys = rated["id"].astype(str) if "id" in rated else pd.Series(rated.index.astype(str), index=rated.index)
    ranks = keys.map(lambda k: hashlib.sha256(k.encode()).hexdigest())
    return rated.loc[ranks.sort_values(kind="stable").index[:max_rows]].sort_index()


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


# Above this many rows, exact average linkage (O(n^2) memory and time) gives way to two stages.
MAX_EXACT_ROWS = 4000


def _agglomerate(vectors: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Average-linkage labels; for large inputs, k-means micro-clusters first, then linkage on their centroids.

    The micro-clusters (20 or more rows each) are far tighter than the threshold, so merging them by their
    centroids keeps the topics while memory stays linear in n (100,000 disliked rows fit in a report run).
    """
    linkage = dict(n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance_threshold)
    if len(vectors) <= MAX_EXACT_ROWS:
        return AgglomerativeClustering(**linkage).fit_predict(vectors)
    # Random init: k-means++ seeding is sequential in k and dominated the run time at this size.
    micro = MiniBatchKMeans(n_clusters=min(len(vectors) // 20, 1000), init="random", random_state=0, n_init=1,
                            batch_size=4096, max_iter=20).fit(vectors)
    return AgglomerativeClustering(**linkage).fit_predict(_normalise(micro.cluster_centers_))[micro.labels_]


def cluster_texts(embeddings: np.ndarray, min_cluster_size: int = 5, distance_threshold: float = 0.8) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine distance; clusters below ``min_cluster_size`` -> -1.

    Agglomerative with a distance threshold rather than k-means: the number of failure topics is
    unknown, and most disliked answers belong to no topic at all. Labels are renumbered 0, 1, ...
    by decreasing size. Exact up to MAX_EXACT_ROWS rows, two-stage (see ``_agglomerate``) beyond.
    The default 0.8 fits all-MiniLM-L6-v2: same-topic texts average 0.55-0.72 apart, unrelated
    ones about 1.0; 0.85 and up starts merging unrelated topics on real feedback (oasst1).
    """
    n = len(embeddings)
    if n < max(2, min_cluster_size):
        return np.full(n, -1, dtype=int)
    raw = _agglomerate(_normalise(embeddings), distance_threshold)
    ids, sizes = np.unique(raw, return_counts=True)
    keep = [i for i, s in sorted(zip(ids, sizes), key=lambda p: (-p[1], p[0])) if s >= min_cluster_size]
    mapping = {old: new for new, old in enumerate(keep)}
    return np.array([mapping.get(r, -1) for r in raw], dtype=int)


def split_broad(vectors: np.ndarray, labels: np.ndarray, min_cluster_size: int, distance_threshold: float,
                max_share: float = 0.25, step: float = 0.1, floor: float = 0.5) -> np.ndarray:
    """Re-cluster any cluster holding more than ``max_share`` of the rows at a threshold ``step`` tighter (down
    to ``floor``), until none does; labels renumbered by size. In a single-domain corpus (FeedbackQA: every
    question is about COVID-19) the default threshold puts most answers in one "topic", which names nothing."""
    labels = np.asarray(labels).copy()
    threshold = distance_threshold - step
    while threshold >= floor - 1e-9:
        ids, sizes = np.unique(labels[labels != -1], return_counts=True)
        broad = [i for i, n in zip(ids, sizes) if n > max_share * len(labels) and n >= 4 * min_cluster_size]
        if not broad:
            break
        for b in broad:
            members = np.flatnonzero(labels == b)
            sub = cluster_texts(vectors[members], min_cluster_size, threshold)
            labels[members] = np.where(sub == -1, -1, labels.max() + 1 + sub)
        threshold -= step
    ids, sizes = np.unique(labels[labels != -1], return_counts=True)
    order = [i for i, _ in sorted(zip(ids, sizes), key=lambda p: (-p[1], p[0]))]
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(r, -1) for r in labels], dtype=int)


def cluster_terms(texts: Sequence[str], labels: Sequence[int], top_k: int = 5) -> dict[int, list[str]]:
    """Top ``top_k`` terms per cluster by class-based TF-IDF (as in BERTopic).

    Each cluster's texts are one document; weight = tf(term, class) * log(1 + A / tf(term, all)),
    A the average number of words per class. Noise (-1) takes part as a class, so words common
    everywhere are damped, but gets no entry in the result.
    """
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    docs = [" ".join(t for t, l in zip(texts, labels) if l == c) for c in classes]
    try:
        vectorizer = CountVectorizer(stop_words=_STOP_WORDS, token_pattern=_TOKEN_PATTERN)
        tf = vectorizer.fit_transform(docs).toarray().astype(float)
    except ValueError:  # empty vocabulary: nothing but stop words
        return {c: [] for c in classes if c != -1}
    avg_words = tf.sum() / len(classes)
    weights = tf * np.log1p(avg_words / np.maximum(tf.sum(axis=0), 1.0))
    vocab = vectorizer.get_feature_names_out()
    result = {}
    for row, c in enumerate(classes):
        if c == -1:
            continue
        # Stable sort on the alphabetical vocabulary breaks ties deterministically.
        order = np.argsort(-weights[row], kind="stable")
        result[c] = [str(vocab[j]) for j in order[:top_k] if weights[row, j] > 0]
    return result


def _truncate(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _row_text(rows: pd.DataFrame) -> list[str]:
    return (rows["query"].fillna("").astype(str) + "\n\n" + rows["response"].fillna("").astype(str)).tolist()


def dislikes_by(df: pd.DataFrame, column: str, max_examples: int = 3) -> pd.DataFrame:
    """Disliked rows per segment with the segment's dislike rate (disliked / rated) and example queries."""
    rated = df[df["label"].isin(["liked", "disliked"])].assign(segment=lambda d: segment_values(d[column]))
    rows = []
    for segment, group in rated.groupby("segment", sort=False):
        bad = group[group["label"] == "disliked"]
        if bad.empty:
            continue
        low, high = wilson_interval(len(bad), len(group))
        examples = [_truncate(q, 80) for q in bad["query"].head(max_examples)]  # short: a table cell
        quoted = [str(i) for i in bad["id"].head(max_examples)] if "id" in bad else []
        rows.append([segment, len(bad), len(group), len(bad) / len(group), low, high, examples, quoted])
    columns = ["segment", "disliked", "rated", "dislike_rate", "ci_low", "ci_high", "examples", "example_ids"]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values(["disliked", "dislike_rate"], ascending=False, ignore_index=True)


def _liked_assignment(centroids: np.ndarray, radii: np.ndarray, liked: np.ndarray) -> np.ndarray:
    """Each liked row's cluster position: its nearest centroid if at least as close as that cluster's radius,
    else -1."""
    if len(liked) == 0 or len(centroids) == 0:
        return np.full(len(liked), -1, dtype=int)
    sims = liked @ centroids.T
    nearest = sims.argmax(axis=1)
    inside = sims[np.arange(len(liked)), nearest] >= radii[nearest]
    return np.where(inside, nearest, -1)


def _make_cluster(
    cid: int, members: pd.DataFrame, sims: np.ndarray, liked: pd.DataFrame, terms: list[str], max_examples: int
) -> ErrorCluster:
    central = members.iloc[np.argsort(-sims, kind="stable")]  # most typical first
    commented = central[[isinstance(c, str) and bool(c.strip()) for c in central["comment"]]]
    comments = [_truncate(c) for c in commented["comment"]]
    quoted = [*central["id"].head(max_examples), *commented["id"].head(max_examples)] if "id" in central else []
    size, liked_nearby = len(members), len(liked)
    low, high = wilson_interval(size, size + liked_nearby)
    return ErrorCluster(
        id=int(cid),
        name=", ".join(terms[:4]) or f"cluster {cid}",
        terms=terms,
        size=size,
        liked_nearby=int(liked_nearby),
        dislike_rate=size / (size + liked_nearby),
        ci_low=low,
        ci_high=high,
        example_queries=[_truncate(q) for q in central["query"].head(max_examples)],
        example_responses=[_truncate(r) for r in central["response"].head(max_examples)],
        sample_comments=comments[:max_examples],
        ids=central["id"].tolist() if "id" in central else [],
        liked_ids=liked["id"].tolist() if "id" in liked else [],
        quoted_ids=sorted({str(i) for i in quoted}),
    )


def error_patterns(
    df: pd.DataFrame,
    embeddings_for: Callable[[list[str]], np.ndarray],
    min_cluster_size: int = 5,
    max_examples: int = 3,
    distance_threshold: float = 0.8,
    assign_threshold: float | None = 0.5,
    max_embedded: int | None = None,
    max_share: float | None = 0.25,
    population: int | None = None,
) -> ErrorPatterns:
    """Dislikes by subject and intent, plus topic clusters of disliked query+response texts.

    ``embeddings_for`` maps texts to vectors (a real model in tests, a cached encoder in the pipeline).
    A cluster's dislike rate counts the liked rows on the same topic: a liked row joins its nearest
    cluster when its cosine similarity to the centroid reaches the cluster's radius (its least similar
    disliked member) or ``assign_threshold``, whichever is lower. The fixed floor matters for tight
    clusters, such as one canned refusal to many questions, whose radius would shut out good answers
    to the same questions (their response text differs). ``None`` uses the radius alone.

    A cluster holding more than ``max_share`` of the disliked rows is split (:func:`split_broad`); ``None``
    keeps it whole.

    Embedding is the cost (about 100 texts/s on two CPU cores), so above ``max_embedded`` rated rows the
    clusters come from :func:`embedding_sample`; segment tables always use every row.
    """
    by_segment = {col: dislikes_by(df, col, max_examples) for col in ("subject", "intent")}
    rated = df[df["label"].isin(["liked", "disliked"])]
    sample = embedding_sample(rated, max_embedded)
    n_rated = max(population or 0, len(rated))
    fraction = len(sample) / n_rated if n_rated else 1.0
    bad = sample[sample["label"] == "disliked"].reset_index(drop=True)
    good = sample[sample["label"] == "liked"]
    if bad.empty:
        return ErrorPatterns(by_segment, [], 0, 0, fraction, n_rated)
    texts = _row_text(bad)
    vectors = _normalise(embeddings_for(texts))
    labels = cluster_texts(vectors, min_cluster_size, distance_threshold)
    if max_share is not None:
        labels = split_broad(vectors, labels, min_cluster_size, distance_threshold, max_share)
    cids = [c for c in sorted(set(labels.tolist())) if c != -1]
    if not cids:
        return ErrorPatterns(by_segment, [], len(bad), len(bad), fraction, n_rated)
    terms = cluster_terms(texts, labels)
    centroids = _normalise(np.stack([vectors[labels == c].mean(axis=0) for c in cids]))
    member_sims = [vectors[labels == c] @ centroids[i] for i, c in enumerate(cids)]
    radii = np.array([s.min() for s in member_sims])
    if assign_threshold is not None:
        radii = np.minimum(radii, assign_threshold)
    liked_vectors = _normalise(embeddings_for(_row_text(good))) if len(good) else np.zeros((0, vectors.shape[1]))
    assigned = _liked_assignment(centroids, radii, liked_vectors)
    clusters = [
        _make_cluster(c, bad[labels == c], member_sims[i], good[assigned == i], terms.get(c, []), max_examples)
        for i, c in enumerate(cids)
    ]
    clusters.sort(key=lambda cl: (-cl.size, cl.id))
    return ErrorPatterns(by_segment, clusters, len(bad), int((labels == -1).sum()), fraction, n_rated)


def _segment_markdown(column: str, table: pd.DataFrame, quotes: bool = True) -> str:
    if table.empty:
        return f"## Dislikes by {column}\n\nNo disliked answers."
    rows = [
        [r["segment"], r["disliked"], r["rated"], fmt_pct(r["dislike_rate"]), fmt_ci(r["ci_low"], r["ci_high"])]
        + ([" / ".join(r["examples"])] if quotes else [])
        for r in table.to_dict("records")
    ]
    header = [column, "disliked", "rated", "dislike rate", "95% CI"] + (["example queries"] if quotes else [])
    return f"## Dislikes by {column}\n\n" + md_table(header, rows)


def _cluster_markdown(c: ErrorCluster, quotes: bool = True) -> str:
    lines = [
        f"### Cluster {c.id}: {md_cell(c.name)}",
        "",
        f"{c.size} disliked answers; {c.liked_nearby} liked answers on the same topic; dislike rate "
        f"{fmt_pct(c.dislike_rate)} (95% CI {fmt_ci(c.ci_low, c.ci_high)}). Top terms: {', '.join(c.terms)}.",
        "",
    ]
    if not quotes:
        return "\n".join(lines + ["Examples and comments: in the report file."])
    for query, response in zip(c.example_queries, c.example_responses):
        lines += [f"- **Q:** {md_cell(query)}", f"  - **A:** {md_cell(response)}"]
    if c.sample_comments:
        lines += ["", "User comments:"] + [f"> {md_cell(comment)}" for comment in c.sample_comments]
    return "\n".join(lines)


def patterns_markdown(patterns: ErrorPatterns, quotes: bool = True) -> str:
    """Markdown for analysts: segment tables, then failure clusters largest first with examples. ``quotes=False``
    leaves out every quoted text (examples, comments): the version for Dagster's metadata, which erasure cannot
    rewrite; the report file has them."""
    parts = ["# Error patterns", ""]
    parts += [_segment_markdown(col, table, quotes) + "\n" for col, table in patterns.by_segment.items()]
    clustered = patterns.n_disliked - patterns.n_unclustered
    parts.append(
        f"## Clusters of disliked answers\n\n{clustered} of {patterns.n_disliked} disliked answers fall into "
        f"{len(patterns.clusters)} topic clusters; the rest are one-offs. A cluster's dislike rate compares "
        "it with liked answers on the same topic.\n"
    )
    if patterns.sample_fraction < 1:
        share = patterns.sample_fraction
        parts.append(
            f"Clusters were found on a uniform sample of {share:.1%} of the {patterns.n_rated} rated answers, so "
            f"counts below are sample counts: multiply by {1 / share:.1f} for the whole. Dislike rates and their "
            "intervals need no scaling (liked and disliked rows were sampled alike).\n"
        )
    parts += [_cluster_markdown(c, quotes) + "\n" for c in patterns.clusters]
    return "\n".join(parts)
