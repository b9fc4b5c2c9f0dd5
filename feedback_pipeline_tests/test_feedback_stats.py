"""The daily summary kept by triggers (sql/007_*) on SQLite and PostgreSQL, and /v1/feedback/stats|accuracy."""

from __future__ import annotations

import math
import shutil
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from feedback_pipeline.analysis.stats import wilson_interval
from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record
from feedback_pipeline.settings import REPO_ROOT
from feedback_pipeline.store import daily_stats
from feedback_pipeline.store.migrate import migrate
from feedback_pipeline.store.repository import FEEDBACK, FeedbackStore, _to_db
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import service  # noqa: F401  (the fixture)

T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)
RATINGS = ["up", "down", 0, None, "up", 1, -1]


def _rows(n: int, prefix: str = "a", start: datetime = T0) -> list[dict]:
    models, intents = ["chat", "chat", "search", None], ["billing", None, "howto"]
    return [normalise_record(feedback(
        id=f"00000000-0000-4000-8000-{ord(prefix):04x}{i:08d}", query=f"q{i}", user_id=f"u{i % 3}",
        rating=RATINGS[i % len(RATINGS)], model_name=models[i % 4], model_version=f"v{i % 2}",
        intent=intents[i % 3], project=None if i % 5 == 0 else "p", subject="s" if i % 2 else None,
        created_at=(start + timedelta(hours=7 * i)).isoformat()), "t") for i in range(n)]


