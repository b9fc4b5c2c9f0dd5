"""Held-out preference accuracy of a LoRA candidate against its base model, on chosen/rejected pairs.

Views, all from scored existing answers (no generation):

- Implicit reward (DPO's view): r(y) = log p_candidate(y | x) - log p_base(y | x), summed over the response
  tokens (``implicit_accuracy``, margin ``implicit_margin`` in nats) and per response token
  (``implicit_norm_accuracy``: SimPO-style length normalisation of the same log-ratio). This measures what
  preference tuning changed, relative to the base (an untouched adapter scores exactly 0.5).
- Each model's own ranking: does it give the chosen answer the higher mean per-token log-prob (length-normalised:
  ``base_accuracy`` / ``candidate_accuracy``) or the higher summed log-prob (raw: ``base_sum_accuracy`` /
  ``candidate_sum_accuracy``, which favours short answers)? Candidate minus base with a paired bootstrap interval:
  ``accuracy_difference`` (normalised) and ``sum_accuracy_difference`` (raw); the per-token margin itself
  (chosen minus rejected, nats) as ``base_logp_margin`` / ``candidate_logp_margin`` and their paired difference
  ``logp_margin_difference`` (the release gate's ``preference_margin``).
- Beyond length: the "longer answer wins" rule on the same pairs (``length_rule_accuracy``; length = tokens of the
  whole answer), and every accuracy split by stratum - ``_longer`` (the preferred answer is the longer one),
  ``_shorter`` (it is the shorter one), ``_tie`` (same length) - each with its own 95% interval, plus
  ``<view>_prefers_longer``: how often that view ranks the longer answer first (pairs of equal length left out).
  A view that only learned "longer is better" scores high on ``_longer`` and low on ``_shorter``; count a candidate
  as better only when it also wins in the ``_shorter`` stratum (length-controlled, as in AlpacaEval 2.0).

Ties count half (an untrained adapter has every r = 0, hence implicit accuracy exactly 0.5, not 0). Intervals are
percentile bootstraps (numpy, ``bootstrap`` resamples); within one stratum every view uses the same resamples, so
differences are paired. Given ``groups`` (one id per pair, e.g. its prompt), whole groups are resampled (a cluster
bootstrap): the pairs of one prompt share answers, so they are not independent, and resampling them one by one
gives intervals that are too narrow. ``preference_accuracy`` groups by prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feedback_pipeline.evaluation.chat_eval import response_logprobs
from feedback_pipeline.evaluation.gate import factorize, group_codes, prompt_groups

STRATA = ("longer", "shorter", "tie")


def _text(answer: Any) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list) and answer and isinstance(answer[-1], dict) and answer[-1].get("role") == "assistant":
        return answer[-1]["content"]
    raise ValueError("chosen/rejected must be a string or a list of messages ending with the assistant answer")


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, 0.5 on ties, 0 otherwise."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def _ci(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Percentile interval of the weighted means; ``weights[b, i]``: how often resample b drew item i."""
    if weights.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(weights @ values / weights.sum(axis=1), [2.5, 97.5])
    return float(low), float(high)


