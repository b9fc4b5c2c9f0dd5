"""Preference methods on oasst1 sibling ranks, cross-fitted: every pair is held out once, so the test has ~7x the pairs.

    nohup nice -n 10 .venv/bin/python bench/chat_preference_crossfit.py --methods ld_dpo+balanced --folds 2 \
        --steps 0,50,150 > /tmp/crossfit.log 2>&1 &
    # on a CUDA machine: --folds 5 --steps 0,100,200,400,800 --jobs 5 --threads 4

Why: bench/chat_preference_curves.py holds out 15% of the prompt groups, i.e. 145 pairs from 63 prompts, about 60 of
them in the "preferred answer is shorter" stratum; a 95% interval there is about +-0.17 wide, so no realistic
candidate can clear 0.5 in it. Here the pairs' leakage groups (conversation, query and user, as the dataset split
uses: ``leakage_groups``) are hashed into ``--folds`` folds; for each fold one adapter per method is trained on the
other folds' pairs and scores this fold's pairs (the base model scores them too), so all ~1,000 pairs from ~420
prompts are held-out evidence. What this measures is the training recipe (K adapters), not one adapter.

Each (method, fold) is one worker of bench/chat_preference_curves.py (same trainer, schedule, LoRA and scoring). A
point of the curve is pooled over the folds at a step every fold reached, and scored with
``preference_eval.compare_scores`` with intervals that resample prompts. Tables are written as points arrive:
bench/results/chat_preference_crossfit.json and .md (same layout as the curves' tables).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from feedback_pipeline.datasets.build import read_jsonl  # noqa: E402
from feedback_pipeline.datasets.splits import leakage_groups, leaked_prompts  # noqa: E402
from feedback_pipeline.evaluation.preference_eval import PairScores, compare_scores  # noqa: E402
from feedback_pipeline.training.base_model import prepare_base_chat_model  # noqa: E402

RESULTS = REPO / "bench" / "results" / "chat_preference_crossfit.json"
SEED = "feedback-crossfit-v1"
log = logging.getLogger("bench.chat_preference_crossfit")


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fold_of(group: str, folds: int, seed: str = SEED) -> int:
    """The fold of a leakage group: a stable hash, so a group's pairs are always held out together."""
    bucket = int.from_bytes(hashlib.sha256(f"{seed}|{group}".encode()).digest()[:8], "big") / 2**64
    return int(bucket * folds)


def _concat(parts: list[dict]) -> PairScores:
    return PairScores(*(np.concatenate([np.asarray(p[k], dtype=float) for p in parts])
                        for k in ("chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens")))


