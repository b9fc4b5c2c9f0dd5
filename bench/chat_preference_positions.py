"""Where does a preference candidate's taste for longer answers come from? Per-token implicit rewards by position.

    .venv/bin/python bench/chat_preference_positions.py --work /tmp/fp_crossfit_simpo --method simpo+balanced

Reads a finished bench/chat_preference_crossfit.py work folder: per fold, the held-out pairs and the adapter the
method trained on the other folds (its last step). Scores a seeded sample of each fold's held-out pairs token by
token with the base and the adapter (``length_diagnostics``) and reports, pooled over the folds:

- the mean per-token log-ratio log p_cand - log p_base by token position, for the preferred and the other answer;
- the implicit reward's accuracy summed over the whole answer (raw), per token, and over matched prefixes (both
  answers cut to the shorter one's token count), split by "preferred answer longer / shorter", intervals resampling
  prompts, next to the base's own per-token ranking and the "longer answer wins" rule on the same pairs.

Writes bench/results/chat_preference_positions_<method>.json and .md (<method>_train.json with --split train).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from feedback_pipeline.datasets.build import read_jsonl  # noqa: E402
from feedback_pipeline.evaluation.gate import prompt_groups  # noqa: E402
from feedback_pipeline.evaluation.length_diagnostics import (  # noqa: E402
    log_ratios, matched_prefix_margins, pair_token_logprobs, position_profile,
)
from feedback_pipeline.evaluation.preference_eval import _wins, answer_lengths, stratified_accuracies  # noqa: E402


def score_fold(fold_dir: Path, method: str, n_pairs: int, seed: int, max_length: int, batch: int,
               split: str = "held_out") -> dict:
    """Token log-probs of a sample of the fold's held-out pairs (or of the pairs its adapter trained on) under the
    base and base + the fold's adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shared = json.loads((fold_dir / "shared.json").read_text())
    if split == "held_out":
        pairs = shared["eval_pairs"]
    else:  # the adapter's own training pairs: what it could fit, to set against what carries over to new prompts
        train_file = shared["pairs_train_balanced" if method.endswith("+balanced") else "pairs_train"]
        pairs = read_jsonl(Path(train_file))
    if n_pairs:
        pairs = random.Random(seed).sample(pairs, min(n_pairs, len(pairs)))
    adapter = fold_dir / f"{method}-adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} holds no adapter: did the cross-fit run of {method} finish?")
    tokenizer = AutoTokenizer.from_pretrained(shared["base_model"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(shared["base_model"], dtype=torch.float32),
                                      str(adapter))
    cand = pair_token_logprobs(model, tokenizer, pairs, max_length, batch)
    with model.disable_adapter():
        base = pair_token_logprobs(model, tokenizer, pairs, max_length, batch)
    manifest = adapter / "training_config.json"
    return {"pairs": pairs, "cand": cand, "base": base, "lengths": answer_lengths(tokenizer, pairs),
            "adapter_steps": json.loads(manifest.read_text()).get("steps") if manifest.is_file() else None}


def analyse(folds: list[dict], bootstrap: int) -> dict:
    pairs = [p for f in folds for p in f["pairs"]]
    chosen = [r for f in folds for r in log_ratios(f["cand"][0], f["base"][0])]
    rejected = [r for f in folds for r in log_ratios(f["cand"][1], f["base"][1])]
    base_c = np.array([a.mean() for f in folds for a in f["base"][0]])
    base_r = np.array([a.mean() for f in folds for a in f["base"][1]])
    cand_c = np.array([a.mean() for f in folds for a in f["cand"][0]])
    cand_r = np.array([a.mean() for f in folds for a in f["cand"][1]])
    c_len = np.concatenate([f["lengths"][0] for f in folds])
    r_len = np.concatenate([f["lengths"][1] for f in folds])
    margins = {
        "implicit_raw": np.array([c.sum() - r.sum() for c, r in zip(chosen, rejected)]),
        "implicit_per_token": np.array([c.mean() - r.mean() for c, r in zip(chosen, rejected)]),
        "implicit_matched_prefix": matched_prefix_margins(chosen, rejected),
        "base_per_token": base_c - base_r,
        "candidate_per_token": cand_c - cand_r,
    }
    wins = {k: _wins(m, np.zeros_like(m)) for k, m in margins.items()}
    groups = prompt_groups(pairs)
    accuracy = stratified_accuracies(wins, c_len, r_len, differences={"own_difference": ("candidate_per_token",
                                                                                         "base_per_token")},
                                     prefers_longer=margins, bootstrap=bootstrap, seed=0, groups=groups)
    unequal = [(c, r) if cl > rl else (r, c) for c, r, cl, rl in zip(chosen, rejected, c_len, r_len) if cl != rl]
    longer, shorter = [pair[0] for pair in unequal], [pair[1] for pair in unequal]
    return {
        "n_pairs": len(pairs), "n_prompts": len(set(groups)),
        "profiles": {"preferred answer": position_profile(chosen), "other answer": position_profile(rejected),
                     "longer answer of the pair": position_profile(longer),
                     "shorter answer of the pair": position_profile(shorter)},
        "accuracy": accuracy,
    }


def _fmt(m: dict, key: str) -> str:
    v, lo, hi = m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def write(report: dict, out: Path) -> None:
    out.write_text(json.dumps(report, indent=1, default=str))
    a, profiles = report["analysis"]["accuracy"], report["analysis"]["profiles"]
    lines = [
        f"# Per-token implicit rewards of {report['method']} by position (cross-fitted adapters, "
        f"{report['split'].replace('_', '-')} pairs)",
        "",
        f"Command: `{report['command']}`  ",
        f"Work folder {report['work']}: adapters at step {report['adapter_steps']}, {report['analysis']['n_pairs']} "
        f"{'held-out' if report['split'] == 'held_out' else 'training'} pairs from "
        f"{report['analysis']['n_prompts']} prompts (preferred answer longer {a['n_longer']:.0f}, "
        f"shorter {a['n_shorter']:.0f}); 95% intervals resample prompts ({report['bootstrap']} resamples). "
        f"Wall time {report['wall_s']:.0f} s.",
        "",
        "## Mean per-token log p_cand - log p_base by token position in the answer",
        "",
        "| positions | " + " | ".join(profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    first = next(iter(profiles.values()))
    for k, bucket in enumerate(first):
        to = "end" if math.isinf(bucket["to"]) else f"{bucket['to']:.0f}"
        cells = [f"{p[k]['mean_log_ratio']:+.4f} ({p[k]['answers']:.0f})" if p[k]["tokens"] else "-"
                 for p in profiles.values()]
        lines.append(f"| {bucket['from']:.0f}-{to} | " + " | ".join(cells) + " |")
    lines += ["", "(answers reaching the bucket in brackets)", "",
              "## Accuracy of each view, and how often it ranks the longer answer first", "",
              "| view | all | preferred longer | preferred shorter | ranks longer first |", "|---|---|---|---|---|"]
    for key, label in (("implicit_raw", "implicit reward, summed"),
                       ("implicit_per_token", "implicit reward, per token"),
                       ("implicit_matched_prefix", "implicit reward, matched prefixes"),
                       ("base_per_token", "base's own per-token ranking"),
                       ("candidate_per_token", "candidate's own per-token ranking"),
                       ("own_difference", "candidate minus base, own per-token ranking"),
                       ("length_rule_accuracy", "longer answer wins")):
        pl = a.get(f"{key}_prefers_longer")
        lines.append(f"| {label} | {_fmt(a, key)} | {_fmt(a, key + '_longer')} | {_fmt(a, key + '_shorter')} | "
                     f"{'-' if pl is None else f'{pl:.3f}'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a chat_preference_crossfit.py --work folder")
    parser.add_argument("--method", required=True, help="the method spec it trained, e.g. simpo+balanced")
    parser.add_argument("--pairs-per-fold", type=int, default=250, help="seeded sample of each fold (0: all)")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--split", choices=("held_out", "train"), default="held_out",
                        help="score each fold's held-out pairs, or the pairs its adapter was trained on")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    fold_dirs = sorted(d for d in args.work.glob("fold*") if (d / "shared.json").is_file())
    if not fold_dirs:
        parser.error(f"{args.work} holds no fold*/shared.json")
    folds = [score_fold(d, args.method, args.pairs_per_fold, k, args.max_length, args.eval_batch, args.split)
             for k, d in enumerate(fold_dirs)]
    name = f"chat_preference_positions_{args.method.replace('+', '_')}" + ("_train" if args.split == "train" else "")
    out = args.results or REPO / "bench" / "results" / f"{name}.json"
    write({"command": " ".join(["python", "bench/chat_preference_positions.py", *sys.argv[1:]]),
           "method": args.method, "split": args.split, "work": str(args.work),
           "adapter_steps": [f["adapter_steps"] for f in folds],
           "machine": {"platform": platform.platform(), "threads": args.threads}, "bootstrap": args.bootstrap,
           "analysis": analyse(folds, args.bootstrap), "wall_s": time.perf_counter() - t0}, out)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
