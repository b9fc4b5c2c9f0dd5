"""The analysts' report assets on the real public feedback: tables, plots, drops, patterns, suggestions."""

import itertools

import dagster as dg
import pandas as pd

from feedback_pipeline.definitions import build_resources
from feedback_pipeline.defs import analysis, cleaning, ingestion
from feedback_pipeline.ingestion.importers import import_records, read_feedbackqa, read_oasst1
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.suggestions import latest_suggestions
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA


def test_report_assets_on_real_feedback(tmp_path):
    settings = load_settings({"FEEDBACK_DATA_DIR": str(tmp_path)})
    store = FeedbackStore(settings.feedback_db_url)
    store.migrate()
    import_records(store, itertools.islice(read_oasst1(OASST1), 200), "oasst1")
    import_records(store, itertools.islice(read_feedbackqa(SHARED_DATA / "feedbackqa-dev"), 240), "feedbackqa")
    assets = [ingestion.raw_feedback, cleaning.cleaned_feedback, analysis.feedback_quality_report,
              analysis.error_patterns, analysis.improvement_suggestions]
    checks = [analysis.check_like_rate_drops, analysis.check_quality_report_no_identifiers,
              analysis.check_error_patterns_no_identifiers, analysis.check_suggestions_no_identifiers]
    result = dg.materialize([*assets, *checks], resources=build_resources(settings))
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations()
               if e.check_name != "check_like_rate_drops")

    quality = result.asset_materializations_for_node("feedback_quality_report")[0].metadata
    report = quality["report"].value
    assert "| subject" in report or "subject" in report
    for plot in ("like_rate_per_week", "like_rate_per_day", "like_rate_by_subject", "like_rate_by_project"):
        assert quality[plot].value.startswith("![") and "data:image/png;base64," in quality[plot].value
        assert (tmp_path / "reports" / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = result.output_for_node("feedback_quality_report")["tables"]
    subjects = tables["subject"].set_index("segment")
    assert subjects.loc["(unknown)", "n_rated"] > 0 and subjects["ci_low"].le(subjects["like_rate"]).all()

    patterns = result.output_for_node("error_patterns").load()
    summary = patterns["error_summary"].set_index("type")
    assert summary.loc["too_short", "checked"] and summary.loc["refusal", "checked"]
    assert patterns["patterns"].n_disliked > 0

    stored = latest_suggestions(store)
    produced = result.output_for_node("improvement_suggestions")
    assert len(stored) == produced["count"] > 0 and stored["rank"].tolist() == list(range(1, len(stored) + 1))
    assert set(stored["kind"]) <= {"failure_cluster", "length_gap", "error_type", "too_little_data"}
    assert not stored.duplicated(["kind", "target"]).any()  # one entry per finding
    assert stored["priority"].is_monotonic_decreasing
    statuses = [m["status"] for m in stored["metrics"]]
    failing = [m for m in stored["metrics"] if m["status"] == "failing"]
    assert set(statuses) <= {"failing", "watch", "note"}
    assert all(m["dislike_rate"] > m["baseline_rate"] and m["excess_low"] > 0 for m in failing)
    assert statuses == sorted(statuses, key=["failing", "note", "watch"].index)
    assert "too little data (recent" not in report  # every row is from today: no baseline period yet, said once
    assert report.count("No baseline period yet") == 1
    cleaned = result.output_for_node("cleaned_feedback")  # a reference: the rows stay in the store
    assert cleaned.table == "cleaned_feedback" and cleaned.rows > 200
    frame = cleaned.read(store, columns=["id", "spam_reason", "exclude_from_training"], limit=50)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 50
