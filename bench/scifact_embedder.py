"""nice -n 10 .venv/bin/python bench/scifact_embedder.py [--data /work/shared/data/scifact-train]

Proof on real data that fine-tuning the retrieval embedder helps: SciFact claims -> cited abstracts.

About 10% of the judged *training* claims are held out (none of their pairs is trained on). all-MiniLM-L6-v2 is
fine-tuned on the other claims -> cited abstracts, each with one hard negative mined with the base model
(MultipleNegativesRankingLoss, 1 epoch, batch 32), then base and fine-tuned models retrieve for the held-out claims
over the full 5,183-abstract corpus, in the same run. The corpus is encoded once per model: the base model's pass
serves both its evaluation and the mining. Writes bench/results/scifact_embedder.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_pipeline.datasets.embedding_pairs import export_pairs, mine_hard_negatives, pairs_from_beir  # noqa: E402
from feedback_pipeline.evaluation.retrieval import encode_corpus, evaluate_retrieval, paired_bootstrap_ci  # noqa: E402
from feedback_pipeline.settings import load_settings  # noqa: E402
from feedback_pipeline.training.embedder import EmbedderConfig, main, resolve_base_model  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "scifact_embedder.json"


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _metrics(result: dict) -> dict:
    return {key: result[key] for key in ("ndcg@10", "mrr@10", "recall@10", "n_queries")}


def run(data: Path, work: Path, holdout: float, seed: int, batch_size: int, epochs: float) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    phases: dict[str, float] = {}
    start = time.perf_counter()
    train_pairs, eval_queries, corpus, eval_qrels = pairs_from_beir(data, holdout, seed)
    phases["load_data_s"] = time.perf_counter() - start
    train_queries = set(train_pairs["query"])
    assert not train_queries & set(eval_queries.values()), "a held-out claim is in the training pairs"
    held_docs = {d for rel in eval_qrels.values() for d in rel}
    _say(f"{len(train_pairs)} training pairs from {len(train_queries)} claims; {len(eval_queries)} held-out claims; "
         f"corpus {len(corpus)} abstracts")

    base_path = resolve_base_model("")
    base = SentenceTransformer(base_path, device="cpu")
    start = time.perf_counter()
    base_embeddings = encode_corpus(base, corpus, batch_size=64, show_progress_bar=False)
    phases["encode_corpus_base_s"] = time.perf_counter() - start
    _say(f"base corpus encoded in {phases['encode_corpus_base_s']:.0f} s")
    base_eval = evaluate_retrieval(base, eval_queries, corpus, eval_qrels, corpus_embeddings=base_embeddings)
    phases["search_base_s"] = base_eval["query_search_s"]
    _say(f"base: nDCG@10 {base_eval['ndcg@10']:.4f}  MRR@10 {base_eval['mrr@10']:.4f}")

    start = time.perf_counter()
    mined = mine_hard_negatives(train_pairs, corpus, base, num_negatives=1, range_min=0, range_max=50,
                                relative_margin=0.05, corpus_embeddings=base_embeddings)
    phases["mine_negatives_s"] = time.perf_counter() - start
    with_negative = int(mined["negative"].notna().sum())
    negatives_held_relevant = int(mined["negative_id"].isin(held_docs).sum())
    _say(f"mined: {with_negative}/{len(mined)} pairs have a hard negative ({phases['mine_negatives_s']:.0f} s)")
    paths = export_pairs(mined, work / "pairs")
    manifest = json.loads(paths["manifest"].read_text())
    del base

    cfg = EmbedderConfig(train_file=str(paths["train"]), output_dir=str(work / "model"), loss="mnrl", epochs=epochs,
                         batch_size=batch_size, learning_rate=2e-5, warmup_ratio=0.1, seed=seed, max_seq_length=256,
                         logging_steps=5)
    start = time.perf_counter()
    trained = main(cfg, log=_say)
    phases["train_wall_s"] = time.perf_counter() - start
    phases["train_runtime_s"] = trained.train_runtime_s

    tuned = SentenceTransformer(trained.model_dir, device="cpu")  # reload from disk: what a deployment would load
    start = time.perf_counter()
    tuned_embeddings = encode_corpus(tuned, corpus, batch_size=64, show_progress_bar=False)
    phases["encode_corpus_finetuned_s"] = time.perf_counter() - start
    tuned_eval = evaluate_retrieval(tuned, eval_queries, corpus, eval_qrels, corpus_embeddings=tuned_embeddings)
    phases["search_finetuned_s"] = tuned_eval["query_search_s"]
    _say(f"fine-tuned: nDCG@10 {tuned_eval['ndcg@10']:.4f}  MRR@10 {tuned_eval['mrr@10']:.4f}")
    assert base_eval["query_ids"] == tuned_eval["query_ids"]

    return {
        "dataset": {"folder": str(data), "holdout_fraction": holdout, "seed": seed,
                    "train_pairs": len(train_pairs), "train_claims": len(train_queries),
                    "heldout_claims": len(eval_queries), "heldout_judgements": sum(map(len, eval_qrels.values())),
                    "corpus_docs": len(corpus), "pairs_with_hard_negative": with_negative,
                    "hard_negatives_relevant_to_heldout_claims": negatives_held_relevant,
                    "heldout_relevant_docs_also_train_positives": len(held_docs & set(train_pairs["positive_id"])),
                    "pairs_fingerprint": manifest["fingerprint"]},
        "training": {"base_model": base_path, "loss": cfg.loss, "epochs": epochs, "batch_size": batch_size,
                     "learning_rate": cfg.learning_rate, "max_seq_length": cfg.max_seq_length,
                     "steps": trained.steps, "examples": trained.n_train_examples,
                     "final_train_loss": trained.final_train_loss, "loss_history": trained.loss_history,
                     "pairs_per_s": trained.examples_per_s, "weights_changed": trained.weights_changed},
        "base": _metrics(base_eval),
        "finetuned": _metrics(tuned_eval),
        "difference_ci95": {"ndcg@10": paired_bootstrap_ci(base_eval["per_query_ndcg"], tuned_eval["per_query_ndcg"],
                                                           n=1000, seed=seed),
                            "mrr@10": paired_bootstrap_ci(base_eval["per_query_mrr"], tuned_eval["per_query_mrr"],
                                                          n=1000, seed=seed)},
        "per_query": {"query_ids": base_eval["query_ids"], "base_ndcg@10": base_eval["per_query_ndcg"],
                      "finetuned_ndcg@10": tuned_eval["per_query_ndcg"]},
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "environment": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__,
                        "sentence_transformers": __import__("sentence_transformers").__version__,
                        "niceness": os.nice(0), "load_avg_at_end": list(os.getloadavg()),
                        "note": "2 CPU cores shared with other jobs: wall times are upper bounds of idle times"},
    }


def table(result: dict) -> str:
    lines = [f"{'model':<12} {'nDCG@10':>8} {'MRR@10':>8} {'R@10':>8}"]
    for name in ("base", "finetuned"):
        m = result[name]
        lines.append(f"{name:<12} {m['ndcg@10']:>8.4f} {m['mrr@10']:>8.4f} {m['recall@10']:>8.4f}")
    for key, ci in result["difference_ci95"].items():
        lines.append(f"diff {key}: {ci['mean_diff']:+.4f}  95% CI [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}]"
                     f"  P(boot diff <= 0) {ci['p_not_better']:.3f}")
    lines.append(f"held-out claims {result['dataset']['heldout_claims']}, corpus {result['dataset']['corpus_docs']}, "
                 f"train pairs {result['training']['examples']} ({result['training']['steps']} steps, "
                 f"{result['training']['pairs_per_s']:.1f} pairs/s)")
    lines.append("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["phases_s"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(load_settings().shared_data_dir / "scifact-train"))
    parser.add_argument("--work", default=str(load_settings().data_dir / "bench" / "scifact_embedder"))
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--out", default=str(RESULT))
    ns = parser.parse_args()
    total = time.perf_counter()
    result = run(Path(ns.data), Path(ns.work), ns.holdout, ns.seed, ns.batch_size, ns.epochs)
    result["phases_s"]["total_s"] = round(time.perf_counter() - total, 2)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"written {ns.out}")
