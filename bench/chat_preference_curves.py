"""Learning curves of preference methods (KTO, DPO, LD-DPO, IPO, SimPO) on oasst1, judged beyond length.

    nohup nice -n 10 .venv/bin/python bench/chat_preference_curves.py > /tmp/chatcurves.log 2>&1 &
    # on a CUDA machine, unchanged, with a longer schedule:
    .venv/bin/python bench/chat_preference_curves.py --steps 0,50,100,200,400,800 --budget-min 0

Data as in bench/chat_preference.py: oasst1 English validation trees, one split by prompt group for every method
(KTO records from thumbs; rank pairs of siblings for the pair methods); the held-out rank pairs (capped at
``--eval-pairs``) are never seen in training (checked). Every method trains one LoRA adapter (r16 alpha16 q/k/v/o,
4 sequences per step: 4 KTO records or 2 pairs) with a linear-decay schedule to the last step of ``--steps``; at
each step count in ``--steps`` the current adapter is scored on the held-out pairs (the curve's points come from
one run, so an early point was taken at a higher learning rate than a run that ends there would have).

The base model scores the pairs once; each point reports (``feedback_pipeline.evaluation.preference_eval``):
raw and length-normalised implicit-reward accuracy, the candidate's own ranking minus the base's (raw sums and
per-token means, paired bootstrap), the "longer answer wins" rule, every view split into the strata "preferred
answer longer / shorter / same length", each with a 95% bootstrap interval that resamples prompts (the pairs of one
prompt share answers, so they are resampled together). A method counts as better than the
base only where its interval is above 0.5 (implicit) or above 0 (difference) in the ``shorter`` stratum too.

A method may carry the suffix ``+balanced`` (e.g. ``ld_dpo+balanced``): it then trains on the pairs of the same
training split subsampled so that "preferred answer longer" and "preferred answer shorter" pairs are equally many
(ties kept), so length alone predicts nothing in its training data (``balance_by_length``); KTO has no pairs to
balance.

Methods run as parallel worker processes (``--jobs``), one torch thread each; each stops taking new points when
``--budget-min`` of wall time has passed (0: no limit): the step it is at then is scored as its last point. Results are rewritten as
points arrive: bench/results/chat_preference_curves.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
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
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from feedback_pipeline.datasets.build import read_jsonl  # noqa: E402
from feedback_pipeline.evaluation.preference_eval import (  # noqa: E402
    PairScores, answer_lengths, compare_scores, prompt_groups, score_pairs,
)
from feedback_pipeline.training.base_model import prepare_base_chat_model  # noqa: E402
from feedback_pipeline.training.chat_preference import METHODS, PreferenceConfig, main  # noqa: E402

RESULTS = REPO / "bench" / "results" / "chat_preference_curves.json"
BASE_DIR = Path("/tmp/fp_run2/models/smollm2-135m-instruct")
log = logging.getLogger("bench.chat_preference_curves")

# Views in the table: (key in compare_scores' result, null value of "no better than the base").
VIEWS = (("implicit_accuracy", 0.5), ("implicit_norm_accuracy", 0.5), ("accuracy_difference", 0.0),
         ("sum_accuracy_difference", 0.0))


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _scores_to_json(s: PairScores) -> dict:
    return {k: getattr(s, k).tolist() for k in ("chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens")}


def balance_by_length(pairs: list[dict], chosen_len, rejected_len, seed: int = 0) -> list[dict]:
    """The pairs with the larger of the strata "chosen longer" / "chosen shorter" subsampled to the smaller one's size
    (ties kept), in a seeded random order: a training set where the longer answer wins exactly half the time."""
    rng = random.Random(seed)
    longer = [p for p, c, r in zip(pairs, chosen_len, rejected_len) if c > r]
    shorter = [p for p, c, r in zip(pairs, chosen_len, rejected_len) if c < r]
    tie = [p for p, c, r in zip(pairs, chosen_len, rejected_len) if c == r]
    n = min(len(longer), len(shorter))
    kept = rng.sample(longer, n) + rng.sample(shorter, n) + tie
    rng.shuffle(kept)
    return kept


def group_ids(pairs: list[dict]) -> list[str]:
    """Short ids of the pairs' prompts (the same grouping as ``prompt_groups``), kept in the results file."""
    return [hashlib.sha256(g.encode()).hexdigest()[:16] for g in prompt_groups(pairs)]


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return path


