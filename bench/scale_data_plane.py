"""The data plane at scale: N feedback rows in PostgreSQL (1M quick, 10M full), every step timed with its peak RSS.

    .venv/bin/python bench/scale_data_plane.py --rows 1000000            # generate, measure, drop the database
    .venv/bin/python bench/scale_data_plane.py --rows 10000000
    .venv/bin/python bench/scale_data_plane.py --report                  # bench/results/scale_data_plane.md

Recipe (the data, in a database of its own, ``bench_scale``, dropped at the end):
- **seed**: every oasst1-en-validation reply and every FeedbackQA dev rating from ``../shared/data`` (read by the
  project's importers, normalised by ``normalise_record``) into a seed table (texts are never copied into the repo);
- **rows**: ``INSERT ... SELECT`` from ``generate_series`` joined to the seed (1M rows per statement): row g takes
  seed ``hash(g) mod S`` (query, history, retrieved context, subject; the query gets `` (question g)`` and the
  response a line ``(answer g)``, so each row is its own question and answer, as in chat traffic, while histories
  and retrieved passages repeat, as earlier turns and a RAG corpus do), ``created_at`` spread evenly over 120 days from
  2026-07-01 (ingested 2 s later), users ``floor(N/25 * x^2)`` for a uniform x (skewed: the busiest user has ~1 in
  sqrt(N/25) rows), sessions of 7 turns, 4 models x 3 versions with like rates 60-75%, 8% neutral, 2% without a
  rating (cleaning rejects them), 10 intents, 5 projects, a unique comment on 10% of rows, latency and tokens;
  secondary indexes are built after the load (``CREATE INDEX``), then ``VACUUM ANALYZE``;
- **cleaned_feedback**: derived by SQL for all days (label from the rating, sample key sha256(id); the texts copied
  as they are for the week the SFT build reads, empty elsewhere, to halve the disk the 10M run needs: the quality
  report reads only its covering index, never the texts): a stand-in for 120 days of daily cleaning runs, which at
  the measured cleaning speed would take days on 2 cores. The measured cleaning runs replace their own windows
  with really cleaned rows.

Steps, each in a fresh subprocess (peak RSS = its ru_maxrss plus its children's):
load (the importer's COPY + upsert path for 100k rows vs a bare COPY of the same rows into an unindexed table),
select_day vs clean_day (one UTC day; also with redaction off, to separate the data plane from PII detection),
backfill (30 days in one run, as ``daily_cleaned_feedback``'s single-run backfill), quality (the report's SQL
group-bys over the whole cleaned table plus tables, drops and plots), weekly_sft (one week streamed to JSONL),
sensor (``check_new_rated`` as the sensor calls it: with a dataset watermark 1,000 rated rows back, and the first tick
without one, exact and capped at 200).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedback_pipeline.settings import load_settings  # noqa: E402

ADMIN_URL = os.environ.get("FEEDBACK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB = "bench_scale"
START = datetime(2026, 7, 1, tzinfo=timezone.utc)
DAYS = 120
RESULTS = REPO / "bench" / "results"
SECONDARY_INDEXES = {  # feedback's indexes from sql/, rebuilt after the bulk load
    "ix_feedback_created_at": "feedback (created_at)", "ix_feedback_ingested_at": "feedback (ingested_at)",
    "ix_feedback_model_rating": "feedback (model_name, model_version, rating_thumb)",
    "ix_feedback_subject": "feedback (subject)", "ix_feedback_intent": "feedback (intent)",
    "ix_feedback_project": "feedback (project)", "ix_feedback_session": "feedback (session_id, message_index)",
    "ix_feedback_rated_ingested": "feedback (ingested_at) WHERE rating_thumb <> 0",
}
CLEANED_INDEXES = {"ix_cleaned_partition": "cleaned_feedback (partition_date)",
                   "ix_cleaned_model_label": "cleaned_feedback (model_name, model_version, label)",
                   "ix_cleaned_sample": "cleaned_feedback (sample_key)",
                   "ix_cleaned_created": "cleaned_feedback (created_at, id)",
                   "ix_cleaned_report": "cleaned_feedback (partition_date, label, model_name, model_version, intent, "
                                        "project, subject)"}


def db_url(name: str = DB) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")


def peak_rss_mb(workers: int = 0) -> float:
    """This process's peak RSS plus, when it ran ``workers`` worker processes at once, that many times the largest
    worker's (ru_maxrss of the children is the largest one's, not their sum)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + max(workers, 1 if children else 0) * children) / 1024, 1)


