"""Daily partitions of the raw -> cleaned path: each window is rewritten idempotently (delete, then insert)."""

from datetime import date, datetime, timezone

import dagster as dg
import sqlalchemy as sa

import json
from pathlib import Path

from feedback_pipeline.defs.cleaning import daily_cleaned_feedback
from feedback_pipeline.defs.datasets import weekly_kto_dataset, weekly_sft_dataset
from feedback_pipeline.defs.resources import FeedbackStoreResource, WorkspaceResource
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.store.cleaned import CLEANED, read_cleaned
from feedback_pipeline_tests.conftest import feedback


def _day_rows(day: int, n: int, rating="up"):
    return [normalise_record(feedback(query=f"question {day}-{i} from alice@example.com", rating=rating,
                                      created_at=datetime(2025, 6, day, 8 + i, tzinfo=timezone.utc).isoformat()), "t")
            for i in range(n)]


def _materialize(store, day: str):
    result = dg.materialize([daily_cleaned_feedback], partition_key=day,
                            resources={"feedback_store": FeedbackStoreResource(db_url=store.url)})
    assert result.success
    return result.asset_materializations_for_node("daily_cleaned_feedback")[0].metadata


def test_cleaned_table_mirror_matches_migration(store):
    assert [c["name"] for c in sa.inspect(store.engine).get_columns("cleaned_feedback")] == [c.name for c in CLEANED.columns]


def test_rerunning_a_day_never_duplicates_and_picks_up_changes(store):
    store.write(_day_rows(1, 3) + _day_rows(2, 4))
    _materialize(store, "2025-06-01")
    _materialize(store, "2025-06-02")
    again = _materialize(store, "2025-06-02")
    assert again["rows_written"].value == 4
    cleaned = read_cleaned(store)
    assert len(cleaned) == 7 and cleaned["id"].is_unique
    assert not cleaned["query"].str.contains("alice@example.com").any()  # redacted before it is stored
    # A re-rating on day 2 shows up after re-running that day only; day 1 is untouched.
    changed = _day_rows(2, 1, rating="down")[0] | {"updated_at": datetime(2025, 6, 3, tzinfo=timezone.utc)}
    store.write([changed])
    _materialize(store, "2025-06-02")
    day2 = read_cleaned(store, date(2025, 6, 2), date(2025, 6, 3))
    assert len(day2) == 4 and (day2["label"] == "disliked").sum() == 1
    assert len(read_cleaned(store, date(2025, 6, 1), date(2025, 6, 2))) == 3


def test_a_day_whose_rows_were_erased_is_emptied(store):
    store.write(_day_rows(5, 2))
    _materialize(store, "2025-06-05")
    store.delete_user("u1")
    meta = _materialize(store, "2025-06-05")
    assert meta["rows_written"].value == 0 and read_cleaned(store).empty


def test_weekly_datasets_hold_exactly_their_weeks_feedback(store, tmp_path):
    # Two weeks (Mon 2025-06-02 .. Sun 06-15) of 30 rated rows each, one conversation per row.
    records = [normalise_record(feedback(query=f"How do I fix error {week}-{i}?", response=f"Restart service {i}.",
                                         session_id=f"s{week}-{i}", user_id=f"u{week}-{i}",
                                         rating="up" if i % 3 else "down",
                                         created_at=datetime(2025, 6, 2 + 7 * week + i % 7, 9, tzinfo=timezone.utc).isoformat()),
                                "t") for week in (0, 1) for i in range(30)]
    store.write(records)
    resources = {"feedback_store": FeedbackStoreResource(db_url=store.url),
                 "workspace": WorkspaceResource(data_dir=str(tmp_path / "data"))}
    days = dg.materialize([daily_cleaned_feedback], resources=resources,  # one run over the range, as a backfill
                          tags={"dagster/asset_partition_range_start": "2025-06-02",
                                "dagster/asset_partition_range_end": "2025-06-15"})
    assert days.success
    config = {"ops": {name: {"config": {"min_train_examples": 5, "eval_fraction": 0.3}}
                      for name in ("weekly_sft_dataset", "weekly_kto_dataset")}}
    result = dg.materialize([weekly_sft_dataset, weekly_kto_dataset], partition_key="2025-06-09", resources=resources,
                            run_config=config)
    assert result.success
    built = result.output_for_node("weekly_kto_dataset")
    manifest = json.loads((Path(built["directory"]) / "manifest.json").read_text())
    ids = set(manifest["feedback_ids"]["train"] + manifest["feedback_ids"]["eval"])
    week_two = set(read_cleaned(store, date(2025, 6, 9), date(2025, 6, 16))["id"])
    assert ids == week_two and len(ids) == 30
    assert "kto_weekly/2025-06-09" in built["directory"]
    sft = result.output_for_node("weekly_sft_dataset")
    assert sft["counts"]["train"] + sft["counts"]["eval"] == 20  # the liked two thirds
