"""Reward model backbones on oasst1 sibling ranks: SmolLM2-135M + LoRA vs a MiniLM cross-encoder, against length.

    nohup nice -n 10 .venv/bin/python bench/reward_model.py > /tmp/reward_bench.log 2>&1 &

Data recipe: the oasst1 English validation trees (../shared/data/oasst1-en-validation) read with ``read_oasst1`` and
``normalise_record``, then the project's own DPO builder ``build_dpo_dataset`` (rank pairs only: the frame has no
thumbs labels): every two sibling replies to the same parent with different ranks give a pair, the better-ranked one
chosen. Its split is by prompt group (and user), so no held-out prompt was trained on; the script checks it.

Each candidate is trained with ``feedback_pipeline.training.reward.main`` (trl's RewardTrainer) for a fixed number of
steps chosen to take about 6-8 minutes of wall time on the shared 2-core CPU (torch on 1 thread), then scored on every
held-out pair. Next to each accuracy: the "longer answer wins" rule on the same pairs, the paired difference, and
the split by "preferred answer is longer / shorter". Finally the chosen backbone is trained once more with the
``RewardConfig`` defaults (the pipeline's run) to report its time and accuracy. Results: bench/results/reward_model.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
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

from feedback_pipeline.datasets.build import read_jsonl  # noqa: E402
from feedback_pipeline.datasets.preference import build_dpo_dataset  # noqa: E402
from feedback_pipeline.datasets.splits import leaked_prompts  # noqa: E402
from feedback_pipeline.ingestion.importers import read_oasst1  # noqa: E402
from feedback_pipeline.ingestion.records import normalise_record  # noqa: E402
from feedback_pipeline.training.base_model import prepare_base_chat_model  # noqa: E402
from feedback_pipeline.training.reward import RewardConfig, main  # noqa: E402

OASST1 = REPO.parent / "shared" / "data" / "oasst1-en-validation" / "en-validation.jsonl"
RESULTS = REPO / "bench" / "results" / "reward_model.json"
# Per-candidate settings: the steps are what fits ~6-8 min of training on this CPU (measured, see the results).
CANDIDATES = {
    "minilm": {"backbone": "minilm", "max_steps": 50, "per_device_train_batch_size": 8, "learning_rate": 5e-5},
    "smollm2": {"backbone": "smollm2", "max_steps": 16, "per_device_train_batch_size": 4, "learning_rate": 1e-4,
                "lora_r": 16, "lora_alpha": 16},
}

log = logging.getLogger("bench.reward_model")


def build_data(root: Path, eval_fraction: float) -> dict:
    df = pd.DataFrame([normalise_record(r, source="oasst1") for r in read_oasst1(OASST1)])
    built = build_dpo_dataset(df, root, eval_fraction=eval_fraction)
    train, held_out = read_jsonl(built.file("train")), read_jsonl(built.file("eval"))
    leaks = len(leaked_prompts([r["prompt"][-1]["content"] for r in train],
                               [r["prompt"][-1]["content"] for r in held_out]))
    if leaks:
        raise AssertionError(f"{leaks} held-out prompts also in train")
    return {"built": built, "replies": len(df), "train": len(train), "eval": len(held_out), "leaked_prompts": leaks}


def run(name: str, settings: dict, data: dict, base: Path, work: Path, max_length: int) -> dict:
    cfg = RewardConfig(train_file=str(data["built"].file("train")), eval_file=str(data["built"].file("eval")),
                       output_dir=str(work / name), base_model_path=str(base),
                       max_length=max_length, seed=0, logging_steps=5, **settings)
    load = os.getloadavg()
    started = time.perf_counter()
    result = main(cfg, log=lambda line: log.info("[%s] %s", name, line))
    wall = time.perf_counter() - started
    model_dir = Path(result.model_dir)
    story = json.loads((model_dir / "training_config.json").read_text())
    shutil.rmtree(model_dir, ignore_errors=True)  # 0.5 GB for smollm2; the figures are what we keep
    return {"config": {k: v for k, v in vars(cfg).items() if k not in ("train_file", "eval_file", "output_dir")},
            "result": result.to_dict(), "eval": story["eval_metrics"], "wall_s_total": wall,
            "wall_s_train": result.train_runtime_s, "wall_s_load_eval_save": wall - result.train_runtime_s,
            "load_avg_at_start": load}


def decide(report: dict) -> dict:
    """The better held-out accuracy wins; say plainly whether it beats the longer-answer rule."""
    figures = {}
    for name, c in report["candidates"].items():
        m = c["eval"]
        figures[name] = {"accuracy": [m["accuracy"], m["accuracy_ci_low"], m["accuracy_ci_high"]],
                         "minus_length_rule": [m["difference_vs_length_rule"], m["difference_vs_length_rule_ci_low"],
                                               m["difference_vs_length_rule_ci_high"]],
                         "beats_length_rule": m["beats_length_rule"], "train_s": c["wall_s_train"],
                         "steps": c["result"]["steps"], "pairs_seen": c["result"]["steps"]
                         * c["config"]["per_device_train_batch_size"]}
    best = max(figures, key=lambda n: figures[n]["accuracy"][0])
    rule = next(iter(report["candidates"].values()))["eval"]["length_rule_accuracy"]
    verdicts = []
    for name, f in figures.items():
        low, high = f["minus_length_rule"][1:]
        verdicts.append(f"{name} {f['accuracy'][0]:.3f} [{f['accuracy'][1]:.3f}, {f['accuracy'][2]:.3f}], model - rule "
                        f"{f['minus_length_rule'][0]:+.3f} [{low:+.3f}, {high:+.3f}]: "
                        + ("better than the rule" if low > 0 else "worse than the rule" if high < 0
                           else "not distinguishable from the rule"))
    beaten = [n for n, f in figures.items() if f["beats_length_rule"]]
    return {"chosen_default": best, "length_rule_accuracy": rule, "figures": figures,
            "any_beats_length_rule": bool(beaten),
            "statement": (f"{best} has the higher held-out accuracy. "
                          + ("" if beaten else f"Neither candidate beats the longer-answer rule ({rule:.3f}). ")
                          + "; ".join(verdicts) + ".")}


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=[*sorted(CANDIDATES), "default"], action="append",
                        help="run only these (repeatable); the other entries of an existing results file are kept")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fp_bench_reward_model"))
    parser.add_argument("--base", type=Path, default=Path("/tmp/fp_bench_reward_model_base/smollm2-135m-instruct"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base = prepare_base_chat_model(args.base)
    data = build_data(args.work / "datasets", eval_fraction=0.15)
    log.info("data: %d replies -> %d train / %d held-out pairs", data["replies"], data["train"], data["eval"])

    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() and args.only else {}
    report.update({
        "machine": {"platform": platform.platform(), "torch_threads": args.threads, "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "data": {"source": str(OASST1.relative_to(REPO.parent)), "recipe": "read_oasst1 + normalise_record + "
                 "build_dpo_dataset (sibling-rank pairs, split by prompt group and user, eval_fraction 0.15)",
                 "replies": data["replies"], "train_pairs": data["train"], "eval_pairs": data["eval"],
                 "fingerprint": data["built"].fingerprint, "leaked_prompts": data["leaked_prompts"]},
        "max_length": args.max_length, "length_unit": "characters",
    })
    report.setdefault("candidates", {})
    for name in [n for n in (args.only or list(CANDIDATES)) if n in CANDIDATES]:
        report["candidates"][name] = run(name, CANDIDATES[name], data, base, args.work, args.max_length)
        m = report["candidates"][name]["eval"]
        log.info("%s: acc %.3f [%.3f, %.3f] vs length rule %.3f; diff %.3f [%.3f, %.3f]", name, m["accuracy"],
                 m["accuracy_ci_low"], m["accuracy_ci_high"], m["length_rule_accuracy"],
                 m["difference_vs_length_rule"], m["difference_vs_length_rule_ci_low"],
                 m["difference_vs_length_rule_ci_high"])
        RESULTS.write_text(json.dumps(report, indent=1, default=str))  # partial results survive a later crash

    if not args.only or "default" in args.only:
        # The pipeline's run: RewardConfig defaults (backbone, steps, batch, lr, max_length) on the same data.
        defaults = RewardConfig(train_file="x", output_dir="x")
        report["default_run"] = run(f"default_{defaults.backbone}", {}, data, base, args.work, defaults.max_length)
        report["default_run"]["note"] = "RewardConfig defaults, as a pipeline run trains it"
    if set(CANDIDATES) <= set(report["candidates"]):
        report["decision"] = decide(report)
    report["total_wall_s"] = time.perf_counter() - t0
    RESULTS.write_text(json.dumps(report, indent=1, default=str))
    log.info("wrote %s in %.0f s", RESULTS, report["total_wall_s"])


if __name__ == "__main__":
    main_bench()