# --- data ----------------------------------------------------------------------------------------------------

def seed_rows() -> list[dict]:
    from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1
    from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record

    shared = load_settings().shared_data_dir
    rows = []
    for source, records in (("oasst1", read_oasst1(shared / "oasst1-en-validation" / "en-validation.jsonl")),
                            ("feedbackqa", read_feedbackqa(shared / "feedbackqa-dev"))):
        for record in records:
            try:
                rows.append(normalise_record(record, source))
            except FeedbackValidationError:
                continue
    return rows


def generate(rows: int) -> dict:
    admin = engine(ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB}"))
        conn.execute(sa.text(f"CREATE DATABASE {DB}"))
    admin.dispose()
    from feedback_pipeline.store.repository import FeedbackStore

    store = FeedbackStore(db_url())
    store.migrate()
    store.dispose()
    seeds = seed_rows()
    eng = engine(db_url())
    started = time.perf_counter()
    with eng.connect() as conn:
        conn.execute(sa.text("CREATE TABLE seed (k int PRIMARY KEY, query text, history jsonb, response text, "
                             "comment text, retrieved_context jsonb, subject text)"))
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy("COPY seed FROM STDIN") as copy:
            for k, r in enumerate(seeds):
                copy.write_row([k, r["query"], json.dumps(r["history"] or []), r["response"], r["comment"],
                                json.dumps(r["retrieved_context"] or []), r["subject"]])
        for name in SECONDARY_INDEXES:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        step = 1_000_000
        for low in range(1, rows + 1, step):
            conn.execute(sa.text(_INSERT), {"a": low, "b": min(rows, low + step - 1), "n": rows, "s": len(seeds),
                                            "u": max(1, rows // 25)})
        loaded = time.perf_counter() - started
        for name, target in SECONDARY_INDEXES.items():
            conn.execute(sa.text(f"CREATE INDEX {name} ON {target}"))
        indexed = time.perf_counter() - started - loaded
        for name in CLEANED_INDEXES:
            conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        conn.execute(sa.text(_CLEANED))
        for name, target in CLEANED_INDEXES.items():
            conn.execute(sa.text(f"CREATE INDEX {name} ON {target}"))
        conn.execute(sa.text("VACUUM ANALYZE"))
        size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        counts = conn.execute(sa.text("SELECT (SELECT count(*) FROM feedback), (SELECT count(*) FROM cleaned_feedback)")).one()
    eng.dispose()
    return {"seed_rows": len(seeds), "rows": counts[0], "cleaned_rows": counts[1], "insert_s": round(loaded, 1),
            "index_s": round(indexed, 1), "total_s": round(time.perf_counter() - started, 1),
            "database_gb": round(size / 1e9, 2)}


_INSERT = """
INSERT INTO feedback (id, created_at, updated_at, ingested_at, user_id, session_id, message_index, query, history,
    response, model_name, model_version, intent, project, subject, rating, rating_thumb, rating_stars, rating_raw,
    rating_scale, comment, tools_called, retrieved_context, latency_ms, prompt_tokens, completion_tokens, source,
    metadata, response_id, experiment, arm)
SELECT md5('bench-' || g)::uuid, t, t, t + interval '2 seconds',
       'user-' || u, 'user-' || u || '-s' || (g / 7), (g % 7)::int,
       s.query || ' (question ' || g || ')', s.history, s.response || E'\\n\\n(answer ' || g || ')',
       'model-' || m, 'model-' || m || '-v' || (h2 % 3), 'intent-' || (h2 / 3 % 10), 'project-' || (h2 / 30 % 5),
       s.subject,
       r.rating, r.rating::smallint, NULL, r.rating::text, 'thumbs',
       CASE WHEN h3 % 10 = 0 THEN 'comment ' || g || ': ' || coalesce(s.comment, 'no further remarks') END,
       '[]'::jsonb, s.retrieved_context, 150 + h3 % 4000, 20 + h3 % 700, 40 + h2 % 900, 'bench', '{}'::jsonb,
       NULL, NULL, NULL
FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS g
CROSS JOIN LATERAL (SELECT abs(hashint8extended(g, 1)) AS h1, abs(hashint8extended(g, 2)) AS h2,
                           abs(hashint8extended(g, 3)) AS h3) AS hashes
CROSS JOIN LATERAL (SELECT timestamptz '2026-07-01 00:00:00+00'
                           + (g - 1)::float8 / CAST(:n AS bigint) * interval '120 days' AS t,
                           floor(CAST(:u AS bigint) * power((h1 % 1000003) / 1000003.0, 2))::bigint AS u,
                           h2 % 4 AS m) AS shape
CROSS JOIN LATERAL (SELECT CASE WHEN h3 % 100 >= 98 THEN NULL
                                WHEN h3 % 100 < 60 + 5 * m THEN 1.0
                                WHEN h3 % 100 < 90 THEN -1.0 ELSE 0.0 END AS rating) AS r
JOIN seed s ON s.k = h1 % CAST(:s AS bigint)
"""

_CLEANED = """
INSERT INTO cleaned_feedback (id, partition_date, created_at, updated_at, ingested_at, user_id, session_id,
    message_index, query, history, response, model_name, model_version, intent, project, subject, rating,
    rating_thumb, rating_stars, rating_raw, rating_scale, comment, tools_called, retrieved_context, latency_ms,
    prompt_tokens, completion_tokens, source, metadata, label, pii_redacted, duplicate_count, spam_reason,
    exclude_from_training, cleaned_at, sample_key)
SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), created_at, updated_at, ingested_at, user_id,
       session_id, message_index, CASE WHEN texts THEN query ELSE '' END, CASE WHEN texts THEN history END,
       CASE WHEN texts THEN response ELSE '' END, model_name, model_version, intent, project, subject,
       rating, rating_thumb, rating_stars, rating_raw, rating_scale, CASE WHEN texts THEN comment END, tools_called,
       CASE WHEN texts THEN retrieved_context END, latency_ms, prompt_tokens, completion_tokens, source, metadata,
       CASE WHEN rating > 0 THEN 'liked' WHEN rating < 0 THEN 'disliked' ELSE 'neutral' END, 0, 1, NULL, false, now(),
       left(encode(sha256(id::text::bytea), 'hex'), 16)
FROM feedback CROSS JOIN LATERAL (SELECT created_at >= timestamptz '2026-08-03 00:00+00'
                                         AND created_at < timestamptz '2026-08-10 00:00+00' AS texts) AS week
WHERE rating IS NOT NULL
"""


# --- steps (each runs in its own process) ----------------------------------------------------------------------

def _store():
    from feedback_pipeline.store.repository import FeedbackStore

    return FeedbackStore(db_url())


def _day(rows: int) -> date:
    return (START + timedelta(days=60)).date()


def step_load(rows: int) -> dict:
    """The importer's path (validation, COPY into a staging table, conflict check, upsert, triggers, 8 indexes) for
    100k new rows into the big table, against a bare COPY of the same stored rows into an unindexed table."""
    from feedback_pipeline.ingestion.importers import import_records
    from feedback_pipeline.ingestion.records import normalise_record
    from feedback_pipeline.store.tables import COLUMNS

    seeds, n = seed_rows(), 100_000
    day = START + timedelta(days=DAYS + 1)
    records = [{**{k: v for k, v in seeds[i % len(seeds)].items()
                   if k in ("query", "history", "response", "comment", "retrieved_context", "subject")},
                "id": f"00000000-0000-4000-8000-{i:012d}", "user_id": f"load-{i % 5000}", "session_id": f"load-s{i // 7}",
                "rating": 1 if i % 3 else -1, "model_name": "model-load", "source": "bench-load",
                "created_at": (day + timedelta(seconds=i * 0.5)).isoformat()} for i in range(n)]
    store = _store()
    started = time.perf_counter()
    import_records(store, iter(records), "bench-load")
    imported = time.perf_counter() - started
    stored = [normalise_record(r, "bench-load") for r in records]
    eng = engine(db_url())
    with eng.connect() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bare_copy"))
        conn.execute(sa.text("CREATE TABLE bare_copy (LIKE feedback)"))
        raw = conn.connection.driver_connection
        buffer = io.StringIO()
        with raw.cursor() as cur:
            started = time.perf_counter()
            with cur.copy(f"COPY bare_copy ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for r in stored:
                    copy.write_row([json.dumps(r[c]) if c in ("history", "tools_called", "retrieved_context",
                                                              "metadata") else r[c] for c in COLUMNS])
            copied = time.perf_counter() - started
        conn.execute(sa.text("DROP TABLE bare_copy"))
        conn.execute(sa.text("DELETE FROM feedback WHERE source = 'bench-load'"))
    del buffer
    return {"rows": n, "import_s": round(imported, 2), "import_rows_s": round(n / imported),
            "bare_copy_s": round(copied, 2), "bare_copy_rows_s": round(n / copied),
            "ratio_to_copy": round(copied / imported, 3)}


def step_select_day(rows: int) -> dict:
    """A plain SELECT of the day's rows through the same driver, fetched into Python (the baseline)."""
    from feedback_pipeline.store.repository import window_bounds
    from feedback_pipeline.store.tables import FEEDBACK

    store, day = _store(), _day(rows)
    low, high = window_bounds(day, day + timedelta(days=1))
    started = time.perf_counter()
    n = 0
    with store.engine.connect() as conn:
        result = conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.created_at >= low, FEEDBACK.c.created_at < high)
                              .order_by(FEEDBACK.c.created_at, FEEDBACK.c.id).execution_options(yield_per=5000))
        for part in result.partitions():
            n += len(part)
    took = time.perf_counter() - started
    return {"day": str(day), "rows": n, "seconds": round(took, 2), "rows_s": round(n / took)}


def _clean(rows: int, days: int, workers: int, redact: bool = True) -> dict:
    import feedback_pipeline.cleaning.windowed as windowed

    if not redact:  # the data plane alone: everything but PII detection
        real = windowed.finish
        windowed.finish = lambda kept, redact=True: real(kept, redact=False)
    store, day = _store(), _day(rows)
    started = time.perf_counter()
    done = windowed.clean_window(store, day, day + timedelta(days=days), chunk_size=5000, workers=workers)
    took = time.perf_counter() - started
    return {"window": done.ref.window, "rows_in": done.stats["rows_in"], "rows_written": done.written,
            "rejected": done.stats["rows_rejected"], "spam_flagged": done.stats["spam_flagged"],
            "workers": workers, "redact": redact, "seconds": round(took, 1),
            "rows_s": round(done.stats["rows_in"] / took, 1)}


def step_clean_day(rows: int) -> dict:
    return _clean(rows, 1, workers=2)


def step_clean_day_plain(rows: int) -> dict:
    return _clean(rows, 1, workers=1, redact=False)


BACKFILL_DAYS = int(os.environ.get("SCALE_BACKFILL_DAYS", "30"))


def step_backfill(rows: int) -> dict:
    return _clean(rows, BACKFILL_DAYS, workers=2)


def step_quality(rows: int) -> dict:
    """What feedback_quality_report computes, over the whole cleaned table."""
    from feedback_pipeline.analysis.drift import detect_drops_from_counts, drops_markdown, period_counts
    from feedback_pipeline.analysis.plots import like_rate_over_time_from_counts, period_frame, segment_bars
    from feedback_pipeline.analysis.quality import (DEFAULT_SEGMENTS, quality_report_from_counts, report_markdown,
                                                    segment_counts)
    from feedback_pipeline.store.cleaned import label_counts

    import pandas as pd

    store = _store()
    with store.engine.connect() as conn:  # how PostgreSQL answers the group-bys (an index-only scan expected)
        plan = [r[0] for r in conn.execute(sa.text(
            "EXPLAIN SELECT partition_date, label, model_name, count(*) FROM cleaned_feedback "
            "GROUP BY GROUPING SETS ((partition_date, label, model_name), (partition_date, label))"))]
    started = time.perf_counter()
    overall, per_value = label_counts(store, None, None, DEFAULT_SEGMENTS)
    grouped = time.perf_counter() - started
    report = quality_report_from_counts(overall, per_value, min_count=10)
    segments = {c: segment_counts(v) for c, v in per_value.items()}
    drops = pd.concat([detect_drops_from_counts(period_counts(segments[c])).assign(column=c) for c in DEFAULT_SEGMENTS],
                      ignore_index=True)
    plots = [like_rate_over_time_from_counts(period_frame(segments["model_name"], f), freq=f) for f in ("D", "W")]
    plots += [segment_bars(t) for t in report.tables.values() if len(t) > 1]
    markdown = report_markdown(report) + drops_markdown(drops)
    took = time.perf_counter() - started
    return {"cleaned_rows": int(report.overall["rows"]), "sql_group_by_s": round(grouped, 1),
            "seconds": round(took, 1), "report_chars": len(markdown), "plots": len(plots),
            "scan": next((line.strip() for line in plan if "Scan" in line), None)}


def step_weekly_sft(rows: int) -> dict:
    from feedback_pipeline.datasets.build import SCAN_COLUMNS, SFTPolicy, build_sft_dataset_from_chunks
    from feedback_pipeline.store.cleaned import cleaned_chunks

    store, monday = _store(), date(2026, 8, 3)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        chunks = lambda: cleaned_chunks(store, monday, monday + timedelta(days=7), SCAN_COLUMNS, 5000)  # noqa: E731
        built = build_sft_dataset_from_chunks(chunks, Path(folder), SFTPolicy(), name="sft_weekly/bench")
        took = time.perf_counter() - started
        size = sum(p.stat().st_size for p in built.directory.glob("*.jsonl"))
    n = built.stats["aggregation"]["rows"]
    return {"week": str(monday), "rated_rows": n, "records": sum(built.counts.values()),
            "mb": round(size / 1e6, 1), "seconds": round(took, 1), "rows_s": round(n / took)}


def step_sensor(rows: int) -> dict:
    """``check_new_rated`` exactly as the sensor calls it, median of 30 warm calls."""
    from feedback_pipeline.store.tables import utc

    store = _store()
    with store.engine.connect() as conn:
        watermark = utc(conn.execute(sa.text(
            "SELECT ingested_at FROM feedback WHERE rating_thumb <> 0 ORDER BY ingested_at DESC OFFSET 1000 LIMIT 1"
        )).scalar_one())

    def timed(call) -> tuple[float, tuple]:
        call()
        samples, out = [], None
        for _ in range(30):
            started = time.perf_counter()
            out = call()
            samples.append(time.perf_counter() - started)
        return round(1000 * statistics.median(samples), 2), out

    with_watermark, found = timed(lambda: store.rated_since(watermark))
    capped, _ = timed(lambda: store.rated_since(None, at_most=200))
    first_tick, total = timed(lambda: store.rated_since(None))
    return {"with_watermark_ms": with_watermark, "new_rated": found[0], "first_tick_capped_ms": capped,
            "first_tick_exact_ms": first_tick, "rated_rows": total[0]}


STEPS = {"load": step_load, "select_day": step_select_day, "clean_day": step_clean_day,
         "clean_day_plain": step_clean_day_plain, "backfill": step_backfill, "quality": step_quality,
         "weekly_sft": step_weekly_sft, "sensor": step_sensor}


def run_step(name: str, rows: int, timeout: int) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--rows", str(rows), "--step", name], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    load = [round(x, 1) for x in os.getloadavg()]  # the machine is shared: how busy it was (1, 5, 15 min)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": round(time.perf_counter() - started, 1), "load_avg": load}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg": load}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--step", choices=sorted(STEPS))
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run after generating")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the bench_scale database")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds per step")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--backfill-days", type=int, default=30,
                        help="days of the backfill step (30; at 10M rows 3 days hold as many rows as 30 at 1M)")
    args = parser.parse_args()
    if not args.step:  # the step processes inherit it (BACKFILL_DAYS)
        os.environ["SCALE_BACKFILL_DAYS"] = str(args.backfill_days)
    if args.report:
        write_report()
        return 0
    if args.step:
        out = STEPS[args.step](args.rows)
        workers = out.get("workers", 0) if out.get("workers", 1) > 1 else 0
        print(json.dumps({**out, "peak_rss_mb": peak_rss_mb(workers)}))
        return 0
    label = f"{args.rows // 1_000_000}m" if args.rows % 1_000_000 == 0 else str(args.rows)
    path = RESULTS / f"scale_{label}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"rows": args.rows, "machine": f"{os.cpu_count()} cores, {platform.platform()}",
                    "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if not args.skip_generate:
        started = time.perf_counter()
        results["generate"] = generate(args.rows)
        results["generate"]["peak_rss_mb"] = peak_rss_mb()
        print(f"generate: {results['generate']} ({time.perf_counter() - started:.0f} s)", flush=True)
        path.write_text(json.dumps(results, indent=1))
    for name in [s for s in args.steps.split(",") if s]:
        results[name] = run_step(name, args.rows, args.timeout)
        print(f"{name}: {results[name]}", flush=True)
        path.write_text(json.dumps(results, indent=1))
    if not args.keep:
        with engine(ADMIN_URL).connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB}"))
    return 0


