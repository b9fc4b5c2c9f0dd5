"""Daily partitions of the raw -> cleaned path: each window is rewritten idempotently (delete, then insert)."""

from datetime import date, datetime, timezone

import dagster as dg
import sqlalchemy as sa

from feedback_pipeline.defs.cleaning import daily_cleaned_feedback
from feedback_pipeline.defs.resources import FeedbackStoreResource
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
