"""Bulk import throughput and memory: ``feedback-pipeline import jsonl`` against a bare COPY of the same rows.

    .venv/bin/python bench/bulk_import.py --rows 1000000

Generates N realistic JSONL rows (query ~100 chars, response ~500, a metadata object, a 2-4 message history)
in a temp folder, then in one run on PostgreSQL (a fresh schema, dropped afterwards): (a) a bare COPY of the
same rows, pre-rendered in COPY text format, into a plain table with the feedback columns and no keys or
indexes (the baseline); (b) the CLI import end to end in a subprocess (rows/s, peak RSS from wait4); then the
same CLI import into a fresh SQLite file. Writes bench/results/bulk_import.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from feedback_pipeline.ingestion.records import COLUMNS  # noqa: E402
from feedback_pipeline.ingestion.importers import CHUNK_ROWS  # noqa: E402
from feedback_pipeline.ingestion.strict import parse_json, validate_record  # noqa: E402
from feedback_pipeline.store.bulk import _COLS  # noqa: E402

POSTGRES_URL = os.environ.get("FEEDBACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
WORDS = ("password reset account billing invoice refund shipping order delivery login error api key limit "
         "export report dashboard team member plan upgrade cancel subscription token timeout model answer").split()


def _text(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out).capitalize() + "."


def generate(path: Path, copy_path: Path, rows: int, seed: int = 7) -> None:
    """The JSONL file for the import, and the same rows (as the importer would store them) in COPY text format."""
    rng, start = random.Random(seed), datetime(2024, 1, 1, tzinfo=timezone.utc)
    with open(path, "w", encoding="utf-8") as jsonl, open(copy_path, "w", encoding="utf-8") as copy:
        for i in range(rows):
            turns = rng.randint(1, 2)
            record = {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "created_at": (start + timedelta(seconds=i * 13)).isoformat().replace("+00:00", "Z"),
                "user_id": f"user-{rng.randrange(20_000)}", "session_id": f"s-{i // 3}", "message_index": 2 * turns + 1,
                "query": _text(rng, 100), "response": _text(rng, 500),
                "history": [m for _ in range(turns) for m in ({"role": "user", "content": _text(rng, 80)},
                                                             {"role": "assistant", "content": _text(rng, 160)})],
                "model_name": "support-chat", "model_version": f"v{rng.randint(1, 4)}", "intent": rng.choice(WORDS),
                "project": "helpdesk", "subject": rng.choice(WORDS), "rating": rng.choice(["up", "down", 0.5, -1]),
                "comment": _text(rng, 60) if rng.random() < 0.2 else None, "latency_ms": round(rng.uniform(80, 4000), 1),
                "prompt_tokens": rng.randint(50, 900), "completion_tokens": rng.randint(20, 400),
                "metadata": {"app": "web", "locale": rng.choice(["en-GB", "de-DE", "fr-FR"]), "ab": rng.randint(0, 1)},
            }
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            row = validate_record(record, "jsonl")
            copy.write("\t".join(_copy_text(row[c]) for c in COLUMNS) + "\n")


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, datetime):
        value = value.isoformat()
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def bare_copy(url: str, copy_path: Path) -> float:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        # The importer's columns and types, no keys or indexes.
        cur.execute(f"CREATE TABLE plain AS SELECT {_COLS} FROM feedback WITH NO DATA")
        conn.commit()
        started = time.perf_counter()
        with open(copy_path, "rb") as source, cur.copy(f"COPY plain ({_COLS}) FROM STDIN") as copy:
            while block := source.read(1 << 20):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def database_share(url: str, copy_path: Path, chunk: int) -> float:
    """The database's part of the import alone: pre-rendered chunks COPYed into staging and merged by the
    importer's own upsert into the indexed feedback table (no Python parsing or validation)."""
    from feedback_pipeline.store.bulk import _COPY, _STAGE, _UPSERT

    with psycopg.connect(url) as conn, conn.cursor() as cur, open(copy_path, encoding="utf-8") as source:
        started = time.perf_counter()
        while lines := list(itertools.islice(source, chunk)):
            cur.execute(_STAGE)
            with cur.copy(_COPY) as copy:
                copy.write("".join(f"{i}\t{line}" for i, line in enumerate(lines)))
            cur.execute(_UPSERT)
            conn.commit()
        return time.perf_counter() - started