def _summary_only(store: FeedbackStore) -> dict:
    """The compacted summary table alone (no deltas), keyed like summary_table."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM feedback_daily_stats")).all()
    return {(daily_stats._day(r[0]), *r[1:6]): daily_stats.Counts(*map(int, r[6:])) for r in rows}


def _assert_consistent(store: FeedbackStore) -> dict:
    kept = daily_stats.summary_table(store.engine)
    assert kept == daily_stats.summary_table(store.engine, from_feedback=True)
    assert all(c.total > 0 for c in kept.values())  # emptied keys are dropped
    # After compaction the summary alone holds the answer and no delta is left (PostgreSQL appends deltas).
    moved = daily_stats.compact(store.engine)
    assert moved >= 0 and (store.dialect == "postgresql" or moved == 0)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback_daily_stats_delta")).scalar_one() == 0
    assert _summary_only(store) == kept == daily_stats.summary_table(store.engine)
    return kept


def _upsert_one_statement(store: FeedbackStore, rows: list[dict]) -> None:
    """Many rows, inserts and updates mixed, in ONE statement (what a bulk COPY + upsert does)."""
    insert = (postgresql.insert if store.dialect == "postgresql" else sqlite.insert)(FEEDBACK)
    stmt = insert.values([_to_db(r, store.dialect) for r in rows]).on_conflict_do_update(
        index_elements=["id"], set_={n: insert.excluded[n] for n in ("updated_at", "rating", "rating_thumb")})
    with store.engine.begin() as conn:
        conn.execute(stmt)


def test_summary_follows_inserts_rerating_deletes_erasure_and_bulk_statements(store):
    assert daily_stats.summary_table(store.engine) == {}
    rows = _rows(40)
    store.write(rows)
    kept = _assert_consistent(store)
    assert sum(c.total for c in kept.values()) == 40
    assert ("", "") in {(k[3], k[4]) for k in kept}  # NULL intent / project stored as ''

    later = (T0 + timedelta(days=30)).isoformat()
    flips = [normalise_record({**feedback(), **{k: r[k] for k in ("id", "query", "user_id", "model_name",
             "model_version", "intent", "project", "subject")}, "created_at": r["created_at"].isoformat(),
             "rating": "down" if r["rating_thumb"] == 1 else "up", "updated_at": later}, "t") for r in rows[:10]]
    assert store.write(flips).updated == 10
    _assert_consistent(store)

    with store.engine.begin() as conn:  # one statement moving rows to another key and another day
        conn.execute(sa.update(FEEDBACK).where(FEEDBACK.c.model_name == "search")
                     .values(model_name="search2", created_at=FEEDBACK.c.updated_at))
        conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.id == rows[11]["id"]))
    _assert_consistent(store)

    assert store.delete_user("u1") > 0
    _assert_consistent(store)

    bulk = _rows(300, prefix="b") + [{**r, "rating": -1.0, "rating_thumb": -1,
                                      "updated_at": T0 + timedelta(days=60)} for r in rows[:5]]
    _upsert_one_statement(store, bulk)
    kept = _assert_consistent(store)
    with store.engine.connect() as conn:
        assert sum(c.total for c in kept.values()) == conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar()
    with store.engine.begin() as conn:
        conn.execute(sa.delete(FEEDBACK))
    assert daily_stats.summary_table(store.engine) == {}


def test_day_is_the_utc_date(store):
    store.write([normalise_record(feedback(created_at="2025-03-01T23:30:00-02:00"), "t")])
    assert [k[0] for k in daily_stats.summary_table(store.engine)] == [date(2025, 3, 2)]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migration_backfills_existing_rows(dialect, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_url")
    before = tmp_path / "sql"
    before.mkdir()
    for path in (REPO_ROOT / "sql").glob("*.sql"):
        if not path.name.startswith("007_"):
            shutil.copy(path, before / path.name)
    store = FeedbackStore(url)
    try:
        migrate(store.engine, before)
        store.write(_rows(50))
        assert 7 in store.migrate()
        assert sum(c.total for c in _assert_consistent(store).values()) == 50
    finally:
        store.dispose()


def test_build_query_windows_and_errors():
    today = date(2025, 6, 30)
    assert daily_stats.build_query(today=today) == daily_stats.StatsQuery(date(2025, 6, 1), today)
    q = daily_stats.build_query(window=7, today=today, model_name="chat", intent=None)
    assert (q.start, q.end, q.filters) == (date(2025, 6, 24), today, {"model_name": "chat"})
    for kwargs, field in [({"window": 5}, "window"), ({"window": 7, "start": today}, "window"),
                          ({"start": today, "end": date(2025, 6, 1)}, "start"), ({"user_id": "u1"}, "user_id"),
                          ({"project": " "}, "project"), ({"start": date(2000, 1, 1)}, "start")]:
        with pytest.raises(FeedbackValidationError) as err:
            daily_stats.build_query(today=today, **kwargs)
        assert err.value.field == field


def test_intervals_are_the_projects_wilson_interval():
    counts = [daily_stats.Counts(likes=k, dislikes=d, neutral=3) for k, d in [(8, 2), (0, 5), (7, 0), (1, 1), (0, 0)]]
    got = daily_stats.with_intervals(counts)
    for c, g in zip(counts[:-1], got):
        assert (g["like_rate_low"], g["like_rate_high"]) == pytest.approx(wilson_interval(c.likes, c.likes + c.dislikes))
    assert (got[-1]["like_rate"], got[-1]["like_rate_low"], got[-1]["like_rate_high"]) == (None, None, None)
    assert (got[1]["like_rate_low"], got[2]["like_rate_high"]) == (0.0, 1.0)


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_stats_and_accuracy_over_http(service):  # noqa: F811
    today = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
    rows = []
    for i, (days_ago, model, intent, rating) in enumerate(
            [(0, "chat", "billing", "up")] * 8 + [(1, "chat", "billing", "down")] * 2 + [(2, "chat", "billing", 0)] * 3
            + [(3, "search", None, "up")] * 3 + [(20, "chat", "billing", "down")] * 4 + [(60, "chat", "howto", "up")]):
        rows.append(normalise_record(feedback(query=f"q{i}", model_name=model, intent=intent, rating=rating,
                                              project="p1", created_at=(today - timedelta(days=days_ago)).isoformat()),
                                     "t"))
    service.store.write(rows)

    status, week = service("GET", "/v1/feedback/stats?window=7&model_name=chat", key="reader")
    assert status == 200, week
    assert (week["total"], week["likes"], week["dislikes"], week["neutral"]) == (13, 8, 2, 3)
    assert week["like_rate"] == pytest.approx(0.8)  # neutral is outside the rate
    assert (week["like_rate_low"], week["like_rate_high"]) == pytest.approx(_wilson_by_hand(8, 10))
    assert (week["like_rate_low"], week["like_rate_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert len(week["series"]) == 7 and week["series"][-1]["day"] == today.date().isoformat()
    assert [d["total"] for d in week["series"]][-3:] == [3, 2, 8] and week["series"][0]["like_rate"] is None
    assert week["filters"] == {"model_name": "chat"}

    assert service("GET", "/v1/feedback/stats?window=30", key="reader")[1]["total"] == 20
    assert service("GET", "/v1/feedback/stats?window=90", key="admin")[1]["total"] == 21
    start = (today - timedelta(days=3)).date().isoformat()
    ranged = service("GET", f"/v1/feedback/stats?start={start}&end={start}", key="reader")[1]
    assert (ranged["total"], ranged["likes"], len(ranged["series"])) == (3, 3, 1)

    status, acc = service("GET", "/v1/feedback/accuracy?window=30&project=p1", key="reader")
    assert status == 200, acc
    groups = {(g["model_name"], g["intent"]): g for g in acc["groups"]}
    assert set(groups) == {("chat", "billing"), ("search", None)}
    chat = groups[("chat", "billing")]
    assert (chat["likes"], chat["dislikes"], chat["neutral"], chat["model_version"]) == (8, 6, 3, "v1")
    assert (chat["like_rate_low"], chat["like_rate_high"]) == pytest.approx(_wilson_by_hand(8, 14))
    assert groups[("search", None)]["like_rate_high"] == pytest.approx(1.0)
    assert service("GET", "/v1/feedback/accuracy?window=7&intent=nothing", key="reader")[1]["groups"] == []


def test_stats_auth_and_bad_filters(service):  # noqa: F811
    for path in ("/v1/feedback/stats", "/v1/feedback/accuracy"):
        assert service("GET", path)[0] == 401
        assert service("GET", path, key="writer")[0] == 403
        for query, field in [("window=5", "window"), ("window=abc", "window"), ("modle=chat", "modle"),
                             ("user_id=u1", "user_id"), ("start=2025-02-30", "start"),
                             ("start=2025-03-02&end=2025-03-01", "start"), ("model_name=", "model_name")]:
            status, body = service("GET", f"{path}?{query}", key="reader")
            assert status == 422 and body["errors"][0]["field"] == field, (path, query, body)
