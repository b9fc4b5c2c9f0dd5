"""Erasure reaches every copy: after ``feedback-pipeline erase-user`` none of the user's texts (queries, answers,
comments; whole or the opening and middle fragments a report would quote) is left in the data directory
(DAGSTER_HOME, reports, datasets, caches), in the SQLite file and its WAL, or in any PostgreSQL table.

The pipeline's assets run in-process on real stores first (tables, reports quoting the user's answers, all-time and
weekly datasets built from them, Dagster's own storage and event log), so every place that could hold a copy does.
"""

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from feedback_pipeline import cli
from feedback_pipeline.definitions import build_resources
from feedback_pipeline.defs import analysis, cleaning, datasets, ingestion
from feedback_pipeline.ingestion.importers import import_records, read_feedbackqa, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.cleaned import read_cleaned
from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline_tests.conftest import OASST1, SHARED_DATA, feedback

USER = "erase-me"
WEEK = datetime(2025, 6, 2, tzinfo=timezone.utc)  # a Monday


def _texts() -> list[dict]:  # created_at fixed, ids derived from the content: the same rows on every call
    """The user's feedback: disliked answers on one topic (a cluster the report quotes), liked ones (in the SFT and
    KTO sets), comments, and one row cleaning rejects; plus other users' rows the same week."""
    rows = []
    for k in range(14):
        rows.append(feedback(
            user_id=USER, session_id=f"{USER}-{k}", rating="down" if k < 10 else "up",
            query=f"How do I descale my zorblax kettle number {k}?",
            response=f"I am sorry, I cannot help with zorblax kettles or their descaling, case {k}.",
            comment=f"the zorblax answer was useless again, try {k}" if k % 2 else None,
            created_at=(WEEK + timedelta(days=1, hours=k)).isoformat()))
    rows.append(feedback(user_id=USER, rating=None, query="zorblax without a rating?", response="zorblax reply",
                         created_at=(WEEK + timedelta(days=2)).isoformat()))
    rows += [feedback(user_id=f"other-{k}", session_id=f"o{k}", rating="up" if k % 3 else "down",
                      query=f"Which train goes to city {k}?", response=f"Take line {k % 5 + 5} from the central station.",
                      created_at=(WEEK + timedelta(days=k % 6, minutes=k)).isoformat()) for k in range(40)]
    return [normalise_record(r, "app") for r in rows]


def _fragments() -> list[str]:
    """What to look for: every text of the user's whole, its first 24 characters (a truncated quote starts there)
    and 24 from its middle, lower-cased."""
    texts = {r[name] for r in _texts() if r["user_id"] == USER for name in ("query", "response", "comment") if r[name]}
    return sorted({t.lower() for text in texts for t in (text, text[:24], text[len(text) // 2:len(text) // 2 + 24])})


FRAGMENTS = _fragments()


def _holds(data: bytes) -> bool:
    data = data.lower()
    return any(f.encode() in data for f in FRAGMENTS)


def _files_with(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and _holds(p.read_bytes()))


def _tables_with(store: FeedbackStore) -> list[str]:
    """PostgreSQL: every table of the schema, each row as text. SQLite: the bytes of the file, its WAL and shm."""
    if store.dialect == "sqlite":
        path = Path(store.url.removeprefix("sqlite:///"))
        return [p.name for p in path.parent.glob(path.name + "*") if p.is_file() and _holds(p.read_bytes())]
    found = []
    with store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            hits = sum(conn.execute(sa.text(f'SELECT count(*) FROM "{table}" t WHERE lower(t::text) LIKE :f'),
                                    {"f": f"%{f}%"}).scalar_one() for f in FRAGMENTS)
            if hits:
                found.append(table)
    return found


def _run_pipeline(settings, instance) -> None:
    resources = build_resources(settings)
    assets = [ingestion.raw_feedback, cleaning.cleaned_feedback, analysis.feedback_quality_report,
              analysis.error_patterns, analysis.improvement_suggestions, datasets.sft_dataset, datasets.kto_dataset]
    checks = [cleaning.check_cleaned_feedback_has_rated_rows, analysis.check_error_patterns_no_identifiers,
              analysis.check_suggestions_no_identifiers]
    config = {"ops": {"error_patterns": {"config": {"min_cluster_size": 3}}}}
    assert dg.materialize([*assets, *checks], resources=resources, instance=instance, run_config=config).success
    days = dg.materialize([cleaning.daily_cleaned_feedback], resources=resources, instance=instance,
                          tags={"dagster/asset_partition_range_start": "2025-06-02",
                                "dagster/asset_partition_range_end": "2025-06-08"})
    assert days.success
    weekly = {name: {"config": {"min_train_examples": 3, "eval_fraction": 0.3}}
              for name in ("weekly_sft_dataset", "weekly_kto_dataset")}
    assert dg.materialize([datasets.weekly_sft_dataset, datasets.weekly_kto_dataset], partition_key="2025-06-02",
                          resources=resources, instance=instance, run_config={"ops": weekly}).success


def test_erase_user_leaves_no_copy_of_their_texts(store, tmp_path, monkeypatch):
    data = tmp_path / "data"
    settings = load_settings({"FEEDBACK_DATA_DIR": str(data), "FEEDBACK_DB_URL": store.url})
    import_records(store, itertools.islice(read_oasst1(OASST1), 200), "oasst1")
    import_records(store, itertools.islice(read_feedbackqa(SHARED_DATA / "feedbackqa-dev"), 120), "feedbackqa")
    store.write(_texts())
    (data / "dagster_home").mkdir(parents=True)
    instance = dg.DagsterInstance.local_temp(tempdir=str(data / "dagster_home"))
    _run_pipeline(settings, instance)

    # The grep sees the copies before erasure: the store, the datasets, the report quoting the cluster.
    before = _files_with(data)
    assert any(p.startswith("datasets/sft/") for p in before) and any(p.startswith("datasets/sft_weekly/") for p in before)
    assert any(p.startswith("datasets/kto_weekly/") for p in before)
    assert "reports/error_patterns.md" in before and "reports/improvement_suggestions.md" in before
    tables = _tables_with(store)
    assert set(tables) & {"feedback.db", "feedback.db-wal"} if store.dialect == "sqlite" else \
        {"feedback", "cleaned_feedback", "improvement_suggestions"} <= set(tables), tables
    assert not any(p.startswith("dagster_home") for p in before), before  # nothing of it in Dagster's storage

    monkeypatch.setenv("FEEDBACK_DATA_DIR", str(data))
    monkeypatch.setenv("FEEDBACK_DB_URL", store.url)
    assert cli.main(["erase-user", USER]) == 0

    assert _files_with(data) == []
    assert _tables_with(store) == []
    assert read_cleaned(store).query("user_id == @USER").empty
    # The pipeline runs again on what is left, and writes nothing of the user.
    _run_pipeline(settings, instance)
    assert _files_with(data) == [] and _tables_with(store) == []
    assert (data / "reports" / "error_patterns.md").exists()