ROWS = [  # (step, key, label, format)
    ("generate", "insert_s", "generate: INSERT ... SELECT (s)", "{:,.0f}"),
    ("generate", "index_s", "generate: CREATE INDEX x8 (s)", "{:,.0f}"),
    ("generate", "database_gb", "database size (GB)", "{:.1f}"),
    ("load", "import_rows_s", "load 100k: importer (rows/s)", "{:,.0f}"),
    ("load", "bare_copy_rows_s", "load 100k: bare COPY (rows/s)", "{:,.0f}"),
    ("load", "ratio_to_copy", "load: importer / bare COPY", "{:.2f}x"),
    ("select_day", "rows", "one day: rows", "{:,.0f}"),
    ("select_day", "rows_s", "one day: plain SELECT (rows/s)", "{:,.0f}"),
    ("clean_day", "rows_s", "one day: cleaning, 2 processes (rows/s)", "{:,.1f}"),
    ("clean_day_plain", "rows_s", "one day: cleaning without PII detection, 1 process (rows/s)", "{:,.0f}"),
    ("backfill", "days", "backfill: days (--backfill-days)", "{:,.0f}"),
    ("backfill", "rows_in", "backfill: rows", "{:,.0f}"),
    ("backfill", "seconds", "backfill (s)", "{:,.0f}"),
    ("backfill", "rows_s", "backfill (rows/s)", "{:,.1f}"),
    ("quality", "cleaned_rows", "quality report: cleaned rows", "{:,.0f}"),
    ("quality", "sql_group_by_s", "quality report: SQL group-bys (s)", "{:.1f}"),
    ("quality", "seconds", "quality report: total (s)", "{:.1f}"),
    ("weekly_sft", "rated_rows", "weekly SFT: rated rows", "{:,.0f}"),
    ("weekly_sft", "rows_s", "weekly SFT build (rows/s)", "{:,.0f}"),
    ("weekly_sft", "seconds", "weekly SFT build (s)", "{:,.0f}"),
    ("sensor", "with_watermark_ms", "sensor tick, watermark 1,000 rows back (ms)", "{:.2f}"),
    ("sensor", "first_tick_capped_ms", "sensor first tick, at_most=200 (ms)", "{:.2f}"),
    ("sensor", "first_tick_exact_ms", "sensor first tick, exact count (ms)", "{:,.1f}"),
]
RSS_STEPS = ("generate", "load", "select_day", "clean_day", "clean_day_plain", "backfill", "quality", "weekly_sft",
             "sensor")


