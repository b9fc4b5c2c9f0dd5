"""python bench/scifact_ablation.py [--data DIR] [--grid full|quick] [--budget-s 420] [--out FILE]

Which embedder recipe is best, measured in one harness through the project's own trainer
(``feedback_pipeline.training.embedder.main``) on SciFact with the full 5,183-abstract corpus.

Folds, fixed before any run: 20% of the judged *training* claims (seed 0) are the evaluation fold, written as a
BEIR ``test`` split and scored only before and after training (``test_beir_dir``); it never chooses anything.
Every config trains on the other 80%, of which the trainer holds out 15% more (``holdout_fraction``) as the
validation fold that picks the best epoch (early stopping). The winner is the config with the best *validation*
nDCG@10; the evaluation fold then reports it, with a paired bootstrap interval against the base model over the
same claims. Writes bench/results/scifact_ablation.json (and .md); results are written after every config, so a
run stopped by ``--budget-s`` keeps what it finished.
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

from feedback_pipeline.datasets.embedding_pairs import split_beir_queries  # noqa: E402
from feedback_pipeline.evaluation.retrieval import encode_corpus, evaluate_retrieval, paired_bootstrap_ci  # noqa: E402
from feedback_pipeline.training.embedder import EmbedderConfig, main, resolve_base_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# name -> EmbedderConfig overrides. Every run: at most `epochs` epochs, validation after each, best epoch kept.
_PLAIN = dict(loss="mnrl", mine_negatives=0, batch_size=32, learning_rate=2e-5)
GRIDS = {
    "full": {
        "old_default_1ep": dict(_PLAIN, epochs=1),
        "mnrl_lr2e-5": dict(_PLAIN),
        "mnrl_lr6e-5": dict(_PLAIN, learning_rate=6e-5),
        "cached_bs128_lr6e-5": dict(loss="cached_mnrl", mine_negatives=0, batch_size=128, learning_rate=6e-5),
        "cached_bs128_lr6e-5_mine1": dict(loss="cached_mnrl", mine_negatives=1, mine_range_min=0, batch_size=128,
                                          learning_rate=6e-5),
        "cached_bs128_lr6e-5_mine3_r0": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=0,
                                             batch_size=128, learning_rate=6e-5),
        "cached_bs128_lr6e-5_mine3_r10": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=10,
                                              batch_size=128, learning_rate=6e-5),
        "cached_bs128_lr1e-4_mine3_r10": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=10,
                                              batch_size=128, learning_rate=1e-4),
        "cached_bs128_lr6e-5_mine3_r10_nomargin": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=10,
                                                       mine_relative_margin=None, batch_size=128,
                                                       learning_rate=6e-5),
        "cached_bs256_lr1e-4_mine3_r10": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=10,
                                              batch_size=256, learning_rate=1e-4),
        "cached_bs64_lr3e-5_mine5_r10": dict(loss="cached_mnrl", mine_negatives=5, mine_range_min=10,
                                             batch_size=64, learning_rate=3e-5),
        "cached_bs128_lr6e-5_mine3_r10_len512": dict(loss="cached_mnrl", mine_negatives=3, mine_range_min=10,
                                                     batch_size=128, learning_rate=6e-5, max_seq_length=512),
    },
    "quick": {
        "mnrl_lr6e-5": dict(_PLAIN, learning_rate=6e-5),
        "cached_bs64_mine2": dict(loss="cached_mnrl", mine_negatives=2, mine_range_min=2, batch_size=64,
                                  learning_rate=6e-5, mini_batch_size=16),
    },
}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_folds(data: Path, work: Path, eval_fraction: float, seed: int, max_corpus: int | None) -> dict:
    """The 80% training claims as a BEIR ``train`` split and the 20% evaluation claims as a ``test`` split, each
    with the (optionally cut) corpus; returns what the folds hold."""
    corpus, kept, queries, held = split_beir_queries(data, "train", eval_fraction, seed)
    if max_corpus:  # a smoke run: every judged document plus the first others up to max_corpus
        judged = {d for rel in (*kept.values(), *held.values()) for d in rel}
        others = [d for d in corpus if d not in judged][:max(0, max_corpus - len(judged))]
        corpus = {d: corpus[d] for d in corpus if d in judged or d in set(others)}
    for name, split, qrels in (("train80", "train", kept), ("eval20", "test", held)):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for doc_id, text in corpus.items():
                fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
        with open(folder / f"queries-{split}.jsonl", "w", encoding="utf-8") as fh:
            for q in qrels:
                fh.write(json.dumps({"_id": q, "text": queries[q]}) + "\n")
        with open(folder / f"qrels-{split}.tsv", "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q, rel in qrels.items():
                for d, r in rel.items():
                    fh.write(f"{q}\t{d}\t{r}\n")
    return {"corpus": corpus, "eval_queries": {q: queries[q] for q in held}, "eval_qrels": held,
            "train_claims": len(kept), "train_pairs": sum(map(len, kept.values())), "eval_claims": len(held)}


def run(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work)
    folds = write_folds(Path(args.data), work, args.eval_fraction, args.seed, args.max_corpus)
    corpus, eval_queries, eval_qrels = folds["corpus"], folds["eval_queries"], folds["eval_qrels"]
    _say(f"{folds['train_pairs']} pairs from {folds['train_claims']} training claims; {folds['eval_claims']} "
         f"evaluation claims; corpus {len(corpus)}; device {device}")
    base_path = resolve_base_model(args.base_model)
    start = time.perf_counter()
    base = SentenceTransformer(base_path, device=device)
    base_eval = evaluate_retrieval(base, eval_queries, corpus, eval_qrels,
                                   corpus_embeddings=encode_corpus(base, corpus, batch_size=128))
    _say(f"base: evaluation fold nDCG@10 {base_eval['ndcg@10']:.4f} ({time.perf_counter() - start:.0f} s)")
    del base
    result = {"harness": {"data": str(args.data), "eval_fraction": args.eval_fraction, "validation_fraction":
                          args.validation_fraction, "seed": args.seed, "max_corpus": args.max_corpus,
                          "max_epochs": args.epochs, "early_stopping_patience": args.patience, "grid": args.grid,
                          "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                          "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                          "sentence_transformers": __import__("sentence_transformers").__version__,
                          "base_model": base_path, **{k: v for k, v in folds.items() if isinstance(v, int)},
                          "corpus_docs": len(corpus)},
              "base": {k: base_eval[k] for k in ("ndcg@10", "mrr@10", "recall@10", "n_queries")}, "runs": {}}
    started = time.perf_counter()
    for name, overrides in GRIDS[args.grid].items():
        if time.perf_counter() - started > args.budget_s:
            _say(f"budget of {args.budget_s} s spent: {name} and later configs not run")
            result.setdefault("not_run", []).append(name)
            continue
        cfg = EmbedderConfig(**{"output_dir": str(work / "models" / name), "beir_dir": str(work / "train80"),
                                "holdout_fraction": args.validation_fraction, "holdout_seed": args.seed,
                                "base_model_path": base_path, "epochs": args.epochs,
                                "early_stopping_patience": args.patience, "logging_steps": 10, "seed": args.seed,
                                **overrides})
        t0 = time.perf_counter()
        try:
            trained = main(cfg, log=_say)
            wall = time.perf_counter() - t0
            tuned = SentenceTransformer(trained.model_dir, device=device)
            tuned_eval = evaluate_retrieval(tuned, eval_queries, corpus, eval_qrels,
                                            corpus_embeddings=encode_corpus(tuned, corpus, batch_size=128))
            assert tuned_eval["query_ids"] == base_eval["query_ids"]
            ci = paired_bootstrap_ci(base_eval["per_query_ndcg"], tuned_eval["per_query_ndcg"], n=2000,
                                     seed=args.seed)
            result["runs"][name] = {
                "config": overrides, "steps": trained.steps, "best_step": trained.best_step,
                "validation_ndcg@10": {"before": (trained.eval_before or {}).get("ndcg_at_10"),
                                       "best": (trained.eval_after or {}).get("ndcg_at_10"),
                                       "history": trained.validation_history},
                "evaluation_fold": {k: tuned_eval[k] for k in ("ndcg@10", "mrr@10", "recall@10")},
                "ndcg@10_diff_vs_base_ci95": ci, "mined_pairs": trained.mined_pairs,
                "train_examples": trained.n_train_examples, "wall_s": round(wall, 1),
                "train_runtime_s": round(trained.train_runtime_s, 1)}
            _say(f"{name}: validation {result['runs'][name]['validation_ndcg@10']['best']:.4f}, evaluation fold "
                 f"{tuned_eval['ndcg@10']:.4f} [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}] in {wall:.0f} s")
            del tuned
        except Exception as exc:  # one failed config is reported, the grid goes on
            result["runs"][name] = {"config": overrides, "error": f"{type(exc).__name__}: {exc}"}
            _say(f"{name} failed: {exc!r}")
        if device == "cuda":
            torch.cuda.empty_cache()
        finished = {n: r for n, r in result["runs"].items() if "error" not in r}
        if finished:
            winner = max(finished, key=lambda n: finished[n]["validation_ndcg@10"]["best"] or -1)
            result["winner_by_validation"] = {"name": winner, **finished[winner]}
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    lines = ["| config | best epoch step / steps | validation nDCG@10 | evaluation nDCG@10 | diff vs base [95% CI] "
             "| mined pairs | wall s |", "|---|---|---|---|---|---|---|",
             f"| base model | - | - | {result['base']['ndcg@10']:.4f} | - | - | - |"]
    for name, r in result["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | | | |")
            continue
        ci = r["ndcg@10_diff_vs_base_ci95"]
        val = r["validation_ndcg@10"]
        lines.append(f"| {name} | {r['best_step']} / {r['steps']} | {val['before']:.4f} -> {val['best']:.4f} | "
                     f"{r['evaluation_fold']['ndcg@10']:.4f} | {ci['mean_diff']:+.4f} [{ci['ci_low']:+.4f}, "
                     f"{ci['ci_high']:+.4f}] | {r['mined_pairs']} | {r['wall_s']:.0f} |")
    if "winner_by_validation" in result:
        lines.append(f"\nWinner by validation nDCG@10: **{result['winner_by_validation']['name']}**")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SCIFACT_DIR", str(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact-train")))
    parser.add_argument("--work", default="/tmp/scifact_ablation")
    parser.add_argument("--base-model", default="", help="sentence-transformers folder ('' = bundled MiniLM)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-corpus", type=int, default=0, help="smoke runs: cut the corpus (0 = all of it)")
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no new config after this many seconds")
    parser.add_argument("--out", default=str(RESULTS / "scifact_ablation.json"))
    ns = parser.parse_args()
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    res = run(ns)
    Path(ns.out).write_text(json.dumps(res, indent=1))
    Path(ns.out).with_suffix(".md").write_text(table(res) + "\n")
    print(table(res))
