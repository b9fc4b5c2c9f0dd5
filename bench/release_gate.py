"""How often does the release gate decide right? Measured rates, written to bench/results/release_gate.json.

    .venv/bin/python bench/release_gate.py [--seeds 20] [--trials 1000]

1. Simulation (paired scores with known truth, the gate's own statistics): promotion rate of an A/A challenger, of a
   worse one and of a better one, at several sample sizes; the same for the length-controlled win rate with a judge
   that partly rewards length.
2. Real small model (SmolLM2-135M, oasst1 held-out sibling-rank pairs, primary metric preference accuracy): planted
   worse (supervised on the rejected answers), copy of the champion, planted better (supervised on the chosen
   answers), each decided on ``--seeds`` differently seeded samples of 48 of the held-out pairs with short prompts
   (49 in the oasst1 validation split: the samples overlap, so they vary the bootstrap more than the data).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedback_pipeline.datasets.build import read_jsonl  # noqa: E402
from feedback_pipeline.datasets.preference import build_dpo_dataset  # noqa: E402
from feedback_pipeline.evaluation.gate import GatePolicy, simulate_gate  # noqa: E402
from feedback_pipeline.evaluation.gate_validation import (planted_chat_scores, seeded_decisions,  # noqa: E402
                                                          short_prompt_pairs, simulate_lc_gate)
from feedback_pipeline.ingestion.importers import read_oasst1  # noqa: E402
from feedback_pipeline.ingestion.records import normalise_record  # noqa: E402
from feedback_pipeline.settings import load_settings  # noqa: E402
from feedback_pipeline.training.base_model import prepare_base_chat_model  # noqa: E402

OASST1 = load_settings().shared_data_dir / "oasst1-en-validation" / "en-validation.jsonl"


def simulations(trials: int) -> dict:
    policy = GatePolicy("score")
    rows = []
    for n in (30, 100, 300):
        for label, effect in (("a_a", 0.0), ("worse", -0.2), ("better", 0.3)):
            sim = simulate_gate(effect, n, trials, policy, seed=n)
            rows.append({"n": n, "candidate": label, "true_effect_sd": effect, "promote_rate": sim.promote_rate,
                         "trials": trials})
    lc = [{"n": n, "candidate": label, "length_weight": 0.5, "trials": trials // 2,
           "promote_rate": simulate_lc_gate(trials // 2, n, 0.5, effect=effect, seed=n)}
          for n in (32, 128) for label, effect in (("a_a", 0.0), ("better", 0.5))]
    return {"paired_mean": rows, "lc_win_rate": lc}


def real_models(seeds: int, work: Path) -> dict:
    torch.set_num_threads(2)
    base = prepare_base_chat_model(REPO / ".data" / "models" / "smollm2-135m-instruct")
    frame = pd.DataFrame([normalise_record(r, source="oasst1") for r in read_oasst1(OASST1)])
    built = build_dpo_dataset(frame, work / "datasets")
    pool = short_prompt_pairs(read_jsonl(built.file("eval")), 64)
    start = time.perf_counter()
    correct = planted_chat_scores(base, pool, work / "models", max_length=96, steps=40)
    policy = GatePolicy("preference_accuracy")
    out = {"pool_pairs": len(pool), "sample": 48, "seeds": seeds, "seconds": round(time.perf_counter() - start, 1),
           "accuracy_on_pool": {k: float(v.mean()) for k, v in correct.items()}, "candidates": {}}
    for label, challenger in (("worse", correct["worse"]), ("copy_of_champion", correct["champion"].copy()),
                              ("better", correct["better"])):
        decisions = seeded_decisions(correct["champion"], challenger, policy, range(seeds), 48)
        kinds = [d.decision for d in decisions]
        out["candidates"][label] = {
            "promote_rate": kinds.count("promote") / seeds, "decisions": {k: kinds.count(k) for k in set(kinds)},
            "mean_diff": float(np.mean([d.evidence[0].diff for d in decisions])),
            "ci_low_range": [float(min(d.evidence[0].ci_low for d in decisions)),
                             float(max(d.evidence[0].ci_low for d in decisions))]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
                  "simulation": simulations(args.trials), "real_model": real_models(args.seeds, Path(tmp))}
    out = REPO / "bench" / "results" / "release_gate.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
