"""feedback_quality_report, error_patterns, improvement_suggestions: what analysts read in the UI."""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from feedback_pipeline.analysis.drift import detect_drops, drops_markdown
from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached, model_identifier
from feedback_pipeline.analysis.error_types import (
    classify_errors, error_type_summary, error_types_markdown, sampled_similarity,
)
from feedback_pipeline.analysis.patterns import error_patterns as find_patterns
from feedback_pipeline.analysis.patterns import patterns_markdown
from feedback_pipeline.analysis.plots import like_rate_over_time, png_markdown, segment_bars
from feedback_pipeline.analysis.quality import DEFAULT_SEGMENTS, quality_report, report_markdown
from feedback_pipeline.analysis.suggestions import cluster_trends, suggest, suggestions_frame, suggestions_markdown
from feedback_pipeline.defs.checks import no_identifiers
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.store.suggestions import save_suggestions


class QualityReportConfig(dg.Config):
    min_count: int = Field(10, description="Segments with fewer rated rows are listed apart as 'too little data'.")
    drop_min_count: int = Field(20, description="Ratings needed in a segment's latest week to judge a drop.")


def _save_png(workspace: WorkspaceResource, name: str, png: bytes) -> Path:
    path = workspace.path("reports", "plots") / f"{name}.png"
    path.write_bytes(png)
    return path


@dg.asset(group_name="analysis", kinds={"pandas", "matplotlib"},
          description="Like-rate with counts and 95% intervals by model, version, intent, project and subject; "
                      "daily/weekly trends; like-rate drop detection.")
def feedback_quality_report(context: dg.AssetExecutionContext, config: QualityReportConfig,
                            cleaned_feedback: pd.DataFrame, workspace: WorkspaceResource) -> dict:
    report = quality_report(cleaned_feedback, min_count=config.min_count)
    drops = pd.concat([detect_drops(cleaned_feedback, column, min_count=config.drop_min_count).assign(column=column)
                       for column in DEFAULT_SEGMENTS], ignore_index=True)
    plots = {f"like_rate_per_{freq_name}": like_rate_over_time(cleaned_feedback, by="model_name", freq=freq)
             for freq, freq_name in (("D", "day"), ("W", "week"))}
    plots.update({f"like_rate_by_{column}": segment_bars(table, title=f"Like rate by {column}")
                  for column, table in report.tables.items() if len(table) > 1})
    markdown = "\n\n".join([report_markdown(report), drops_markdown(drops)])
    path = workspace.path("reports") / "feedback_quality_report.md"
    path.write_text(markdown, encoding="utf-8")
    for name, png in plots.items():
        _save_png(workspace, name, png)
    overall = report.overall
    context.add_output_metadata({
        "rated": int(overall["rated"]), "liked": int(overall["liked"]), "disliked": int(overall["disliked"]),
        "like_rate": float(overall["like_rate"]), "drop_alarms": int(drops["alarm"].sum()),
        "report": dg.MetadataValue.md(markdown), "report_file": dg.MetadataValue.path(str(path)),
        **{name: dg.MetadataValue.md(png_markdown(png, name.replace("_", " "))) for name, png in plots.items()},
    })
    return {"report_file": str(path), "overall": overall, "tables": report.tables, "drops": drops}


class ErrorPatternsConfig(dg.Config):
    min_cluster_size: int = Field(5, description="Smallest group of similar disliked answers reported as a cluster.")
    distance_threshold: float = Field(0.8, description="Cosine distance below which answers join one cluster.")
    max_cluster_share: float | None = Field(
        0.25, description="A cluster holding more than this share of the disliked answers is split at a tighter "
                          "threshold (in a single-domain corpus one 'topic' otherwise swallows most answers).")
    max_seq_length: int = Field(64, description="Tokens embedded per text: the query and the opening of the answer "
                                                "carry the topic (vectors at 64 vs 128 tokens: cosine 0.99 on average).")
    max_embedded_rows: int | None = Field(
        5000, description="Above this many rated rows, clusters and the ignores_question rule use a uniform sample "
                          "(embedding runs at about 100 texts/s on two CPU cores). None embeds every row.")


@dg.asset(group_name="analysis", kinds={"pandas", "sklearn"},
          description="Disliked responses by subject/intent, by meaning (all-MiniLM clusters with trends) and by "
                      "rule-based error type (refusal, truncated, too short, wrong language, repetition ...).")