def pooled_points(parts: list[dict], groups: list[str], bootstrap: int) -> tuple[dict, list[dict]]:
    """The base's metrics and one point per step reached by every fold, each scored over all folds' pairs at once."""
    base = _concat([p["base_scores"] for p in parts])
    lengths = (np.concatenate([p["chosen_length"] for p in parts]),
               np.concatenate([p["rejected_length"] for p in parts]))
    base_metrics = compare_scores(base, base, *lengths, bootstrap=bootstrap, groups=groups)
    points = [{"step": 0, "train_wall_s": 0.0, "eval_wall_s": 0.0, "train_loss": float("nan"), "metrics": base_metrics}]
    by_step = [{pt["step"]: pt for pt in p["points"]} for p in parts]
    for step in sorted(set.intersection(*(set(b) for b in by_step))):
        at = [b[step] for b in by_step]
        cand = _concat([pt["scores"] for pt in at])
        points.append({"step": step, "train_wall_s": sum(pt["train_wall_s"] for pt in at),
                       "eval_wall_s": sum(pt["eval_wall_s"] for pt in at),
                       "train_loss": float(np.mean([pt["train_loss"] for pt in at])),
                       "metrics": compare_scores(base, cand, *lengths, bootstrap=bootstrap, seed=0, groups=groups)})
    return base_metrics, points


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ld_dpo+balanced", help="comma-separated pair methods ('+balanced' ok)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--steps", default="0,50,150", help="step counts scored (the last is max_steps)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--base-model", default="",
                        help="a local HF causal-LM folder to train from (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--eval-pairs", type=int, default=0, help="cap on each fold's scored pairs (0: all)")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--jobs", type=int, default=2, help="workers at once")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fp_bench_chat_preference_crossfit"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    curves = _load_sibling("chat_preference_curves")
    bench = _load_sibling("chat_preference")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for spec in methods:
        if curves._parse_method(spec)[0] == "kto":
            parser.error("kto trains on thumbs, not pairs: cross-fitting covers the pair methods")
    schedule = sorted({int(s) for s in args.steps.split(",")})
    if args.folds < 2 or not schedule or schedule[-1] <= 0:
        parser.error("need --folds >= 2 and a schedule ending above 0")

    t0 = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base_dir = prepare_base_chat_model(curves.BASE_DIR, args.base_model)
    df = bench.load_oasst1(bench.OASST1)
    data = bench.build_data(df, args.work / "datasets", eval_fraction=0.15)
    pairs = read_jsonl(data["dpo"].file("train")) + read_jsonl(data["dpo"].file("eval"))
    group_of = dict(zip(df["id"], leakage_groups(df)))
    fold = [fold_of(group_of[p["chosen_id"]], args.folds) for p in pairs]

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    fold_dirs, held_out, folds_info = [], [], []
    for k in range(args.folds):
        held = [p for p, f in zip(pairs, fold) if f == k]
        train = [p for p, f in zip(pairs, fold) if f != k]
        leaks = leaked_prompts(bench.user_prompts(train), bench.user_prompts(held))
        if leaks:
            raise AssertionError(f"fold {k}: {len(leaks)} prompts on both sides")
        if args.eval_pairs:
            held = random.Random(k).sample(held, min(args.eval_pairs, len(held)))
        balanced = curves.balance_by_length(train, *curves.answer_lengths(tokenizer, train))
        d = args.work / f"fold{k}"
        d.mkdir()
        (d / "shared.json").write_text(json.dumps({
            "base_model": str(base_dir), "eval_pairs": held,
            "pairs_train": str(curves.write_pairs(d / "pairs_train.jsonl", train)),
            "pairs_train_balanced": str(curves.write_pairs(d / "pairs_train_balanced.jsonl", balanced))}))
        fold_dirs.append(d)
        held_out.append(held)
        folds_info.append({"train_pairs": len(train), "balanced_train_pairs": len(balanced), "held_out_pairs": len(held)})
        log.info("fold %d: %d training pairs (%d length-balanced), %d held out", k, len(train), len(balanced), len(held))
    groups = [g for held in held_out for g in curves.group_ids(held)]

    report = {
        "command": " ".join(["python", "bench/chat_preference_crossfit.py", *sys.argv[1:]]),
        "note": f"Cross-fitted over {args.folds} folds of leakage groups: each fold's pairs are scored by the adapter "
                f"trained on the other folds; every point pools all folds at that step (train/eval s: summed over "
                f"folds).",
        "machine": {"platform": platform.platform(), "device": curves._device(), "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "data": {"replies": len(df), "pairs": len(pairs), "pair_fingerprint": data["dpo"].fingerprint,
                 "folds": folds_info},
        "settings": {"base_model": str(base_dir), "methods": methods, "steps": schedule, "lr": args.lr,
                     "max_length": args.max_length, "lora": "r16 alpha16 q/k/v/o", "sequences_per_step": 4,
                     "threads": args.threads, "bootstrap": args.bootstrap, "folds": args.folds, "jobs": args.jobs},
        "base_metrics": {}, "methods": {}, "pairs": {"prompt_group": groups},
    }

    pending = [(spec, k) for spec in methods for k in range(args.folds)]
    running: dict = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            spec, k = pending.pop(0)
            cmd = [sys.executable, str(Path(curves.__file__)), "--worker", spec, "--work", str(fold_dirs[k]),
                   "--deadline", "0", "--steps", ",".join(map(str, schedule)), "--lr", str(args.lr),
                   "--max-length", str(args.max_length), "--threads", str(args.threads),
                   "--bootstrap", str(args.bootstrap), "--eval-batch", str(args.eval_batch)]
            logfile = open(fold_dirs[k] / f"{spec}.log", "w")
            running[(spec, k)] = (subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT), logfile)
            log.info("started %s on fold %d", spec, k)
        time.sleep(20)
        for key, (proc, logfile) in list(running.items()):
            if proc.poll() is not None:
                logfile.close()
                del running[key]
                log.info("%s on fold %d finished with exit code %d", *key, proc.returncode)
                if proc.returncode:
                    report["methods"].setdefault(key[0], {"points": []}).setdefault("errors", {})[str(key[1])] = (
                        fold_dirs[key[1]] / f"{key[0]}.log").read_text()[-3000:]
        for spec in methods:
            parts = []
            for d in fold_dirs:
                try:
                    parts.append(json.loads((d / f"{spec}.json").read_text()))
                except (FileNotFoundError, json.JSONDecodeError):  # not started or being rewritten: next poll
                    break
            if len(parts) == args.folds and all("base_scores" in p for p in parts):
                report["base_metrics"], points = pooled_points(parts, groups, args.bootstrap)
                report["methods"][spec] = {**report["methods"].get(spec, {}), "points": points,
                                           "elapsed_s": max(p.get("wall_s", 0.0) for p in parts)}
        report["total_wall_s"] = time.perf_counter() - t0
        if report["base_metrics"]:
            curves.write_tables(report, args.results)
    log.info("wrote %s in %.0f s", args.results, time.perf_counter() - t0)


if __name__ == "__main__":
    main_bench()
