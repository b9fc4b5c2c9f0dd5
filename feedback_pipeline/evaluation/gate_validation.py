"""Does the gate decide right? Planted candidates on the real small chat model, and simulations with known truth.

Used by the tests (``feedback_pipeline_tests/test_gate_models.py``) and the benchmark (``bench/release_gate.py``):

- ``planted_chat_scores``: per-pair correctness (does the model give the chosen answer the higher length-normalised
  log-probability) on held-out pairs for the base model (the champion), a planted *worse* adapter (supervised on the
  answers people ranked lower) and a planted *better* one (DPO on the very pairs evaluated);
- ``seeded_decisions``: the gate on several differently seeded held-out samples of those scores;
- ``simulate_lc_gate``: how often an A/A challenger is promoted on the length-controlled win rate, when the judge
  partly rewards length and the two models' answers come from one distribution.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from feedback_pipeline.evaluation.gate import (GateDecision, GatePolicy, Interval, decide,
                                               length_controlled_win_rate, paired_interval, win_outcomes)


def seeded_decisions(champion: np.ndarray, challenger: np.ndarray, policy: GatePolicy, seeds: Iterable[int],
                     sample: int) -> list[GateDecision]:
    """The gate on ``sample`` examples drawn without replacement per seed (bootstrap seeded alike)."""
    decisions = []
    for seed in seeds:
        idx = np.random.default_rng(seed).choice(len(champion), sample, replace=False)
        decisions.append(decide(policy, paired_interval(champion[idx], challenger[idx], seed=seed)))
    return decisions


def planted_chat_scores(base_model_dir: str | Path, train_pairs: Sequence[dict], held_out: Sequence[dict],
                        work: Path, max_length: int = 128, worse_steps: int = 8, better_steps: int = 12,
                        log=lambda _: None) -> dict[str, np.ndarray]:
    """Per-pair correctness on ``held_out`` for ``champion`` (the base), ``worse`` and ``better``."""
    from feedback_pipeline.evaluation.chat_eval import response_logprobs
    from feedback_pipeline.evaluation.generation import ChatGenerator
    from feedback_pipeline.training.chat_preference import PreferenceConfig
    from feedback_pipeline.training.chat_preference import main as train_preference
    from feedback_pipeline.training.chat_sft import ChatSFTConfig
    from feedback_pipeline.training.chat_sft import main as train_sft

    work.mkdir(parents=True, exist_ok=True)
    rejected = work / "rejected.jsonl"
    rejected.write_text("".join(json.dumps({"messages": p["prompt"] + p["rejected"], "weight": 1.0}) + "\n"
                                for p in train_pairs[:64]), encoding="utf-8")
    worse = train_sft(ChatSFTConfig(base_model_path=str(base_model_dir), train_file=str(rejected),
                                    output_dir=str(work / "worse"), max_steps=worse_steps, learning_rate=1e-3,
                                    per_device_train_batch_size=4, max_length=max_length), log=log)
    evaluated = work / "evaluated.jsonl"
    evaluated.write_text("".join(json.dumps(p) + "\n" for p in held_out), encoding="utf-8")
    better = train_preference(PreferenceConfig(base_model_path=str(base_model_dir), train_file=str(evaluated),
                                               output_dir=str(work / "better"), method="dpo", max_steps=better_steps,
                                               learning_rate=5e-4, per_device_train_batch_size=4,
                                               max_length=max_length), log=log)
    gen = ChatGenerator(base_model_dir, {"champion": None, "worse": worse.adapter_dir, "better": better.adapter_dir})
    examples = [{"prompt": p["prompt"], "response": p[key][-1]["content"]} for p in held_out
                for key in ("chosen", "rejected")]
    correct = {}
    for name in gen.adapters:
        with gen.use(name):
            scored = response_logprobs(gen.model, gen.tokenizer, examples, max_length, 8)
        per_token = np.array([s / n for s, n in scored])
        correct[name] = win_outcomes(per_token[1::2], per_token[0::2])  # chosen (even rows) above rejected
    return correct


def simulate_lc_gate(trials: int, n: int, length_weight: float = 0.5, effect: float = 0.0, seed: int = 0,
                     n_resamples: int = 500) -> float:
    """Share of trials in which the gate promotes on the length-controlled win rate. Each trial: ``n`` prompts,
    answer lengths of both models from one distribution, a judge score = quality + ``length_weight`` * standardised
    length + noise, the challenger's quality higher by ``effect`` (0: an A/A test)."""
    rng = np.random.default_rng(seed)
    policy = GatePolicy("lc_win_rate")
    promoted = 0
    for trial in range(trials):
        lengths = rng.lognormal(4.0, 0.6, size=(2, n))
        z = (lengths - lengths.mean()) / lengths.std()
        quality = rng.normal(0, 1, size=(2, n)) + np.array([[0.0], [effect]])
        judge = quality + length_weight * z + rng.normal(0, 0.5, size=(2, n))
        lc = length_controlled_win_rate(judge[0], judge[1], lengths[0], lengths[1], n_resamples=n_resamples,
                                        seed=trial)
        interval = Interval(0.5, lc["lc_win_rate"], lc["lc_win_rate"] - 0.5, lc["lc_win_rate_ci_low"] - 0.5,
                            lc["lc_win_rate_ci_high"] - 0.5, n)
        promoted += decide(policy, interval).decision == "promote"
    return promoted / trials
