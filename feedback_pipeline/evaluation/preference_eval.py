"""Held-out preference accuracy of a LoRA candidate against its base model, on chosen/rejected pairs.

Two views, both from scored existing answers (no generation):

- Implicit reward (DPO's view): r(y) = log p_candidate(y | x) - log p_base(y | x), summed over the response
  tokens. The candidate prefers the chosen answer when r(chosen) > r(rejected); the margin is the mean of
  r(chosen) - r(rejected), in nats. This measures what preference tuning changed, relative to the base.
- Absolute preference of each model: does it give the chosen answer the higher mean per-token log-prob
  (length-normalised, so long answers are not penalised for being long)? Computed for the base and the candidate,
  so "base vs candidate" is a like-for-like comparison, with a paired bootstrap interval of the difference.

Ties count half (an untrained adapter has every r = 0, hence implicit accuracy exactly 0.5, not 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feedback_pipeline.evaluation.chat_eval import response_logprobs


def _text(answer: Any) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list) and answer and isinstance(answer[-1], dict) and answer[-1].get("role") == "assistant":
        return answer[-1]["content"]
    raise ValueError("chosen/rejected must be a string or a list of messages ending with the assistant answer")


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, 0.5 on ties, 0 otherwise."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def _ci(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    if idx.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def preference_accuracy(
    base_model_path: str | Path,
    adapter_dir: str | Path,
    pairs: Sequence[dict[str, Any]],
    max_length: int = 256,
    batch_size: int = 4,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Implicit-reward accuracy and margin of base+adapter vs base on ``pairs``, and both models' own accuracy.

    ``pairs``: ``{"prompt": [messages], "chosen": str | [assistant message], "rejected": ...}`` (the DPO dataset
    records work as they are). 95% intervals resample pairs (``bootstrap`` times; 0 gives NaN intervals); the
    difference candidate - base accuracy uses the same resampled pairs for both (paired bootstrap).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not pairs:
        raise ValueError("preference_accuracy needs at least one pair")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json missing)")

    examples = []
    for pair in pairs:
        for key in ("chosen", "rejected"):
            examples.append({"prompt": pair["prompt"], "response": _text(pair[key])})

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))  # one copy of the weights serves both models
    model.eval()
    candidate = response_logprobs(model, tokenizer, examples, max_length, batch_size)
    with model.disable_adapter():
        reference = response_logprobs(model, tokenizer, examples, max_length, batch_size)

    cand_sum = np.array([s for s, _ in candidate])
    base_sum = np.array([s for s, _ in reference])
    counts = np.array([n for _, n in reference], dtype=float)
    if not (np.isfinite(cand_sum).all() and np.isfinite(base_sum).all()):
        raise FloatingPointError("preference_accuracy: non-finite log-probabilities")
    chosen, rejected = slice(0, None, 2), slice(1, None, 2)

    reward = cand_sum - base_sum
    implicit_wins = _wins(reward[chosen], reward[rejected])
    margins = reward[chosen] - reward[rejected]
    base_norm, cand_norm = base_sum / counts, cand_sum / counts
    base_wins = _wins(base_norm[chosen], base_norm[rejected])
    cand_wins = _wins(cand_norm[chosen], cand_norm[rejected])
    base_margins = base_norm[chosen] - base_norm[rejected]
    cand_margins = cand_norm[chosen] - cand_norm[rejected]
    difference = cand_wins - base_wins

    n = len(pairs)
    idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n)) if bootstrap > 0 else np.empty((0, n), int)
    result: dict[str, float] = {"n_pairs": float(n)}
    for name, values in (
        ("implicit_accuracy", implicit_wins),
        ("implicit_margin", margins),
        ("base_accuracy", base_wins),
        ("candidate_accuracy", cand_wins),
        ("accuracy_difference", difference),
        ("base_logp_margin", base_margins),
        ("candidate_logp_margin", cand_margins),
    ):
        low, high = _ci(values, idx)
        result[name] = float(values.mean())
        result[f"{name}_ci_low"] = low
        result[f"{name}_ci_high"] = high
    result["mean_reward_chosen"] = float(reward[chosen].mean())
    result["mean_reward_rejected"] = float(reward[rejected].mean())
    result["n_response_tokens"] = float(counts.sum())
    for key in ("implicit_accuracy", "implicit_margin", "base_accuracy", "candidate_accuracy"):
        if not math.isfinite(result[key]):
            raise FloatingPointError(f"preference_accuracy: {key} is not finite ({result[key]})")
    return result
