"""python bench/scifact_embedder.py [--beir-dir DIR] [--holdout-fraction 0.2] [--save-model OUT]

The embedder's default recipe (``EmbedderConfig``'s defaults, the ones the ``embedding_model`` asset and the trainer's
command line use) on SciFact, with the base model in the same run.

``--holdout-fraction F`` (default 0.2, seed 0: the evaluation fold of bench/scifact_ablation.py) holds out that share
of the judged training claims; the rest train through ``feedback_pipeline.training.embedder.main`` with hard
negatives mined from the full 5,183-abstract corpus, then base and fine-tuned model retrieve for the held-out claims
over the whole corpus, with a paired bootstrap interval. ``--holdout-fraction 0`` trains on every training claim and
keeps the model (``--save-model OUT``, a sentence-transformers folder), so anyone can score it on another split, e.g.
BEIR's SciFact test split. Writes bench/results/scifact_embedder.json.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_pipeline.evaluation.retrieval import encode_corpus, evaluate_retrieval, paired_bootstrap_ci  # noqa: E402
from feedback_pipeline.training.embedder import EmbedderConfig, main, resolve_base_model  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "scifact_embedder.json"


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(beir_dir: Path, holdout: float, seed: int, save_model: Path | None, base_model: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scifact_ablation import write_folds

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="scifact_embedder_"))
    base_path = resolve_base_model(base_model)
    out = save_model or work / "model"
    if holdout > 0:
        folds = write_folds(beir_dir, work, holdout, seed, None)
        train_dir = work / "train80"
    else:
        folds, train_dir = None, beir_dir
    cfg = EmbedderConfig(beir_dir=str(train_dir), output_dir=str(out), base_model_path=base_path, seed=seed,
                         logging_steps=10)
    start = time.perf_counter()
    trained = main(cfg, log=_say)
    result = {"recipe": {k: v for k, v in asdict(cfg).items() if k not in ("output_dir", "beir_dir")},
              "training": {"steps": trained.steps, "pairs": trained.n_train_examples, "mined_pairs": trained.mined_pairs,
                           "final_train_loss": trained.final_train_loss, "wall_s": round(time.perf_counter() - start, 1)},
              "environment": {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__,
                              "python": platform.python_version(),
                              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
              "holdout_fraction": holdout, "seed": seed, "model_dir": str(out) if save_model else None}
    if folds is not None:
        corpus, queries, qrels = folds["corpus"], folds["eval_queries"], folds["eval_qrels"]
        evals = {}
        for name, path in (("base", base_path), ("finetuned", str(out))):
            model = SentenceTransformer(path, device=device)
            t0 = time.perf_counter()
            evals[name] = evaluate_retrieval(model, queries, corpus, qrels,
                                             corpus_embeddings=encode_corpus(model, corpus, batch_size=128))
            _say(f"{name}: nDCG@10 {evals[name]['ndcg@10']:.4f} ({time.perf_counter() - t0:.0f} s)")
        result.update({
            "heldout_claims": len(queries), "corpus_docs": len(corpus),
            **{name: {k: ev[k] for k in ("ndcg@10", "mrr@10", "recall@10")} for name, ev in evals.items()},
            "difference_ci95": {m: paired_bootstrap_ci(evals["base"][f"per_query_{m}"],
                                                       evals["finetuned"][f"per_query_{m}"], n=2000, seed=seed)
                                for m in ("ndcg", "mrr")}})
    if save_model is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir-dir", default=os.environ.get("SCIFACT_DIR", str(
        Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact-train")))
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", default=None, help="keep the trained model in this folder")
    parser.add_argument("--base-model", default="", help="sentence-transformers folder ('' = bundled MiniLM)")
    parser.add_argument("--out", default=str(RESULT))
    ns = parser.parse_args()
    res = run(Path(ns.beir_dir), ns.holdout_fraction, ns.seed, Path(ns.save_model) if ns.save_model else None,
              ns.base_model)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "recipe"}, indent=1))