def _resamples(groups: np.ndarray, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights (resamples x items): each resample draws as many groups as there are, with replacement, and
    an item counts as often as its group was drawn. ``groups``: integer group codes 0..G-1, one per item."""
    n = groups.size
    if bootstrap <= 0 or n == 0:
        return np.empty((0, n))
    g = int(groups.max()) + 1
    draws = rng.integers(0, g, size=(bootstrap, g))
    counts = np.bincount((draws + np.arange(bootstrap)[:, None] * g).ravel(), minlength=bootstrap * g)
    return counts.reshape(bootstrap, g)[:, groups].astype(float)


@dataclass(frozen=True)
class PairScores:
    """Summed response log-probs and response token counts of one model, chosen and rejected answer of each pair."""

    chosen_sum: np.ndarray
    rejected_sum: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray

    @property
    def chosen_mean(self) -> np.ndarray:
        return self.chosen_sum / self.chosen_tokens

    @property
    def rejected_mean(self) -> np.ndarray:
        return self.rejected_sum / self.rejected_tokens


def length_strata(chosen_length: Sequence[float], rejected_length: Sequence[float]) -> dict[str, np.ndarray]:
    """Boolean masks over pairs: ``longer`` (chosen answer longer), ``shorter`` (chosen shorter), ``tie``."""
    c, r = np.asarray(chosen_length, dtype=float), np.asarray(rejected_length, dtype=float)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError("chosen_length and rejected_length must be 1-D and of the same size")
    return {"longer": c > r, "shorter": c < r, "tie": c == r}


def stratified_accuracies(
    wins: Mapping[str, Sequence[float]],
    chosen_length: Sequence[float],
    rejected_length: Sequence[float],
    differences: Mapping[str, tuple[str, str]] | None = None,
    prefers_longer: Mapping[str, Sequence[float]] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Accuracy of each view in ``wins`` (per pair: 1 chosen ranked first, 0.5 tie, 0 rejected first) overall and per
    length stratum, next to the "longer answer wins" rule (``length_rule_accuracy``), with 95% bootstrap intervals.

    ``differences``: name -> (view a, view b), reported as mean(a - b) with a paired interval. ``prefers_longer``:
    view -> per-pair margin (score of chosen - score of rejected); gives ``<view>_prefers_longer``, the share of
    pairs of unequal length where the view ranks the longer answer first (ties in score count half).
    Keys: ``<view>``, ``<view>_ci_low``, ``<view>_ci_high`` and the same with ``_longer`` / ``_shorter`` / ``_tie``
    after ``<view>``; ``n_pairs``, ``n_longer``, ``n_shorter``, ``n_tie``. An empty stratum gives NaN.
    ``groups``: one id per pair; the intervals then resample whole groups (within each stratum), and ``n_groups``
    (``n_groups_<stratum>``) says how many there are.
    """
    strata = length_strata(chosen_length, rejected_length)
    n = strata["longer"].size
    if n == 0:
        raise ValueError("stratified_accuracies needs at least one pair")
    values = {name: np.asarray(w, dtype=float) for name, w in wins.items()}
    values["length_rule_accuracy"] = _wins(np.asarray(chosen_length, float), np.asarray(rejected_length, float))
    for name, (a, b) in (differences or {}).items():
        values[name] = values[a] - values[b]
    for name, v in values.items():
        if v.shape != (n,):
            raise ValueError(f"{name}: expected {n} per-pair values, got shape {v.shape}")

    codes = group_codes(groups, n)
    rng = np.random.default_rng(seed)
    result: dict[str, float] = {"n_pairs": float(n)}
    for suffix, mask in [("", np.ones(n, dtype=bool))] + [(f"_{s}", strata[s]) for s in STRATA]:
        if suffix:
            result[f"n{suffix}"] = float(mask.sum())
        sub_codes = factorize(codes[mask])
        if groups is not None:
            result[f"n_groups{suffix}"] = float(sub_codes.max() + 1 if sub_codes.size else 0)
        weights = _resamples(sub_codes, bootstrap, rng)  # one resample per stratum: paired across views
        for name, v in values.items():
            sub = v[mask]
            result[f"{name}{suffix}"] = float(sub.mean()) if sub.size else float("nan")
            low, high = _ci(sub, weights) if sub.size else (float("nan"), float("nan"))
            result[f"{name}{suffix}_ci_low"], result[f"{name}{suffix}_ci_high"] = low, high

    unequal = ~strata["tie"]
    sign = np.where(strata["longer"], 1.0, -1.0)[unequal]  # +1 where the chosen answer is the longer one
    for name, margin in (prefers_longer or {}).items():
        m = np.asarray(margin, dtype=float)[unequal] * sign  # > 0: the view ranks the longer answer first
        result[f"{name}_prefers_longer"] = float(_wins(m, np.zeros_like(m)).mean()) if m.size else float("nan")
    return result


def answer_lengths(tokenizer: Any, pairs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Token counts of each pair's whole chosen and rejected answer text (not truncated to a scoring window)."""
    def count(answer: Any) -> int:
        return len(tokenizer(_text(answer), add_special_tokens=False)["input_ids"])

    return (np.array([count(p["chosen"]) for p in pairs], dtype=float),
            np.array([count(p["rejected"]) for p in pairs], dtype=float))


def in_pair_order(score: Any, model: Any, tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int,
                  batch_size: int) -> list[Any]:
    """``score(model, tokenizer, examples, max_length, batch_size)`` (one value per example) over every pair's
    chosen then rejected answer: [chosen 0, rejected 0, chosen 1, ...]."""
    examples = []
    for pair in pairs:
        for key in ("chosen", "rejected"):
            examples.append({"prompt": pair["prompt"], "response": _text(pair[key])})
    # Batches of similar length pad less (often 1.5-2x faster on a CPU); the scores go back to the pairs' order.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["response"]))
    in_order = score(model, tokenizer, [examples[i] for i in order], max_length, batch_size)
    scored: list[Any] = [None] * len(examples)
    for i, value in zip(order, in_order):
        scored[i] = value
    return scored


def score_pairs(model: Any, tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int = 256,
                batch_size: int = 4) -> PairScores:
    """``model``'s summed response log-probs of every pair's chosen and rejected answer (``response_logprobs``)."""
    scored = in_pair_order(response_logprobs, model, tokenizer, pairs, max_length, batch_size)
    sums = np.array([s for s, _ in scored])
    counts = np.array([c for _, c in scored], dtype=float)
    if not np.isfinite(sums).all():
        raise FloatingPointError("score_pairs: non-finite log-probabilities")
    return PairScores(sums[0::2], sums[1::2], counts[0::2], counts[1::2])


def compare_scores(base: PairScores, candidate: PairScores, chosen_length: Sequence[float],
                   rejected_length: Sequence[float], bootstrap: int = 1000, seed: int = 0,
                   groups: Sequence[Any] | None = None) -> dict[str, float]:
    """Every view of the module docstring from two models' scores of the same pairs (see ``preference_accuracy``);
    ``groups`` (one id per pair) makes the intervals resample whole groups."""
    if not (np.array_equal(base.chosen_tokens, candidate.chosen_tokens)
            and np.array_equal(base.rejected_tokens, candidate.rejected_tokens)):
        raise ValueError("base and candidate scores must come from the same pairs and scoring window")
    reward_c = candidate.chosen_sum - base.chosen_sum
    reward_r = candidate.rejected_sum - base.rejected_sum
    norm_c, norm_r = reward_c / base.chosen_tokens, reward_r / base.rejected_tokens
    margins = {
        "implicit_accuracy": reward_c - reward_r,
        "implicit_norm_accuracy": norm_c - norm_r,
        "base_accuracy": base.chosen_mean - base.rejected_mean,
        "candidate_accuracy": candidate.chosen_mean - candidate.rejected_mean,
        "base_sum_accuracy": base.chosen_sum - base.rejected_sum,
        "candidate_sum_accuracy": candidate.chosen_sum - candidate.rejected_sum,
    }
    wins = {name: _wins(m, np.zeros_like(m)) for name, m in margins.items()}
    result = stratified_accuracies(
        wins, chosen_length, rejected_length,
        differences={"accuracy_difference": ("candidate_accuracy", "base_accuracy"),
                     "sum_accuracy_difference": ("candidate_sum_accuracy", "base_sum_accuracy")},
        prefers_longer=margins, bootstrap=bootstrap, seed=seed, groups=groups)

    weights = _resamples(group_codes(groups, base.chosen_sum.size), bootstrap, np.random.default_rng(seed))
    for name, values in (
        ("implicit_margin", reward_c - reward_r),
        ("base_logp_margin", margins["base_accuracy"]),
        ("candidate_logp_margin", margins["candidate_accuracy"]),
        # make run's "preference_margin": candidate minus base per-token margin, paired
        ("logp_margin_difference", margins["candidate_accuracy"] - margins["base_accuracy"]),
    ):
        low, high = _ci(values, weights)
        result[name], result[f"{name}_ci_low"], result[f"{name}_ci_high"] = float(values.mean()), low, high
    result["mean_reward_chosen"] = float(reward_c.mean())
    result["mean_reward_rejected"] = float(reward_r.mean())
    result["n_response_tokens"] = float(base.chosen_tokens.sum() + base.rejected_tokens.sum())
    for key in ("implicit_accuracy", "implicit_margin", "base_accuracy", "candidate_accuracy"):
        if not math.isfinite(result[key]):
            raise FloatingPointError(f"preference_accuracy: {key} is not finite ({result[key]})")
    return result


def preference_accuracy(
    base_model_path: str | Path,
    adapter_dir: str | Path,
    pairs: Sequence[dict[str, Any]],
    max_length: int = 256,
    batch_size: int = 4,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Implicit-reward accuracy and margin of base+adapter vs base on ``pairs``, both models' own accuracy, the length
    rule and the length strata (keys: module docstring).

    ``pairs``: ``{"prompt": [messages], "chosen": str | [assistant message], "rejected": ...}`` (the DPO dataset
    records work as they are). 95% intervals resample prompts with all their pairs (``bootstrap`` times; 0 gives NaN
    intervals); the difference candidate - base accuracy uses the same resamples for both (paired bootstrap).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not pairs:
        raise ValueError("preference_accuracy needs at least one pair")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json missing)")

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))  # one copy of the weights serves both models
    model.eval()
    candidate = score_pairs(model, tokenizer, pairs, max_length, batch_size)
    with model.disable_adapter():
        reference = score_pairs(model, tokenizer, pairs, max_length, batch_size)
    return compare_scores(reference, candidate, *answer_lengths(tokenizer, pairs), bootstrap=bootstrap, seed=seed,
                          groups=prompt_groups(pairs))