def python_share(path: Path) -> float:
    """CPU seconds of the importer's per-line work alone: parse_json + validate_record, no database."""
    started = time.process_time()
    with open(path, "rb") as source:
        for line in source:
            validate_record(parse_json(line), "jsonl", checked=True)
    return time.process_time() - started


def cli_import(db_url: str, path: Path) -> tuple[float, float, dict]:
    """Seconds, peak RSS (MB) and summary of ``feedback-pipeline import jsonl`` in its own process."""
    env = {**os.environ, "FEEDBACK_DB_URL": db_url}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "feedback_pipeline.cli", "import", "jsonl", str(path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"import failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bulk_import.md")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    from feedback_pipeline.store.repository import FeedbackStore

    with tempfile.TemporaryDirectory(prefix="bulk_import_") as tmp:
        path, copy_path = Path(tmp) / "feedback.jsonl", Path(tmp) / "feedback.copy"
        started = time.perf_counter()
        generate(path, copy_path, args.rows)
        print(f"generated {args.rows} rows ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - started:.0f} s",
              flush=True)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        try:
            store = FeedbackStore(url)
            store.migrate()
            store.dispose()
            copy_s = bare_copy(url, copy_path)
            print(f"bare COPY: {copy_s:.1f} s", flush=True)
            pg = cli_import(url, path)
            print(f"import postgresql: {pg[0]:.1f} s, {pg[1]:.0f} MB, {pg[2]}", flush=True)
            with psycopg.connect(url) as conn:
                conn.execute("TRUNCATE feedback")
            db_s = database_share(url, copy_path, CHUNK_ROWS)
            print(f"database share: {db_s:.1f} s", flush=True)
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
        py_s = python_share(path)
        print(f"python share: {py_s:.1f} CPU s", flush=True)
        lite = None if args.skip_sqlite else cli_import(f"sqlite:///{Path(tmp) / 'feedback.db'}", path)
        if lite:
            print(f"import sqlite: {lite[0]:.1f} s, {lite[1]:.0f} MB, {lite[2]}", flush=True)
        size_mb = path.stat().st_size / 2**20
    n = args.rows
    lines = [
        "# Bulk import benchmark", "",
        f"`{' '.join(['.venv/bin/python', 'bench/bulk_import.py', '--rows', str(n)])}` on {os.cpu_count()} CPU cores, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}. {n:,} generated JSONL rows ({size_mb:.0f} MB: query ~100 chars, "
        "response ~500, metadata object, 2-4 message history). PostgreSQL runs on the same machine.", "",
        "| step | seconds | rows/s | peak RSS of the process | ratio to bare COPY |", "|---|---:|---:|---:|---:|",
        f"| bare COPY into a plain table (no keys, no indexes; rows pre-rendered) | {copy_s:.1f} | {n / copy_s:,.0f} | - | 1.00 |",
        f"| `feedback-pipeline import jsonl`, PostgreSQL | {pg[0]:.1f} | {n / pg[0]:,.0f} | {pg[1]:.0f} MB | {copy_s / pg[0]:.2f} |",
        f"| database share: the same chunks pre-rendered, COPY to staging + the importer's upsert into the indexed table "
        f"| {db_s:.1f} | {n / db_s:,.0f} | - | {copy_s / db_s:.2f} |",
        f"| Python share: `parse_json` + `validate_record` per line, no database (CPU seconds) | {py_s:.1f} | "
        f"{n / py_s:,.0f} | - | {copy_s / py_s:.2f} |",
    ]
    if lite:
        lines.append(f"| `feedback-pipeline import jsonl`, SQLite | {lite[0]:.1f} | {n / lite[0]:,.0f} | {lite[1]:.0f} MB | - |")
    lines += ["", f"PostgreSQL summary: `{json.dumps(pg[2])}`"]
    if lite:
        lines.append(f"SQLite summary: `{json.dumps(lite[2])}`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
