"""Analysis of stored feedback: like rates per segment, and where (on which topics) the model fails.

Nothing here loads a model: embedding functions are passed in, so reports run on cached vectors and
tests choose their own model.
"""

from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached, model_identifier
from feedback_pipeline.analysis.patterns import (
    ErrorCluster,
    ErrorPatterns,
    cluster_terms,
    cluster_texts,
    error_patterns,
    patterns_markdown,
)
from feedback_pipeline.analysis.quality import QualityReport, like_rate_by, quality_report, report_markdown
from feedback_pipeline.analysis.stats import compare_rates, wilson_interval

__all__ = [
    "EmbeddingCache",
    "ErrorCluster",
    "ErrorPatterns",
    "QualityReport",
    "cluster_terms",
    "cluster_texts",
    "compare_rates",
    "encode_cached",
    "error_patterns",
    "like_rate_by",
    "model_identifier",
    "patterns_markdown",
    "quality_report",
    "report_markdown",
    "wilson_interval",
]