def _parse_method(spec: str) -> tuple[str, bool]:
    method, _, variant = spec.partition("+")
    if variant not in ("", "balanced") or method not in METHODS or (variant and method == "kto"):
        raise ValueError(f"unknown method {spec!r}: one of {METHODS}, pair methods optionally with '+balanced'")
    return method, variant == "balanced"


def _scores_from_json(d: dict) -> PairScores:
    return PairScores(*(np.asarray(d[k], dtype=float)
                        for k in ("chosen_sum", "rejected_sum", "chosen_tokens", "rejected_tokens")))


# ---------------------------------------------------------------------------------------------------------------------
# Worker: one method, scored at each step count of the schedule
# ---------------------------------------------------------------------------------------------------------------------


class CurvePoints(TrainerCallback):
    """Scores the adapter on the held-out pairs at the scheduled steps; stops training once the budget is spent."""

    def __init__(self, schedule, tokenizer, pairs, base, lengths, args, out: Path, report: dict, deadline: float):
        self.schedule, self.tokenizer, self.pairs, self.base = set(schedule), tokenizer, pairs, base
        self.lengths, self.args, self.out, self.report, self.deadline = lengths, args, out, report, deadline
        self.started = time.perf_counter()
        self.eval_s = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        over_budget = bool(self.deadline) and time.time() > self.deadline
        if state.global_step not in self.schedule and not over_budget:
            return  # past the budget, the current step is scored as the last point
        t = time.perf_counter()
        cand = score_pairs(model, self.tokenizer, self.pairs, self.args.max_length, self.args.eval_batch)
        metrics = compare_scores(self.base, cand, *self.lengths, bootstrap=self.args.bootstrap, seed=0,
                                 groups=prompt_groups(self.pairs))
        self.eval_s += time.perf_counter() - t
        last_loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), float("nan"))
        self.report["points"].append({
            "step": state.global_step, "train_wall_s": time.perf_counter() - self.started - self.eval_s,
            "eval_wall_s": time.perf_counter() - t, "train_loss": last_loss, "metrics": metrics,
            "scores": _scores_to_json(cand)})  # per pair, so other statistics can be computed later
        self.report["elapsed_s"] = time.perf_counter() - self.started
        self.out.write_text(json.dumps(self.report, default=str))
        m = metrics
        log.info("[%s] step %d: implicit %.3f [%.3f, %.3f], shorter-preferred %.3f [%.3f, %.3f]; own-norm diff "
                 "%+.3f [%+.3f, %+.3f] (eval %.0f s)", self.report["method"], state.global_step,
                 m["implicit_accuracy"], m["implicit_accuracy_ci_low"], m["implicit_accuracy_ci_high"],
                 m["implicit_accuracy_shorter"], m["implicit_accuracy_shorter_ci_low"],
                 m["implicit_accuracy_shorter_ci_high"], m["accuracy_difference"], m["accuracy_difference_ci_low"],
                 m["accuracy_difference_ci_high"], time.perf_counter() - t)
        if over_budget or (self.deadline and time.time() > self.deadline):
            self.report["stopped_by_budget_at"] = state.global_step
            self.out.write_text(json.dumps(self.report, default=str))
            control.should_training_stop = True


