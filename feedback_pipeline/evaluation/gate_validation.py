"""Does the gate decide right? Planted candidates on the real small chat model, and simulations with known truth.

Used by the tests (``feedback_pipeline_tests/test_gate_models.py``) and the benchmark (``bench/release_gate.py``):

- ``planted_chat_scores``: per-pair correctness (does the model give the chosen answer the higher length-normalised
  log-probability) on held-out pairs for the base model (the champion), a planted *worse* adapter (supervised on the
  answers people ranked lower) and a planted *better* one (supervised on the answers they preferred);
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


def short_prompt_pairs(pairs: Sequence[dict], n: int, max_prompt_chars: int = 150) -> list[dict]:
    """The first ``n`` pairs whose prompt is short, so a small token window holds the start of both answers."""
    return [p for p in pairs if sum(len(m["content"]) for m in p["prompt"]) <= max_prompt_chars][:n]


def planted_chat_scores(base_model_dir: str | Path, held_out: Sequence[dict], work: Path, max_length: int = 96,
                        steps: int = 16, batch_size: int = 8, learning_rate: float = 3e-3,
                        log=lambda _: None) -> dict[str, np.ndarray]:
    """Per-pair correctness on ``held_out`` for ``champion`` (the base model), ``worse`` (LoRA SFT on the
    rejected answers of those very pairs: a model that learned what people disliked) and ``better`` (the same on
    the chosen answers)."""
    from feedback_pipeline.evaluation.chat_eval import response_logprobs
    from feedback_pipeline.evaluation.generation import ChatGenerator
    from feedback_pipeline.training.chat_sft import ChatSFTConfig
    from feedback_pipeline.training.chat_sft import main as train_sft

    work.mkdir(parents=True, exist_ok=True)
    adapters: dict[str, str | None] = {"champion": None}
    for name, side in (("worse", "rejected"), ("better", "chosen")):
        data = work / f"{side}.jsonl"
        data.write_text("".join(json.dumps({"messages": p["prompt"] + p[side], "weight": 1.0}) + "\n"
                                for p in held_out), encoding="utf-8")
        result = train_sft(ChatSFTConfig(base_model_path=str(base_model_dir), train_file=str(data),
                                         output_dir=str(work / name), max_steps=steps, learning_rate=learning_rate,
                                         per_device_train_batch_size=batch_size, max_length=max_length), log=log)
        adapters[name] = result.adapter_dir
    gen = ChatGenerator(base_model_dir, adapters)
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
