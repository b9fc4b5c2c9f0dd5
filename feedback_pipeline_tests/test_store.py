"""The feedback store on SQLite and PostgreSQL: migrations, writes, re-ratings, reads, erasure."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from feedback_pipeline.ingestion.records import COLUMNS, normalise_record
from feedback_pipeline.store.migrate import discover, migrate
from feedback_pipeline.store.repository import FEEDBACK
from feedback_pipeline_tests.conftest import feedback


def test_migrations_apply_once_and_are_recorded(store):
    assert store.migrate() == []  # the fixture already applied them
    with store.engine.connect() as conn:
        versions = [r[0] for r in conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version"))]
    assert versions == [m.version for m in discover(dialect=store.dialect)]


def test_schema_mirror_matches_migrated_table(store):
    """repository.FEEDBACK must name exactly the columns sql/ creates."""
    columns = [c["name"] for c in sa.inspect(store.engine).get_columns("feedback")]
    assert columns == [c.name for c in FEEDBACK.columns] == list(COLUMNS)
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("feedback")}
    assert {"ix_feedback_created_at", "ix_feedback_model_rating", "ix_feedback_subject"} <= indexes


def test_edited_migration_is_refused(store, tmp_path):
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_extra.sql").write_text("CREATE TABLE extra_a (x INTEGER);")
    engine = sa.create_engine(store.engine.url)  # same database and schema
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM schema_migrations"))
        assert migrate(engine, folder) == [1]
        (folder / "001_extra.sql").write_text("CREATE TABLE extra_b (x INTEGER);")
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            migrate(engine, folder)
    finally:
        engine.dispose()


def test_per_dialect_migration_with_statement_breakpoints(store, tmp_path):
    """A version may come as one file per dialect; `--> statement-breakpoint` keeps `;` inside a statement."""
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_shared.sql").write_text("CREATE TABLE dm_a (x INTEGER); CREATE TABLE dm_b (x INTEGER);")
    body = "INSERT INTO dm_b VALUES (NEW.x); INSERT INTO dm_b VALUES (NEW.x + 1);"
    (folder / "002_copy.sqlite.sql").write_text(
        "-- sqlite\nCREATE TRIGGER dm_t AFTER INSERT ON dm_a BEGIN " + body + " END;\n--> statement-breakpoint\n")
    (folder / "002_copy.postgresql.sql").write_text(
        "CREATE FUNCTION dm_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN " + body + " RETURN NULL; END $$;\n"
        "--> statement-breakpoint\n"
        "CREATE TRIGGER dm_t AFTER INSERT ON dm_a FOR EACH ROW EXECUTE FUNCTION dm_f();")
    engine = sa.create_engine(store.engine.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM schema_migrations"))
        assert migrate(engine, folder) == [1, 2] and migrate(engine, folder) == []
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO dm_a VALUES (10)"))
            assert sorted(r[0] for r in conn.execute(sa.text("SELECT x FROM dm_b"))) == [10, 11]
            recorded = conn.execute(sa.text("SELECT checksum FROM schema_migrations WHERE version = 2")).scalar_one()
        assert recorded == discover(folder, store.dialect)[1].checksum  # the checksum of the file this engine ran
        other = "sqlite" if store.dialect == "postgresql" else "postgresql"
        (folder / f"002_copy.{other}.sql").write_text("-- edited: not this engine's file\n")
        assert migrate(engine, folder) == []
        (folder / f"002_copy.{store.dialect}.sql").write_text("-- edited\n")
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            migrate(engine, folder)
        (folder / f"002_copy.{other}.sql").unlink()  # one dialect missing a file is refused
        with pytest.raises(ValueError, match="per dialect"):
            discover(folder)
    finally:
        engine.dispose()


def test_write_is_idempotent_and_roundtrips_types(store):
    row = normalise_record(feedback(history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                    tools_called=["search"], retrieved_context=[{"id": "d1", "text": "doc"}],
                                    metadata={"k": [1, 2]}, stars=4, latency_ms=812.5,
                                    created_at="2025-03-01T10:00:00+02:00"), source="test")
    first = store.write([row])
    again = store.write([row])
    assert (first.inserted, again.inserted, again.unchanged) == (1, 0, 1)
    frame = store.read_frame()
    assert len(frame) == 1
    got = frame.iloc[0]
    assert got["id"] == row["id"]
    assert got["created_at"] == datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
    assert got["history"][1] == {"role": "assistant", "content": "hello"}
    assert got["metadata"] == {"k": [1, 2]} and got["retrieved_context"][0]["id"] == "d1"
    assert (got["rating"], got["rating_stars"], got["rating_thumb"], got["rating_scale"]) == (0.5, 4, 1, "stars")


def test_rerating_updates_only_when_newer_and_changed(store):
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    base = feedback(id="3f1e2d4c-0000-4000-8000-000000000001", created_at=t0.isoformat())
    store.write([normalise_record(base, "t")])
    newer = normalise_record({**base, "rating": "down", "updated_at": (t0 + timedelta(days=1)).isoformat()}, "t")
    older = normalise_record({**base, "rating": "up", "comment": "x", "updated_at": (t0 - timedelta(days=1)).isoformat()}, "t")
    assert store.write([newer]).updated == 1
    assert store.write([older]).updated == 0  # a stale re-send never overwrites a newer rating
    got = store.read_frame().iloc[0]
    assert got["rating_thumb"] == -1 and got["comment"] is None


def test_rated_since_counts_new_rated_rows(store):
    rows = [normalise_record(feedback(query=f"q{i}", rating=r), "t") for i, r in enumerate(["up", "down", 0, None])]
    store.write(rows)
    count, newest = store.rated_since(None)
    assert count == 2 and newest is not None
    assert store.rated_since(newest) == (0, None)


def test_read_frame_time_window_and_erasure(store):
    days = [datetime(2025, 5, d, 12, tzinfo=timezone.utc) for d in (1, 2, 3)]
    store.write([normalise_record(feedback(query=f"q{i}", user_id=f"u{i % 2}", created_at=d.isoformat()), "t")
                 for i, d in enumerate(days)])
    window = store.read_frame(datetime(2025, 5, 2, tzinfo=timezone.utc), datetime(2025, 5, 3, tzinfo=timezone.utc))
    assert window["query"].tolist() == ["q1"]
    assert store.delete_user("u0") == 2
    assert store.read_frame()["user_id"].tolist() == ["u1"]
