"""The whole error analysis behind the error_patterns asset: topic clusters plus rule-based error types."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from feedback_pipeline.analysis.error_types import classify_errors, error_type_summary, query_response_similarity
from feedback_pipeline.analysis.patterns import ErrorPatterns, embedding_sample, error_patterns


def analyse_errors(
    df: pd.DataFrame,
    embeddings_for: Callable[[list[str]], np.ndarray],
    max_embedded: int | None = None,
    **cluster_options,
) -> tuple[ErrorPatterns, pd.DataFrame]:
    """Clusters of disliked answers and the error-type summary over the rated rows of ``df``.

    Rules that need no model (refusal, truncation, length, language, repetition, tools, latency) run on every
    rated row; the two that need embeddings (clusters, ``ignores_question``) use the same
    :func:`embedding_sample` of at most ``max_embedded`` rows, so one set of vectors serves both.
    """
    rated = df[df["label"].isin(["liked", "disliked"])]
    patterns = error_patterns(df, embeddings_for, max_embedded=max_embedded, **cluster_options)
    sample = embedding_sample(rated, max_embedded)
    similarity = pd.Series(np.nan, index=rated.index)
    if len(sample):
        similarity.loc[sample.index] = query_response_similarity(sample, embeddings_for)
    return patterns, error_type_summary(rated, classify_errors(rated, similarity=similarity.to_numpy()))