def write_report() -> None:
    """The figures table of bench/results/scale_data_plane.md from the scale_*.json files (the prose around it is
    written by hand from the same files)."""
    runs = {p.stem.removeprefix("scale_"): json.loads(p.read_text()) for p in sorted(RESULTS.glob("scale_*.json"))}
    labels = sorted(runs, key=lambda k: runs[k]["rows"])
    header = ["figure", *labels] + ([f"{labels[-1]} / {labels[0]}"] if len(labels) > 1 else [])

    def value(run: dict, step: str, key: str):
        found = run.get(step, {})
        if not isinstance(found, dict) or "error" in found:
            return None
        if key == "days" and "window" in found:  # "2026-08-30 .. 2026-09-02"
            first, _, last = found["window"].partition(" .. ")
            return (date.fromisoformat(last) - date.fromisoformat(first)).days
        return found.get(key)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(ROWS) + [(step, "peak_rss_mb", f"peak RSS: {step} (MB)", "{:,.0f}") for step in RSS_STEPS]
    for step, key, label, fmt in rows:
        values = [value(runs[k], step, key) for k in labels]
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "-" for v in values]
        if len(labels) > 1:
            first, last = values[0], values[-1]
            cells.append(f"{last / first:.2f}" if isinstance(first, (int, float)) and isinstance(last, (int, float))
                         and first else "-")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    table = "\n".join(lines)
    target = RESULTS / "scale_data_plane.md"
    marker = "<!-- figures -->"
    text = target.read_text() if target.exists() else f"# The data plane at scale\n\n{marker}\n{marker}\n"
    head, _, rest = text.partition(marker)
    _, _, tail = rest.partition(marker)
    target.write_text(f"{head}{marker}\n{table}\n{marker}{tail}")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
