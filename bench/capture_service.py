"""Capture service throughput: single POSTs at c=1/8/32 with ApacheBench (keep-alive) against the real uvicorn
service on PostgreSQL and SQLite (WAL), and the same load against a FastAPI hello endpoint in the same run; then
batches of 1,000 records. Writes bench/results/capture_service.md.

    apt-get install apache2-utils   # ab
    .venv/bin/python bench/capture_service.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feedback_pipeline.service.keys import create_key  # noqa: E402
from feedback_pipeline.store.repository import FeedbackStore  # noqa: E402
from feedback_pipeline_tests.test_service import _free_port, _start, _stop  # noqa: E402

POSTGRES = os.environ.get("FEEDBACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RECORD = {"query": "How do I reset my password?", "response": "Open Settings, then Security, then Reset. " * 5,
          "rating": "down", "comment": "the menu moved", "user_id": "bench", "session_id": "s1",
          "model_name": "chat", "model_version": "v1", "intent": "account", "project": "web"}

HELLO = """
import uuid, uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
@app.post("/hello")
async def hello(request: Request):
    await request.json()
    return {"id": str(uuid.uuid4()), "created": True}
uvicorn.run(app, host="127.0.0.1", port={port}, server_header=False, log_level="warning")
"""


def ab(url: str, body: Path, concurrency: int, requests: int, secret: str | None) -> dict:
    cmd = ["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency), "-p", str(body), "-T", "application/json"]
    if secret:
        cmd += ["-H", f"Authorization: Bearer {secret}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=900).stdout

    def grab(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, out, re.M)
        return match.group(1) if match else default

    return {"rps": float(grab(r"Requests per second:\s+([\d.]+)")), "p50": int(grab(r"^\s+50%\s+(\d+)")),
            "p99": int(grab(r"^\s+99%\s+(\d+)")), "failed": int(grab(r"Failed requests:\s+(\d+)")),
            "non2xx": int(grab(r"Non-2xx responses:\s+(\d+)"))}


def post_batch(base: str, secret: str, n: int = 1000) -> float:
    records = [{**RECORD, "user_id": f"batch-{uuid.uuid4()}"} for _ in range(n)]
    data = json.dumps({"records": records}).encode()
    started = time.perf_counter()
    request = urllib.request.Request(base + "/v1/feedback/batch", data=data, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        counts = json.loads(response.read())["counts"]
    assert counts == {"inserted": n}, counts
    return time.perf_counter() - started


def run_store(kind: str, url: str, tmp: Path, body: Path, requests: int) -> list[dict]:
    store = FeedbackStore(url)
    store.migrate()
    secret = create_key(store, "bench", "write")[1]
    # The rate limit is not what is measured here; workers as configured (FEEDBACK_API_WORKERS, default 1).
    proc, base = _start(url, tmp, env={"FEEDBACK_RATE_LIMIT_PER_MINUTE": "100000000"})
    rows = []
    try:
        for c in (1, 8, 32):
            rows.append({"target": f"service/{kind}", "c": c, **ab(base + "/v1/feedback", body, c,
                                                                   requests // 3 if c == 1 else requests, secret)})
        seconds = [post_batch(base, secret) for _ in range(5)]
        rows.append({"target": f"service/{kind} batch of 1,000", "c": 1, "rps": round(5000 / sum(seconds), 1),
                     "p50": int(sorted(seconds)[2] * 1000), "p99": int(max(seconds) * 1000), "failed": 0,
                     "non2xx": 0, "unit": "records/s"})
        with store.engine.connect() as conn:
            rows[-1]["stored"] = conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar_one()
    finally:
        _stop(proc)
        store.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    body = tmp / "record.json"
    body.write_text(json.dumps(RECORD))
    rows = []
    # The hello endpoint first, then each store, all in this one run on this machine.
    port = _free_port()
    hello = subprocess.Popen([sys.executable, "-c", HELLO.replace("{port}", str(port))])
    time.sleep(3)
    try:
        for c in (1, 8, 32):
            rows.append({"target": "hello", "c": c, **ab(f"http://127.0.0.1:{port}/hello", body, c,
                                                         args.requests // 3 if c == 1 else args.requests, None)})
    finally:
        hello.terminate()
        hello.wait()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        rows += run_store("postgresql", f"{POSTGRES}?options=-csearch_path%3D{schema}", tmp, body, args.requests)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    rows += run_store("sqlite", f"sqlite:///{tmp / 'bench.db'}", tmp, body, args.requests)
    hello_rps = {r["c"]: r["rps"] for r in rows if r["target"] == "hello"}
    lines = [f"# Capture service throughput ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, one run)", "",
             "ApacheBench with keep-alive, one uvicorn process, client and server on the same machine. "
             "`vs hello` = req/s over the FastAPI hello endpoint's req/s at the same concurrency, same run.", "",
             "| target | c | req/s | vs hello | p50 ms | p99 ms | failed | non-2xx |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if "batch" in r["target"] or r["target"] == "hello" else f"{r['rps'] / hello_rps[r['c']]:.2f}x"
        unit = " records/s" if r.get("unit") else ""
        lines.append(f"| {r['target']} | {r['c']} | {r['rps']:.0f}{unit} | {ratio} | {r['p50']} | {r['p99']} | "
                     f"{r['failed']} | {r['non2xx']} |")
    out = ROOT / "bench" / "results" / "capture_service.md"
    out.write_text("\n".join(lines) + "\n\nBatch rows: p50/p99 are the wall time of one 1,000-record request.\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
