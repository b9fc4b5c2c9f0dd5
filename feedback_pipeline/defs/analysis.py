"""feedback_quality_report and error_patterns: what analysts read in the UI."""


from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached
from feedback_pipeline.analysis.patterns import error_patterns as find_error_patterns, patterns_markdown
from feedback_pipeline.analysis.quality import quality_report, report_markdown
from feedback_pipeline.cleaning.pii import find_identifiers
from feedback_pipeline.defs.resources import WorkspaceResource


class QualityReportConfig(dg.Config):
    min_count: int = Field(10, description="Segments with fewer rated rows are listed apart as 'too little data'.")


@dg.asset(group_name="analysis", kinds={"pandas"},
          description="Like-rate with counts and 95% intervals by model, version, intent, project and subject.")
def feedback_quality_report(context: dg.AssetExecutionContext, config: QualityReportConfig,
                            cleaned_feedback: pd.DataFrame, workspace: WorkspaceResource) -> dict:
    report = quality_report(cleaned_feedback, min_count=config.min_count)
    markdown = report_markdown(report)
    path = workspace.path("reports") / "feedback_quality_report.md"
    path.write_text(markdown, encoding="utf-8")
    overall = report.overall
    context.add_output_metadata({
        "rated": int(overall["rated"]), "liked": int(overall["liked"]), "disliked": int(overall["disliked"]),
        "like_rate": float(overall["like_rate"]),
        "report": dg.MetadataValue.md(markdown), "report_file": dg.MetadataValue.path(str(path)),
    })
    return {"report_file": str(path), "overall": overall, "tables": {k: v.to_dict("records") for k, v in report.tables.items()},
            "weekly": report.weekly.to_dict("records")}


class ErrorPatternsConfig(dg.Config):
    min_cluster_size: int = Field(5, description="Smallest group of similar disliked answers reported as a cluster.")
    distance_threshold: float = Field(0.8, description="Cosine distance below which answers join one cluster.")
    max_seq_length: int = Field(128, description="Tokens embedded per query+response (topic needs no more).")


@dg.asset(group_name="analysis", kinds={"pandas", "sklearn"},
          description="Disliked responses grouped by subject/intent and by meaning (all-MiniLM clusters).")
def error_patterns(context: dg.AssetExecutionContext, config: ErrorPatternsConfig, cleaned_feedback: pd.DataFrame,
                   workspace: WorkspaceResource) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(workspace.embedding_model_path(), device="cpu")
    model.max_seq_length = config.max_seq_length
    with EmbeddingCache(workspace.path("cache") / "embeddings.sqlite") as cache:
        patterns = find_error_patterns(cleaned_feedback, lambda texts: encode_cached(model, texts, cache),
                                       min_cluster_size=config.min_cluster_size,
                                       distance_threshold=config.distance_threshold)
    markdown = patterns_markdown(patterns)
    path = workspace.path("reports") / "error_patterns.md"
    path.write_text(markdown, encoding="utf-8")
    context.add_output_metadata({
        "disliked": patterns.n_disliked, "clusters": len(patterns.clusters), "unclustered": patterns.n_unclustered,
        "report": dg.MetadataValue.md(markdown), "report_file": dg.MetadataValue.path(str(path)),
    })
    return {"report_file": str(path), "clusters": [{k: v for k, v in vars(c).items() if k != "ids"} for c in patterns.clusters],
            "by_segment": {k: v.to_dict("records") for k, v in patterns.by_segment.items()}}


def _report_identifiers(report: dict) -> dg.AssetCheckResult:
    text = Path(report["report_file"]).read_text(encoding="utf-8")
    hits = find_identifiers(text)
    return dg.AssetCheckResult(passed=not hits, metadata={
        "identifiers_found": len(hits), "kinds": dg.MetadataValue.json(sorted({h.kind for h in hits}))})


@dg.asset_check(asset=feedback_quality_report, description="The report shows no detectable identifier.")
def check_quality_report_no_identifiers(feedback_quality_report: dict) -> dg.AssetCheckResult:
    return _report_identifiers(feedback_quality_report)


@dg.asset_check(asset=error_patterns, description="The report's examples and comments hold no detectable identifier.")
def check_error_patterns_no_identifiers(error_patterns: dict) -> dg.AssetCheckResult:
    return _report_identifiers(error_patterns)
