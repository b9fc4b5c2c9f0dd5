"""Stats endpoints at 1M feedback rows, and what the summary triggers cost a bulk import.

    .venv/bin/python bench/stats_endpoints.py [--rows 1000000] [--requests 300] [--out bench/results/stats_endpoints.md]

For PostgreSQL (a fresh schema in FEEDBACK_TEST_POSTGRES_URL, dropped afterwards) and SQLite (a temp file): fill
``feedback`` in SQL (generate_series / a recursive CTE; the triggers build the summary as rows land), start the real
uvicorn service, and time GET /v1/feedback/stats and /accuracy over HTTP (p50/p99), next to the same answers
computed from ``feedback`` directly. Trigger cost: 100k rows written with and without migration 007, through the
bulk importer's path (PostgreSQL: COPY to staging + one upsert per chunk; SQLite: FeedbackStore.write),
then re-rated (upsert UPDATE) and deleted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from feedback_pipeline.ingestion.importers import CHUNK_ROWS  # noqa: E402
from feedback_pipeline.ingestion.records import COLUMNS  # noqa: E402
from feedback_pipeline.service.keys import create_key  # noqa: E402
from feedback_pipeline.settings import REPO_ROOT  # noqa: E402
from feedback_pipeline.store import daily_stats  # noqa: E402
from feedback_pipeline.store.bulk import chunk_writer  # noqa: E402
from feedback_pipeline.store.migrate import migrate  # noqa: E402
from feedback_pipeline.store.repository import FeedbackStore  # noqa: E402
from feedback_pipeline_tests.conftest import POSTGRES_URL  # noqa: E402
from feedback_pipeline_tests.test_service import _start, _stop, call  # noqa: E402

# Every day holds every one of 3 models x 2 versions x 5 intents x 4 projects x 3 subjects = 360 keys.
_DIMS = ("'model-' || (i / 90 % 3)", "'v' || (i / 270 % 2)", "'intent-' || (i / 540 % 5)",
         "'project-' || (i / 2700 % 4)", "'subject-' || (i / 10800 % 3)")
_THUMB = "CASE WHEN {h} < 6 THEN 1 WHEN {h} < 8 THEN -1 WHEN {h} = 8 THEN 0 END"
_COLS = ("id, created_at, updated_at, ingested_at, user_id, query, response, model_name, model_version, intent, "
         "project, subject, rating, rating_thumb, rating_scale, source")
PG_FILL = f"""INSERT INTO feedback ({_COLS})
SELECT md5('bench' || i)::uuid, ts, ts, ts, 'u' || (i % 5000), 'question ' || i, 'answer ' || i, {', '.join(_DIMS)},
       r, r, 'thumbs', 'bench'
FROM (SELECT i, now() - (i % 90) * interval '1 day' - (i % 86400) * interval '1 second' AS ts,
             {_THUMB.format(h="(abs(hashint4(i)) % 10)")} AS r FROM generate_series(1, :n) i) g"""
SQLITE_FILL = f"""WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n)
INSERT INTO feedback ({_COLS})
SELECT printf('00000000-0000-4000-8000-%012d', i), ts, ts, ts, 'u' || (i % 5000), 'question ' || i, 'answer ' || i,
       {', '.join(_DIMS)}, r, r, 'thumbs', 'bench'
