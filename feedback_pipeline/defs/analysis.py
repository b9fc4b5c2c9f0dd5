"""feedback_quality_report, error_patterns, improvement_suggestions: what analysts read in the UI.

None of them loads the cleaned table: the quality report, drops and plots come from SQL group-bys
(``label_counts``); patterns and suggestions read a bounded, stable sample (the rows with the smallest sample keys,
``max_analysed_rows``). Texts quoted in reports (examples, comments) go to the report files only, whose quoted
feedback ids are recorded for erasure; Dagster's metadata gets the reports without quotes.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from feedback_pipeline.analysis.drift import detect_drops_from_counts, drops_markdown, period_counts
from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached, model_identifier
from feedback_pipeline.analysis.error_types import (
    classify_errors, error_type_summary, error_types_markdown, sampled_similarity,
)
from feedback_pipeline.analysis.patterns import error_patterns as find_patterns
from feedback_pipeline.analysis.patterns import patterns_markdown
from feedback_pipeline.analysis.plots import like_rate_over_time_from_counts, period_frame, png_markdown, segment_bars
from feedback_pipeline.analysis.quality import (DEFAULT_SEGMENTS, quality_report_from_counts, report_markdown,
                                                segment_counts)
from feedback_pipeline.analysis.suggestions import cluster_trends, suggest, suggestions_frame, suggestions_markdown
from feedback_pipeline.defs.checks import no_identifiers
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.store.cleaned import analysis_sample, label_counts, window_size
from feedback_pipeline.store.quotes import file_artifact, record_quotes, suggestions_artifact
from feedback_pipeline.store.refs import TableRef
from feedback_pipeline.store.suggestions import save_suggestions
from feedback_pipeline.store.tables import CLEANED

_RATED = CLEANED.c.label.in_(["liked", "disliked"])


class QualityReportConfig(dg.Config):
    min_count: int = Field(10, description="Segments with fewer rated rows are listed apart as 'too little data'.")
    drop_min_count: int = Field(20, description="Ratings needed in a segment's latest week to judge a drop.")


def _save_png(workspace: WorkspaceResource, name: str, png: bytes) -> Path:
    path = workspace.path("reports", "plots") / f"{name}.png"
    path.write_bytes(png)
    return path


@dg.asset(group_name="analysis", kinds={"sql", "matplotlib"},
          description="Like-rate with counts and 95% intervals by model, version, intent, project and subject; "
                      "daily/weekly trends; like-rate drop detection. From SQL group-bys of the cleaned table.")
def feedback_quality_report(context: dg.AssetExecutionContext, config: QualityReportConfig,
                            cleaned_feedback: TableRef, feedback_store: FeedbackStoreResource,
                            workspace: WorkspaceResource) -> dict:
    overall, per_value = label_counts(feedback_store.store(), cleaned_feedback.window_start,
                                      cleaned_feedback.window_end, DEFAULT_SEGMENTS)
    report = quality_report_from_counts(overall, per_value, min_count=config.min_count)
    segments = {column: segment_counts(counts) for column, counts in per_value.items()}
    drops = pd.concat([detect_drops_from_counts(period_counts(segments[column]), min_count=config.drop_min_count)
                       .assign(column=column) for column in DEFAULT_SEGMENTS], ignore_index=True)
    plots = {f"like_rate_per_{freq_name}": like_rate_over_time_from_counts(
                 period_frame(segments["model_name"], freq), by="model_name", freq=freq)
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
    max_analysed_rows: int | None = Field(
        50_000, description="Rows of the cleaned table read for patterns and suggestions: the ones with the smallest "
                            "sample keys (a uniform sample, stable from run to run), so memory stays bounded at any "
                            "table size. None reads the whole window.")


@dataclass(frozen=True)
class ErrorPatternsRef:
    """What error_patterns hands on: the report file, the state file holding the analysis (clusters, error types,
    flags and similarity by feedback id; it quotes feedback text, so erasure removes it with the report), and
    the sample it was computed on."""

    report_file: str
    state_file: str
    sample_cap: int | None
    sample_rows: int
    rated_rows: int
    clusters: int

    def load(self) -> dict:
        """The analysis: patterns, error_summary, flags and similarity (indexed by feedback id), trends."""
        with open(self.state_file, "rb") as handle:
            return pickle.load(handle)


def _relative(workspace: WorkspaceResource, path: Path) -> str:
    return str(path.resolve().relative_to(Path(workspace.data_dir).resolve()))


def _sample(store, ref: TableRef, cap: int | None) -> pd.DataFrame:
    return analysis_sample(store, ref.window_start, ref.window_end, cap)


@dg.asset(group_name="analysis", kinds={"pandas", "sklearn"},
          description="Disliked responses by subject/intent, by meaning (all-MiniLM clusters with trends) and by "
                      "rule-based error type (refusal, truncated, too short, wrong language, repetition ...), on a "
                      "bounded stable sample of the cleaned table.")
def error_patterns(context: dg.AssetExecutionContext, config: ErrorPatternsConfig, cleaned_feedback: TableRef,
                   feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> ErrorPatternsRef:
    from sentence_transformers import SentenceTransformer

    store = feedback_store.store()
    sample = _sample(store, cleaned_feedback, config.max_analysed_rows)
    population = window_size(store, cleaned_feedback.window_start, cleaned_feedback.window_end, [_RATED])
    model = SentenceTransformer(workspace.embedding_model_path(), device="cpu")
    model.max_seq_length = config.max_seq_length
    with EmbeddingCache(workspace.path("cache") / "embeddings.sqlite") as cache:
        model_id = model_identifier(model)  # once: hashing the weights per call would cost 0.25 s each
        embed = lambda texts: encode_cached(model, texts, cache, model_id=model_id)  # noqa: E731
        patterns = find_patterns(sample, embed, max_embedded=config.max_embedded_rows,
                                 min_cluster_size=config.min_cluster_size, distance_threshold=config.distance_threshold,
                                 max_share=config.max_cluster_share, population=population)
        # The same sample as the clusters, so one set of vectors serves both (as analyse_errors does).
        rated = sample[sample["label"].isin(["liked", "disliked"])]
        similarity = sampled_similarity(rated, embed, config.max_embedded_rows)
    flags = classify_errors(rated, similarity=similarity.to_numpy())
    summary = error_type_summary(rated, flags)
    trends = cluster_trends(sample, patterns.clusters)
    trend_lines = [f"- cluster {c.id} ({c.name}): {trends.get(c.id, 'stable')}" for c in patterns.clusters]
    if trends and set(trends.values()) == {"no earlier period"}:  # a first run: said once, not per cluster
        trend_lines = ["No earlier period yet: every answer is from the last 2 weeks, so no cluster can be new, "
                       "growing or shrinking."]
    trend_text = "## Cluster trends (last 4 weeks)\n\n" + ("\n".join(trend_lines) or "No clusters.")
    markdown = "\n\n".join([patterns_markdown(patterns), trend_text, error_types_markdown(summary)])
    quoted = patterns.quoted_ids() | {str(i) for ids in summary["example_ids"] for i in (ids or [])}
    reports = workspace.path("reports")
    path, state_path = reports / "error_patterns.md", reports / "error_patterns.state.pkl"
    record_quotes(store, [file_artifact(_relative(workspace, p)) for p in (path, state_path)], quoted)
    path.write_text(markdown, encoding="utf-8")
    by_id = rated["id"].astype(str)
    with open(state_path, "wb") as handle:
        pickle.dump({"patterns": patterns, "error_summary": summary, "trends": trends,
                     "flags": flags.set_axis(by_id.loc[flags.index]), "similarity": similarity.set_axis(by_id)},
                    handle)
    # The UI gets the report without quoted texts: Dagster's event log is not rewritten by erasure.
    shown = "\n\n".join([patterns_markdown(patterns, quotes=False), trend_text,
                          error_types_markdown(summary, quotes=False)])
    context.add_output_metadata({
        "disliked": patterns.n_disliked, "clusters": len(patterns.clusters), "unclustered": patterns.n_unclustered,
        "embedded_share": round(patterns.sample_fraction, 4), "sample_rows": len(sample), "rated_rows": population,
        "quoted_rows": len(quoted),
        "report": dg.MetadataValue.md(shown), "report_file": dg.MetadataValue.path(str(path)),
    })
    return ErrorPatternsRef(str(path), str(state_path), config.max_analysed_rows, len(sample), population,
                            len(patterns.clusters))


class SuggestionsConfig(dg.Config):
    max_analysed_rows: int | None = Field(
        50_000, description="Rows of the cleaned table read (the same stable sample as error_patterns: keep equal).")


@dg.asset(group_name="analysis", kinds={"pandas", "sql"},
          description="One suggestion per finding (topic cluster with what its disliked answers get wrong, length "
                      "gap, error type), ranked by excess dislikes over the baseline with 95% intervals; stored as "
                      "rows in improvement_suggestions.")
def improvement_suggestions(context: dg.AssetExecutionContext, config: SuggestionsConfig, cleaned_feedback: TableRef,
                            error_patterns: ErrorPatternsRef, feedback_quality_report: dict,
                            feedback_store: FeedbackStoreResource, workspace: WorkspaceResource) -> dict:
    store = feedback_store.store()
    state = error_patterns.load()
    sample = _sample(store, cleaned_feedback, config.max_analysed_rows)
    rated = sample[sample["label"].isin(["liked", "disliked"])]
    ids = rated["id"].astype(str)
    flags = state["flags"].reindex(ids).set_axis(rated.index)
    similarity = state["similarity"].reindex(ids).set_axis(rated.index)
    found = suggest(sample, state["patterns"], state["error_summary"], feedback_quality_report["tables"],
                    flags=flags, similarity=similarity)
    quoted = state["patterns"].quoted_ids() | {str(i) for e in state["error_summary"]["example_ids"] for i in (e or [])}
    path = workspace.path("reports") / "improvement_suggestions.md"
    record_quotes(store, [suggestions_artifact(context.run.run_id), file_artifact(_relative(workspace, path))], quoted)
    stored = save_suggestions(store, context.run.run_id, suggestions_frame(found))
    path.write_text(suggestions_markdown(found), encoding="utf-8")
    context.add_output_metadata({"suggestions": stored, "failing": sum(s.status == "failing" for s in found),
                                 "report": dg.MetadataValue.md(suggestions_markdown(found, quotes=False)),
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


def _report_identifiers(report: dict | ErrorPatternsRef) -> dg.AssetCheckResult:
    path = report.report_file if isinstance(report, ErrorPatternsRef) else report["report_file"]
    return no_identifiers([Path(path).read_text(encoding="utf-8")])


@dg.asset_check(asset=feedback_quality_report, description="The report shows no detectable identifier.")
def check_quality_report_no_identifiers(feedback_quality_report: dict) -> dg.AssetCheckResult:
    return _report_identifiers(feedback_quality_report)


@dg.asset_check(asset=error_patterns, description="The report's examples and comments hold no detectable identifier.")
def check_error_patterns_no_identifiers(error_patterns: ErrorPatternsRef) -> dg.AssetCheckResult:
    return _report_identifiers(error_patterns)


@dg.asset_check(asset=improvement_suggestions, description="The suggestions hold no detectable identifier.")
def check_suggestions_no_identifiers(improvement_suggestions: dict) -> dg.AssetCheckResult:
    return _report_identifiers(improvement_suggestions)