def score_base(base_dir: str, tokenizer, pairs: list[dict], args: argparse.Namespace):
    """The base model's scores of ``pairs``, their answers' token counts, and the seconds the scoring took."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(_device())
    t = time.perf_counter()
    scores = score_pairs(model, tokenizer, pairs, args.max_length, args.eval_batch)
    return scores, answer_lengths(tokenizer, pairs), time.perf_counter() - t


def run_worker(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    work = args.work
    shared = json.loads((work / "shared.json").read_text())
    spec, schedule = args.worker, [s for s in args.schedule if s > 0]
    method, balanced = _parse_method(spec)
    pairs = shared["eval_pairs"]
    tokenizer = AutoTokenizer.from_pretrained(shared["base_model"])
    out = work / f"{spec}.json"
    report = {"method": spec, "points": [], "device": _device(), "torch_threads": torch.get_num_threads()}
    if "base_scores" in shared:
        base = _scores_from_json(shared["base_scores"])
        lengths = (np.asarray(shared["chosen_length"]), np.asarray(shared["rejected_length"]))
    else:  # the cross-fit bench leaves each fold's worker to score its own held-out pairs with the base
        base, lengths, report["base_eval_s"] = score_base(shared["base_model"], tokenizer, pairs, args)
        report["base_scores"] = _scores_to_json(base)
        report["chosen_length"], report["rejected_length"] = lengths[0].tolist(), lengths[1].tolist()
    train_file = shared["kto_train"] if method == "kto" else shared["pairs_train_balanced" if balanced else "pairs_train"]
    cfg = PreferenceConfig(
        base_model_path=shared["base_model"], method=method, train_file=train_file,
        output_dir=str(work / f"{spec}-adapter"), max_steps=max(schedule),
        per_device_train_batch_size=4 if method == "kto" else 2, learning_rate=args.lr,
        max_length=args.max_length, save_steps=max(schedule), save_total_limit=1, seed=0, logging_steps=1)
    report["config"] = {k: v for k, v in vars(cfg).items() if k not in ("base_model_path", "train_file", "output_dir")}
    callback = CurvePoints(schedule, tokenizer, pairs, base, lengths, args, out, report, args.deadline)
    started = time.perf_counter()
    result = main(cfg, log=lambda line: log.info("[%s] %s", spec, line), extra_callbacks=[callback])
    report.update(result={k: v for k, v in result.to_dict().items() if k != "loss_history"},
                  loss_history=result.loss_history, wall_s=time.perf_counter() - started, done=True)
    out.write_text(json.dumps(report, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Orchestrator: data, base scores, workers, tables
# ---------------------------------------------------------------------------------------------------------------------


def _fmt(m: dict, key: str) -> str:
    v, lo, hi = m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else f"{v:.3f}"


def _verdict(m: dict) -> str:
    """'better' only when the implicit (raw and normalised) accuracy is above 0.5 overall AND in the shorter stratum,
    or the candidate's own per-token ranking beats the base's there; '-' otherwise."""
    wins = []
    for key, null in VIEWS:
        if all(m.get(f"{key}{s}_ci_low", float("nan")) > null for s in ("", "_shorter")):
            wins.append(key)
    return ", ".join(wins) if wins else "no"


def _groups_note(report: dict) -> str:
    groups = report.get("pairs", {}).get("prompt_group")
    return f" of the {len(set(groups))} prompts, each with all its pairs" if groups else " of pairs"


def write_tables(report: dict, results: Path = RESULTS) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1, default=str))
    base = report.get("base_metrics", {})
    lines = [
        "# Preference methods on oasst1 held-out sibling ranks: learning curves, beyond length",
        "",
        f"Command: `{report['command']}`  ",
        f"Device: {report['machine']['device']}, {report['machine']['cpus']} CPUs, torch threads per worker "
        f"{report['settings']['threads']}; held-out pairs {base.get('n_pairs', 0):.0f} "
        f"(preferred answer longer {base.get('n_longer', 0):.0f}, shorter {base.get('n_shorter', 0):.0f}, "
        f"same length {base.get('n_tie', 0):.0f}); max_length {report['settings']['max_length']}, "
        f"lr {report['settings']['lr']}, 4 sequences per step; 95% bootstrap intervals "
        f"({report['settings']['bootstrap']} resamples{_groups_note(report)}).",
        *([report["note"]] if report.get("note") else []),
        "",
        "## Base model and the length rule (same pairs)",
        "",
        "| view | all | preferred longer | preferred shorter | same length | ranks longer first |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("length_rule_accuracy", "longer answer wins"), ("base_accuracy", "base, per-token log-prob"),
                       ("base_sum_accuracy", "base, summed log-prob")):
        pl = base.get(f"{key}_prefers_longer")
        lines.append(f"| {label} | {_fmt(base, key)} | {_fmt(base, key + '_longer')} | "
                     f"{_fmt(base, key + '_shorter')} | {_fmt(base, key + '_tie')} | "
                     f"{'-' if pl is None else f'{pl:.3f}'} |")
    lines += [
        "",
        "## Curves",
        "",
        "implicit = log p_cand - log p_base summed over the answer (raw) or per token (norm), accuracy vs 0.5; "
        "own diff = candidate's own ranking accuracy minus the base's (per-token mean / raw sum), paired. "
        "'better' lists the views whose interval clears the null overall and in the shorter-preferred stratum.",
        "",
        "| method | step | loss | implicit raw | raw, shorter | implicit norm | norm, shorter | own diff (norm) | "
        "own diff (norm), shorter | own diff (raw) | own diff (raw), shorter | raw prefers longer | better |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, part in report.get("methods", {}).items():
        for p in part.get("points", []):
            m = p["metrics"]
            lines.append(
                f"| {method} | {p['step']} | {p.get('train_loss', float('nan')):.3f} | "
                f"{_fmt(m, 'implicit_accuracy')} | {_fmt(m, 'implicit_accuracy_shorter')} | "
                f"{_fmt(m, 'implicit_norm_accuracy')} | {_fmt(m, 'implicit_norm_accuracy_shorter')} | "
                f"{_fmt(m, 'accuracy_difference')} | {_fmt(m, 'accuracy_difference_shorter')} | "
                f"{_fmt(m, 'sum_accuracy_difference')} | {_fmt(m, 'sum_accuracy_difference_shorter')} | "
                f"{m.get('implicit_accuracy_prefers_longer', float('nan')):.3f} | {_verdict(m)} |")
    lines += ["", "## Wall time", "", "| method | points reached | stopped by budget at | train s | eval s | total s |",
              "|---|---|---|---|---|---|"]
    for method, part in report.get("methods", {}).items():
        pts = part.get("points", [])
        lines.append(f"| {method} | {[p['step'] for p in pts]} | {part.get('stopped_by_budget_at', '-')} | "
                     f"{pts[-1]['train_wall_s'] if pts else 0:.0f} | {sum(p['eval_wall_s'] for p in pts):.0f} | "
                     f"{part.get('elapsed_s', 0):.0f} |")
    lines += ["", f"Total wall time so far: {report.get('total_wall_s', 0):.0f} s.", ""]
    results.with_suffix(".md").write_text("\n".join(lines))


def run_orchestrator(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    bench = _load_sibling("chat_preference")
    base_dir = prepare_base_chat_model(BASE_DIR, args.base_model)
    df = bench.load_oasst1(bench.OASST1)
    data = bench.build_data(df, args.work / "datasets", eval_fraction=args.eval_fraction)
    held_out = data["dpo_eval"]
    pairs = random.Random(0).sample(held_out, min(args.eval_pairs, len(held_out)))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base_scores, (chosen_len, rejected_len), base_eval_s = score_base(str(base_dir), tokenizer, pairs, args)
    groups = prompt_groups(pairs)
    base_metrics = compare_scores(base_scores, base_scores, chosen_len, rejected_len, bootstrap=args.bootstrap,
                                  groups=groups)
    log.info("base scored %d pairs in %.0f s: per-token acc %.3f (shorter-preferred %.3f), length rule %.3f",
             len(pairs), base_eval_s, base_metrics["base_accuracy"], base_metrics["base_accuracy_shorter"],
             base_metrics["length_rule_accuracy"])
    train_pairs = read_jsonl(data["dpo"].file("train"))
    balanced = balance_by_length(train_pairs, *answer_lengths(tokenizer, train_pairs))
    balanced_file = write_pairs(args.work / "pairs_train_balanced.jsonl", balanced)
    (args.work / "shared.json").write_text(json.dumps({
        "base_model": str(base_dir), "eval_pairs": pairs, "base_scores": _scores_to_json(base_scores),
        "chosen_length": chosen_len.tolist(), "rejected_length": rejected_len.tolist(),
        "kto_train": str(data["kto"].file("train")), "pairs_train": str(data["dpo"].file("train")),
        "pairs_train_balanced": str(balanced_file)}))

    report = {
        "command": " ".join(["python", "bench/chat_preference_curves.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "device": _device(), "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "data": {"replies": len(df), "kto_counts": data["kto"].counts, "kto_label_balance": data["kto"].label_balance,
                 "pair_counts": data["dpo"].counts, "pair_fingerprint": data["dpo"].fingerprint,
                 "kto_fingerprint": data["kto"].fingerprint, "leaked_prompts": data["leaked_prompts"],
                 "eval_pairs_scored": len(pairs), "eval_fraction": args.eval_fraction,
                 "balanced_train_pairs": len(balanced)},
        "settings": {"base_model": str(base_dir), "methods": args.methods, "steps": args.schedule, "lr": args.lr,
                     "max_length": args.max_length, "lora": "r16 alpha16 q/k/v/o", "sequences_per_step": 4,
                     "threads": args.threads, "bootstrap": args.bootstrap, "budget_min": args.budget_min,
                     "jobs": args.jobs},
        "base_eval_s": base_eval_s, "base_metrics": base_metrics, "methods": {},
        # per held-out pair: the base's scores, answer lengths and prompt group (pairs of one prompt share answers)
        "pairs": {"base_scores": _scores_to_json(base_scores), "chosen_length": chosen_len.tolist(),
                  "rejected_length": rejected_len.tolist(),
                  "prompt_group": group_ids(pairs)},
    }
    zero = compare_scores(base_scores, base_scores, chosen_len, rejected_len, bootstrap=args.bootstrap,
                          groups=groups)
    for method in args.methods:  # step 0: the untouched adapter is the base
        report["methods"][method] = {"points": [{"step": 0, "train_wall_s": 0.0, "eval_wall_s": 0.0,
                                                 "train_loss": float("nan"), "metrics": zero}]}
    write_tables(report, args.results)

    deadline = time.time() + args.budget_min * 60 if args.budget_min else 0
    pending, running = list(args.methods), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            method = pending.pop(0)
            cmd = [sys.executable, __file__, "--worker", method, "--work", str(args.work), "--deadline", str(deadline),
                   "--steps", ",".join(map(str, args.schedule)), "--lr", str(args.lr), "--max-length",
                   str(args.max_length), "--threads", str(args.threads), "--bootstrap", str(args.bootstrap),
                   "--eval-batch", str(args.eval_batch)]
            logfile = open(args.work / f"{method}.log", "w")
            running[method] = (subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT), logfile)
            log.info("started %s (pid %d)", method, running[method][0].pid)
        time.sleep(20)
        for method, (proc, logfile) in list(running.items()):
            if proc.poll() is not None:
                logfile.close()
                del running[method]
                log.info("%s finished with exit code %d", method, proc.returncode)
                if proc.returncode:
                    report["methods"].setdefault(method, {})["error"] = (args.work / f"{method}.log").read_text()[-3000:]
        for method in args.methods:
            part = args.work / f"{method}.json"
            if part.is_file():
                try:
                    got = json.loads(part.read_text())
                except json.JSONDecodeError:  # being rewritten; next poll
                    continue
                got["points"] = report["methods"][method]["points"][:1] + got["points"]
                report["methods"][method] = {**report["methods"][method], **got}
        report["total_wall_s"] = time.perf_counter() - t0
        write_tables(report, args.results)
    log.info("wrote %s in %.0f s", args.results, report["total_wall_s"])


def rescore(results: Path, bootstrap: int) -> None:
    """Recompute every metric of a results file from the per-pair scores it holds (intervals by prompt group) and
    rewrite its tables: for a run whose statistics changed after it was scored."""
    report = json.loads(results.read_text())
    pairs = report["pairs"]
    base = _scores_from_json(pairs["base_scores"])
    lengths = (np.asarray(pairs["chosen_length"]), np.asarray(pairs["rejected_length"]))
    groups = pairs["prompt_group"]
    report["base_metrics"] = compare_scores(base, base, *lengths, bootstrap=bootstrap, groups=groups)
    for part in report["methods"].values():
        for point in part.get("points", []):
            cand = _scores_from_json(point["scores"]) if "scores" in point else base  # step 0 is the base
            point["metrics"] = compare_scores(base, cand, *lengths, bootstrap=bootstrap, seed=0, groups=groups)
    report["settings"]["bootstrap"] = bootstrap
    write_tables(report, results)
    log.info("rescored %s", results)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="kto,dpo,ld_dpo,simpo",
                        help=f"comma-separated, of {METHODS}; a pair method may end in '+balanced'")
    parser.add_argument("--steps", default="0,10,30,60,120", help="step counts scored (the last is max_steps)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (LoRA r=16, alpha=16)")
    parser.add_argument("--base-model", default="",
                        help="a local HF causal-LM folder to train from (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--eval-pairs", type=int, default=100, help="held-out pairs scored (random sample)")
    parser.add_argument("--eval-fraction", type=float, default=0.15, help="share of prompt groups held out")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--jobs", type=int, default=4, help="methods trained at once (worker processes)")
    parser.add_argument("--budget-min", type=float, default=45.0,
                        help="wall minutes after which workers stop at their next point (0: no limit)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fp_bench_chat_preference_curves"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON results (the .md table beside it)")
    parser.add_argument("--rescore", action="store_true",
                        help="only recompute the metrics and tables of --results from the per-pair scores it holds")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.schedule = sorted({int(s) for s in args.steps.split(",")})
    for spec in args.methods:
        try:
            _parse_method(spec)
        except ValueError as exc:
            parser.error(str(exc))
    if not args.schedule or args.schedule[-1] <= 0:
        parser.error(f"empty schedule {args.schedule}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    if args.rescore:
        rescore(args.results, args.bootstrap)
    elif args.worker:
        run_worker(args)
    else:
        run_orchestrator(args)


if __name__ == "__main__":
    main_bench()
