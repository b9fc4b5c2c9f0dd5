"""KTO vs DPO LoRA adapters on oasst1, judged by held-out preference accuracy against the base model.

    nohup nice -n 10 .venv/bin/python bench/chat_preference.py > /tmp/chatpref.log 2>&1 &

Data: the oasst1 English validation trees (../shared/data/oasst1-en-validation), read with ``read_oasst1`` and
``normalise_record``; a reply's thumb is the sign of its net +1/-1 emoji votes (``rating_thumb``).
- KTO records: every reply with a thumb up or down (``kto_records``).
- DPO pairs: sibling replies with different oasst1 ranks only (``dpo_pairs`` on a frame without labels).
Both use one split, computed once over all replies by prompt group (``assign_split``), so no prompt of the
held-out pairs was seen by either trainer; the script checks it.

Each method trains a LoRA adapter on SmolLM2-135M-Instruct for a fixed number of steps (the same number of
sequences per step: 4 KTO records, or 2 DPO pairs = 4 sequences). Both are then scored on the same held-out rank
pairs (capped): implicit-reward accuracy/margin vs the base, and each model's own length-normalised preference
accuracy, with bootstrap 95% intervals. Results go to bench/results/chat_preference.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from feedback_pipeline.datasets.build import kto_records, read_jsonl, write_dataset  # noqa: E402
from feedback_pipeline.datasets.preference import build_dpo_dataset  # noqa: E402
from feedback_pipeline.datasets.splits import assign_split, leaked_prompts  # noqa: E402
from feedback_pipeline.evaluation.preference_eval import preference_accuracy  # noqa: E402
from feedback_pipeline.ingestion.importers import read_oasst1  # noqa: E402
from feedback_pipeline.ingestion.records import normalise_record  # noqa: E402
from feedback_pipeline.training.base_model import prepare_base_chat_model  # noqa: E402
from feedback_pipeline.training.chat_preference import PreferenceConfig, main  # noqa: E402

OASST1 = REPO.parent / "shared" / "data" / "oasst1-en-validation" / "en-validation.jsonl"
BASE_DIR = Path("/tmp/fp_run2/models/smollm2-135m-instruct")
RESULTS = REPO / "bench" / "results" / "chat_preference.json"
THUMB_LABEL = {1: "liked", -1: "disliked", 0: "neutral"}

log = logging.getLogger("bench.chat_preference")


def load_oasst1(path: Path) -> pd.DataFrame:
    df = pd.DataFrame([normalise_record(r, source="oasst1") for r in read_oasst1(path)])
    thumbs = df["rating_thumb"].map(lambda t: None if pd.isna(t) else int(t))
    return df.assign(label=thumbs.map(lambda t: THUMB_LABEL.get(t) if t is not None else None))


def user_prompts(records: list[dict]) -> list[str]:
    return [r["prompt"][-1]["content"] for r in records]


def build_data(df: pd.DataFrame, root: Path, eval_fraction: float) -> dict:
    side = assign_split(df, eval_fraction)
    rated = df[df["label"].isin(["liked", "disliked"])]
    kto = write_dataset(
        "kto", root, {s: kto_records(rated[side[rated.index] == s]) for s in ("train", "eval")},
        lambda r: "liked" if r["label"] else "disliked", {"eval_fraction": eval_fraction, "split": "all replies"},
        None, 20)
    # Rank pairs only: without a label column dpo_pairs has no thumbs to pair.
    dpo = build_dpo_dataset(df.drop(columns=["label"]), root, eval_fraction=eval_fraction)
    kto_train, kto_eval = read_jsonl(kto.file("train")), read_jsonl(kto.file("eval"))
    dpo_train, dpo_eval = read_jsonl(dpo.file("train")), read_jsonl(dpo.file("eval"))
    leaks = {
        "kto_train_vs_dpo_eval": len(leaked_prompts(user_prompts(kto_train), user_prompts(dpo_eval))),
        "dpo_train_vs_dpo_eval": len(leaked_prompts(user_prompts(dpo_train), user_prompts(dpo_eval))),
        "kto_train_vs_kto_eval": len(leaked_prompts(user_prompts(kto_train), user_prompts(kto_eval))),
    }
    if any(leaks.values()):
        raise AssertionError(f"prompt leakage across the split: {leaks}")
    return {"kto": kto, "dpo": dpo, "dpo_eval": dpo_eval, "leaked_prompts": leaks}


def train(method: str, built, base: Path, work: Path, args: argparse.Namespace) -> dict:
    cfg = PreferenceConfig(
        base_model_path=str(base), method=method, train_file=str(built.file("train")),
        output_dir=str(work / f"{method}-adapter"), max_steps=args.steps,
        per_device_train_batch_size=4 if method == "kto" else 2, learning_rate=args.lr, beta=0.1,
        max_length=args.max_length, save_steps=max(args.steps // 2, 1), save_total_limit=1, seed=0,
        logging_steps=5,
    )
    started = time.perf_counter()
    result = main(cfg, log=lambda line: log.info("[%s] %s", method, line))
    wall = time.perf_counter() - started
    return {"config": {k: v for k, v in vars(cfg).items() if k not in ("base_model_path", "train_file", "output_dir")},
            "result": result.to_dict(), "wall_s": wall}


def evaluate(base: Path, adapter_dir: str, pairs: list[dict], args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    metrics = preference_accuracy(base, adapter_dir, pairs, max_length=args.max_length, batch_size=4,
                                  bootstrap=1000, seed=0)
    return {"metrics": metrics, "wall_s": time.perf_counter() - started}


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per method")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (LoRA r=16, alpha=16)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-pairs", type=int, default=100, help="held-out pairs scored (random sample)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: 1 is ~3x faster than 2 when other jobs load the 2 cores")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fp_bench_chat_preference"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    base = prepare_base_chat_model(BASE_DIR)
    df = load_oasst1(OASST1)
    data = build_data(df, args.work / "datasets", eval_fraction=0.15)
    pairs = data["dpo_eval"]
    eval_pairs = random.Random(0).sample(pairs, min(args.eval_pairs, len(pairs)))
    data_s = time.perf_counter() - t0
    log.info("data: %d replies, KTO %s %s, DPO %s, %d held-out pairs scored (%.0f s)", len(df),
             data["kto"].counts, data["kto"].label_balance, data["dpo"].counts, len(eval_pairs), data_s)

    report = {
        "machine": {"platform": platform.platform(), "torch_threads": args.threads, "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "data": {"replies": len(df), "thumbs": df["label"].value_counts(dropna=False).to_dict(),
                 "kto_counts": data["kto"].counts, "kto_label_balance": data["kto"].label_balance,
                 "dpo_counts": data["dpo"].counts, "dpo_fingerprint": data["dpo"].fingerprint,
                 "kto_fingerprint": data["kto"].fingerprint, "leaked_prompts": data["leaked_prompts"],
                 "eval_pairs_scored": len(eval_pairs), "build_s": data_s},
        "settings": {"steps": args.steps, "lr": args.lr, "max_length": args.max_length, "beta": 0.1,
                     "lora": "r16 alpha16 q/k/v/o", "sequences_per_step": 4},
    }
    for method in ("kto", "dpo"):
        report[method] = train(method, data[method], base, args.work, args)
        r = report[method]["result"]
        log.info("%s: %d steps in %.0f s, %.1f tok/s, final loss %.4f", method, r["steps"], r["train_runtime_s"],
                 r["tokens_per_s"], r["final_train_loss"])
        report[method]["eval"] = evaluate(base, r["adapter_dir"], eval_pairs, args)
        m = report[method]["eval"]["metrics"]
        log.info("%s held-out: implicit acc %.3f [%.3f, %.3f], margin %.3f [%.3f, %.3f]; own acc %.3f vs base %.3f",
                 method, m["implicit_accuracy"], m["implicit_accuracy_ci_low"], m["implicit_accuracy_ci_high"],
                 m["implicit_margin"], m["implicit_margin_ci_low"], m["implicit_margin_ci_high"],
                 m["candidate_accuracy"], m["base_accuracy"])
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=1, default=str))  # partial results survive a later crash

    base_keys = ("base_accuracy", "base_accuracy_ci_low", "base_accuracy_ci_high", "base_logp_margin",
                 "base_logp_margin_ci_low", "base_logp_margin_ci_high")
    report["base"] = {k: report["kto"]["eval"]["metrics"][k] for k in base_keys}
    report["base_identical_across_evals"] = all(
        report["kto"]["eval"]["metrics"][k] == report["dpo"]["eval"]["metrics"][k] for k in base_keys)
    report["summary"] = {
        name: {key: [m[key], m[f"{key}_ci_low"], m[f"{key}_ci_high"]]
               for key in ("implicit_accuracy", "implicit_margin", "candidate_accuracy", "accuracy_difference",
                           "candidate_logp_margin")}
        for name, m in ((n, report[n]["eval"]["metrics"]) for n in ("kto", "dpo"))}
    report["total_wall_s"] = time.perf_counter() - t0
    RESULTS.write_text(json.dumps(report, indent=1, default=str))
    log.info("wrote %s in %.0f s", RESULTS, report["total_wall_s"])


if __name__ == "__main__":
    main_bench()