FROM (SELECT i, strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d days', i % 90), printf('-%d seconds', i % 86400)) AS ts,
             {_THUMB.format(h="(i * 7919 % 10)")} AS r FROM g)"""
PATHS = ["/v1/feedback/stats?window=7", "/v1/feedback/stats?window=30", "/v1/feedback/stats?window=90",
         "/v1/feedback/stats?window=30&model_name=model-1&intent=intent-2",
         "/v1/feedback/accuracy?window=30", "/v1/feedback/accuracy?window=90"]


def _pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _query(path: str) -> tuple[str, daily_stats.StatsQuery]:
    endpoint, _, params = path.rpartition("/")[2].partition("?")
    args = dict(p.split("=") for p in params.split("&"))
    return endpoint, daily_stats.build_query(int(args.pop("window")), **args)


def _rows(n: int, seed: str, thumb: int = 1) -> list[dict]:
    now = datetime.now(timezone.utc)
    base = {c: None for c in COLUMNS}
    return [{**base, "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{seed}{i}")), "created_at": now - timedelta(minutes=i),
             "updated_at": now + timedelta(seconds=thumb), "ingested_at": now, "query": f"q{i}", "response": "r",
             "model_name": f"model-{i % 3}", "intent": f"intent-{i % 5}", "rating": float(thumb),
             "rating_thumb": thumb, "rating_raw": str(thumb), "source": "bench"} for i in range(n)]


def trigger_cost(url: str, with_summary: bool, n: int = 100_000) -> dict[str, float]:
    """Seconds to insert n rows (in CHUNK_ROWS chunks), re-rate them all (upsert UPDATE) and delete them."""
    folder = Path(tempfile.mkdtemp())
    for path in (REPO_ROOT / "sql").glob("*.sql"):
        if with_summary or not path.name.startswith("007_"):
            shutil.copy(path, folder)
    store = FeedbackStore(url)
    migrate(store.engine, folder)
    out = {}
    for step, thumb in (("insert", 1), ("re-rate", -1)):
        rows = _rows(n, "t", thumb)
        start = time.perf_counter()
        with chunk_writer(store) as writer:  # the bulk importer's writer, in its chunk size
            for i in range(0, n, CHUNK_ROWS):
                writer.submit(rows[i:i + CHUNK_ROWS])
            writer.flush()
        out[step] = time.perf_counter() - start
    start = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM feedback"))
    out["delete"] = time.perf_counter() - start
    store.dispose()
    shutil.rmtree(folder)
    return out


def bench_store(name: str, url: str, fill: str, rows: int, requests: int, tmp: Path) -> list[str]:
    store = FeedbackStore(url)
    store.migrate()
    start = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(sa.text(fill), {"n": rows})
    fill_s = time.perf_counter() - start
    with store.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    if name == "PostgreSQL":  # the steady state autovacuum keeps: hint bits set, visibility map current
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE feedback_daily_stats"))
    with store.engine.connect() as conn:
        summary_rows = conn.execute(sa.text("SELECT count(*) FROM feedback_daily_stats")).scalar()
    assert daily_stats.summary_table(store.engine) == daily_stats.summary_table(store.engine, from_feedback=True)
    _, secret = create_key(store, "bench", "read")
    proc, base = _start(url, tmp)
    lines = [f"\n### {name}: {rows:,} feedback rows, {summary_rows:,} summary rows; fill with triggers {fill_s:.1f} s\n",
             "| request | HTTP p50 ms | HTTP p99 ms | from `feedback` p50 ms | from `feedback` p99 ms |",
             "|---|---:|---:|---:|---:|"]
    try:
        for path in PATHS:
            for _ in range(10):
                assert call("GET", base + path, key=secret)[0] == 200
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                status, answer = call("GET", base + path, key=secret)
                times.append(time.perf_counter() - t)
                assert status == 200, answer
            endpoint, query = _query(path)
            fn = getattr(daily_stats, endpoint)
            assert fn(store.engine, query, from_feedback=True) == answer  # same numbers, 30x+ the work
            direct = []
            for _ in range(max(5, requests // 30)):
                t = time.perf_counter()
                fn(store.engine, query, from_feedback=True)
                direct.append(time.perf_counter() - t)
            lines.append(f"| `{path.removeprefix('/v1/feedback/')}` | {_pct(times, .5):.1f} | {_pct(times, .99):.1f} "
                         f"| {_pct(direct, .5):.0f} | {_pct(direct, .99):.0f} |")
            print(lines[-1], flush=True)
    finally:
        _stop(proc)
        store.dispose()
    return lines


def main(args: argparse.Namespace) -> None:
    os.environ["FEEDBACK_RATE_LIMIT_PER_MINUTE"] = "1000000"
    tmp = Path(tempfile.mkdtemp())
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    schemas = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        pg_version = conn.execute(sa.text("SHOW server_version")).scalar()
    pg = [f"{POSTGRES_URL}?options=-csearch_path%3D{s}" for s in schemas]
    try:
        lines = [f"# Stats endpoints at {args.rows:,} rows\n",
                 f"`{' '.join(['.venv/bin/python', *sys.argv])}` on {os.cpu_count()} CPUs, PostgreSQL {pg_version}, "
                 f"SQLite {__import__('sqlite3').sqlite_version}, Python {platform.python_version()}; "
                 f"{args.requests} sequential requests per row over real HTTP (uvicorn, one new connection each); "
                 "'from `feedback`' = the same answer computed by GROUP BY over the feedback table, in-process.\n",
                 f"## Trigger cost: 100,000 rows, seconds, median of {args.trials} alternating trials "
                 "(without migration 007 -> with it)\n",
                 f"| store | insert ({CHUNK_ROWS:,}-row chunks) | re-rate all (upsert UPDATE) | delete all |", "|---|---:|---:|---:|"]
        for name, without, with_ in (("PostgreSQL (COPY + upsert)", pg[1], pg[2]),
                                     ("SQLite (FeedbackStore.write)", f"sqlite:///{tmp / 'a.db'}", f"sqlite:///{tmp / 'b.db'}")):
            trials = [(trigger_cost(without, False), trigger_cost(with_, True)) for _ in range(args.trials)]
            off, on = ({k: statistics.median(t[i][k] for t in trials) for k in trials[0][0]} for i in (0, 1))
            lines.append(f"| {name} | " + " | ".join(f"{off[k]:.2f} -> {on[k]:.2f} ({on[k] / off[k] - 1:+.0%})"
                                                     for k in ("insert", "re-rate", "delete")) + " |")
            print(lines[-1], flush=True)
        lines.append("\n## Latency")
        lines += bench_store("PostgreSQL", pg[0], PG_FILL, args.rows, args.requests, tmp)
        lines += bench_store("SQLite", f"sqlite:///{tmp / 'bench.db'}", SQLITE_FILL, args.rows, args.requests, tmp)
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        shutil.rmtree(tmp)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="feedback rows per store")
    parser.add_argument("--requests", type=int, default=300, help="timed HTTP requests per endpoint and store")
    parser.add_argument("--trials", type=int, default=3, help="trigger-cost trials per store")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    main(parser.parse_args())
