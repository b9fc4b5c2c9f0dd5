"""Memory of the streaming SFT build per row of the window (issue 12): peak RSS and tracemalloc peak at N rows.

    .venv/bin/python bench/dataset_memory.py                      # N = 50k and 200k -> bench/results/dataset_memory.json
    .venv/bin/python bench/dataset_memory.py --rows 50000 --label after --out /tmp/m.json

Recipe: cleaned rows made in memory, a chunk at a time, exactly as ``store.cleaned.cleaned_chunks`` yields them
(``SCAN_COLUMNS``, UTC times, string ids, 5,000 rows a chunk, (created_at, id) order), like a chat application's
traffic over a week, from the oasst1-en-validation replies in ``../shared/data`` (never copied into the repo):
row g takes seed ``sha256(g) mod S`` (its query gets `` (question g)`` and its response ``(answer g)``: every row
is its own question and answer, histories repeat), sessions of 7 turns, each of one user ``floor(N/25 * x^2)`` for
a uniform x (skewed), labels 65% liked, 25% disliked, 10% neutral, ``created_at`` one second apart. Each N runs in a fresh
subprocess, twice: once for ru_maxrss (its peak RSS minus the RSS just before the build: the seeds and imports),
once under tracemalloc up to 50k rows (its peak of traced Python and numpy allocations during the build). The generator holds
one chunk; the per-row cost is what the build keeps of the window.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "dataset_memory.json"
CHUNK = 5000


def _seeds() -> list[dict]:
    from feedback_pipeline.ingestion.importers import read_oasst1
    from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record
    from feedback_pipeline.settings import load_settings

    seeds = []
    for record in read_oasst1(load_settings().shared_data_dir / "oasst1-en-validation" / "en-validation.jsonl"):
        try:
            row = normalise_record(record, "oasst1")
        except (FeedbackValidationError, TypeError, AttributeError):
            continue
        seeds.append({"query": row["query"], "history": row["history"] or None, "response": row["response"]})
    return seeds


def _hash(g: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}{g}".encode()).digest()[:8], "big")


def make_chunks(rows: int, seeds: list[dict]):
    """``chunks()`` for ``build_sft_dataset_from_chunks``: ``rows`` cleaned rows, ``CHUNK`` at a time."""
    from feedback_pipeline.datasets.build import SCAN_COLUMNS

    users = max(1, rows // 25)
    start = pd.Timestamp("2026-08-03", tz="UTC")

    def chunk(low: int, high: int) -> pd.DataFrame:
        records = []
        for g in range(low, high):
            seed = seeds[_hash(g, "seed") % len(seeds)]
            user = int(users * ((_hash(g // 7, "user") % 1000003) / 1000003.0) ** 2)  # a session's user
            draw = _hash(g, "label") % 100
            rating = 1.0 if draw < 65 else -1.0 if draw < 90 else 0.0
            created = start + pd.Timedelta(seconds=g)
            records.append({
                "id": str(uuid.UUID(bytes=hashlib.md5(f"bench-{g}".encode()).digest(), version=4)),
                "session_id": f"user-{user}-s{g // 7}", "user_id": f"user-{user}",
                "query": f"{seed['query']} (question {g})", "history": seed["history"],
                "response": f"{seed['response']}\n\n(answer {g})",
                "label": "liked" if rating > 0 else "disliked" if rating < 0 else "neutral", "rating": rating,
                "metadata": {}, "created_at": created, "updated_at": created,
                "ingested_at": created + pd.Timedelta(seconds=2), "duplicate_count": 1,
                "exclude_from_training": False})
        frame = pd.DataFrame(records, columns=list(SCAN_COLUMNS))
        for name in ("created_at", "updated_at", "ingested_at"):
            frame[name] = pd.to_datetime(frame[name], utc=True)
        return frame.sort_values(["created_at", "id"], ignore_index=True)

    return lambda: (chunk(low, min(rows, low + CHUNK)) for low in range(0, rows, CHUNK))


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


def measure(rows: int, traced: bool) -> dict:
    from feedback_pipeline.datasets.build import SFTPolicy, build_sft_dataset_from_chunks

    seeds = _seeds()
    chunks = make_chunks(rows, seeds)
    next(iter(chunks()))  # warm: pandas' lazy imports, the first chunk's allocations
    before = _rss_mb()
    if traced:
        tracemalloc.start()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        built = build_sft_dataset_from_chunks(chunks, Path(folder), SFTPolicy(max_file_mb=1e6), name="sft")
        took = time.perf_counter() - started
    result = {"rows": rows, "records": sum(built.counts.values()), "fingerprint": built.fingerprint,
              ("traced_seconds" if traced else "seconds"): round(took, 1)}
    if traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.update(tracemalloc_peak_mb=round(peak / 2**20, 1), tracemalloc_bytes_per_row=round(peak / rows))
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result.update(rss_before_mb=round(before, 1), peak_rss_mb=round(peak, 1),
                      rss_bytes_per_row=round((peak - before) * 2**20 / rows))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[50_000, 200_000])
    parser.add_argument("--label", default="after", help="the key the runs are stored under in the result file")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--trace-max", type=int, default=50_000,
                        help="tracemalloc runs only up to this many rows (tracing is ~10x slower)")
    parser.add_argument("--child", nargs=2, metavar=("ROWS", "TRACED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1] == "1")))
        return 0
    runs = []
    for rows in args.rows:
        run = {}
        for traced in ([False, True] if rows <= args.trace_max else [False]):
            out = subprocess.run([sys.executable, __file__, "--child", str(rows), str(int(traced))], cwd=ROOT,
                                 check=True, capture_output=True, text=True).stdout
            run.update(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(run), flush=True)
        runs.append(run)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