def error_patterns(context: dg.AssetExecutionContext, config: ErrorPatternsConfig, cleaned_feedback: pd.DataFrame,
                   workspace: WorkspaceResource) -> dict:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(workspace.embedding_model_path(), device="cpu")
    model.max_seq_length = config.max_seq_length
    with EmbeddingCache(workspace.path("cache") / "embeddings.sqlite") as cache:
        model_id = model_identifier(model)  # once: hashing the weights per call would cost 0.25 s each
        embed = lambda texts: encode_cached(model, texts, cache, model_id=model_id)  # noqa: E731
        patterns = find_patterns(cleaned_feedback, embed, max_embedded=config.max_embedded_rows,
                                 min_cluster_size=config.min_cluster_size,
                                 distance_threshold=config.distance_threshold, max_share=config.max_cluster_share)
        # The same sample as the clusters, so one set of vectors serves both (as analyse_errors does).
        rated = cleaned_feedback[cleaned_feedback["label"].isin(["liked", "disliked"])]
        similarity = sampled_similarity(rated, embed, config.max_embedded_rows)
    flags = classify_errors(rated, similarity=similarity.to_numpy())
    summary = error_type_summary(rated, flags)
    trends = cluster_trends(cleaned_feedback, patterns.clusters)
    trend_lines = [f"- cluster {c.id} ({c.name}): {trends.get(c.id, 'stable')}" for c in patterns.clusters]
    if trends and set(trends.values()) == {"no earlier period"}:  # a first run: said once, not per cluster
        trend_lines = ["No earlier period yet: every answer is from the last 2 weeks, so no cluster can be new, "
                       "growing or shrinking."]
    markdown = "\n\n".join([patterns_markdown(patterns), "## Cluster trends (last 4 weeks)\n\n" +
                            ("\n".join(trend_lines) or "No clusters."), error_types_markdown(summary)])
    path = workspace.path("reports") / "error_patterns.md"
    path.write_text(markdown, encoding="utf-8")
    context.add_output_metadata({
        "disliked": patterns.n_disliked, "clusters": len(patterns.clusters), "unclustered": patterns.n_unclustered,
        "embedded_share": round(patterns.sample_fraction, 4),
        "report": dg.MetadataValue.md(markdown), "report_file": dg.MetadataValue.path(str(path)),
    })
    return {"report_file": str(path), "patterns": patterns, "error_summary": summary, "trends": trends,
            "flags": flags, "similarity": similarity}


@dg.asset(group_name="analysis", kinds={"pandas", "sql"},
          description="One suggestion per finding (topic cluster with what its disliked answers get wrong, length "
                      "gap, error type), ranked by excess dislikes over the baseline with 95% intervals; stored as "
                      "rows in improvement_suggestions.")
def improvement_suggestions(context: dg.AssetExecutionContext, cleaned_feedback: pd.DataFrame, error_patterns: dict,
                            feedback_quality_report: dict, feedback_store: FeedbackStoreResource,
                            workspace: WorkspaceResource) -> dict:
    found = suggest(cleaned_feedback, error_patterns["patterns"], error_patterns["error_summary"],
                    feedback_quality_report["tables"], flags=error_patterns.get("flags"),
                    similarity=error_patterns.get("similarity"))
    stored = save_suggestions(feedback_store.store(), context.run.run_id, suggestions_frame(found))
    markdown = suggestions_markdown(found)
    path = workspace.path("reports") / "improvement_suggestions.md"
    path.write_text(markdown, encoding="utf-8")
    context.add_output_metadata({"suggestions": stored, "failing": sum(s.status == "failing" for s in found),
                                 "report": dg.MetadataValue.md(markdown),
                                 "by_kind": dg.MetadataValue.json(pd.Series([s.kind for s in found]).value_counts().to_dict()),
                                 "report_file": dg.MetadataValue.path(str(path))})
    return {"report_file": str(path), "count": stored, "run_id": context.run.run_id}


@dg.asset_check(asset=feedback_quality_report, description="No segment's like rate dropped (WARN: look, not block).")
def check_like_rate_drops(feedback_quality_report: dict) -> dg.AssetCheckResult:
    drops = feedback_quality_report["drops"]
    alarms = drops[drops["alarm"]]
    return dg.AssetCheckResult(
        passed=alarms.empty, severity=dg.AssetCheckSeverity.WARN,
        metadata={"alarms": len(alarms), "segments_checked": len(drops),
                  "findings": dg.MetadataValue.md(drops_markdown(alarms) if len(alarms) else "none")})


def _report_identifiers(report: dict) -> dg.AssetCheckResult:
    return no_identifiers([Path(report["report_file"]).read_text(encoding="utf-8")])


@dg.asset_check(asset=feedback_quality_report, description="The report shows no detectable identifier.")
def check_quality_report_no_identifiers(feedback_quality_report: dict) -> dg.AssetCheckResult:
    return _report_identifiers(feedback_quality_report)


@dg.asset_check(asset=error_patterns, description="The report's examples and comments hold no detectable identifier.")
def check_error_patterns_no_identifiers(error_patterns: dict) -> dg.AssetCheckResult:
    return _report_identifiers(error_patterns)


@dg.asset_check(asset=improvement_suggestions, description="The suggestions hold no detectable identifier.")
def check_suggestions_no_identifiers(improvement_suggestions: dict) -> dg.AssetCheckResult:
    return _report_identifiers(improvement_suggestions)
