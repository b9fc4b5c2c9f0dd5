"""Scoring with a saved reward model, and its pairwise accuracy next to the "longer answer wins" rule.

A reward model is only worth serving if it knows more than answer length: on oasst1 sibling ranks the longer answer
is the preferred one about 65% of the time. So every accuracy here comes with the length rule's accuracy on the same
pairs, the paired difference (model - rule), and the model's accuracy split by whether the preferred answer is the
longer or the shorter one (on "shorter" pairs the rule is always wrong; a model that only learned length is too).

Ties count half (a constant scorer has accuracy exactly 0.5). Intervals are 95% percentile bootstraps over pairs
(``scipy.stats.bootstrap``; the difference resamples model and rule with the same pairs). Lengths are characters.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_RESAMPLES = 2000


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, 0.5 on ties, 0 otherwise."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def _mean_ci(values: np.ndarray, seed: int, other: np.ndarray | None = None) -> tuple[float | None, float | None]:
    """95% percentile bootstrap interval of mean(values) (or of mean(values - other), resampled in pairs); None
    where undefined (fewer than 2 pairs)."""
    from feedback_pipeline.analysis.stats import bootstrap_interval

    if values.size < 2:
        return None, None
    samples = [values] if other is None else [values, other]
    low, high = bootstrap_interval(samples, _mean_difference, paired=other is not None, n_resamples=N_RESAMPLES,
                                   seed=seed)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (None, None)


def _mean_difference(x: np.ndarray, y: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    return np.mean(x if y is None else x - y, axis=axis)


def _with_ci(out: dict[str, Any], key: str, values: np.ndarray, seed: int, other: np.ndarray | None = None) -> None:
    diff = values if other is None else values - other
    out[key] = float(diff.mean()) if diff.size else None
    out[f"{key}_ci_low"], out[f"{key}_ci_high"] = _mean_ci(values, seed, other) if diff.size else (None, None)


def pairwise_accuracy(scores_chosen: Sequence[float], scores_rejected: Sequence[float],
                      len_chosen: Sequence[float], len_rejected: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Model accuracy (chosen scored higher; ties half), the longer-answer rule on the same pairs, their paired
    difference, and the model's accuracy where the preferred answer is the longer / the shorter one; each with a 95%
    bootstrap interval (None where undefined: fewer than 2 pairs)."""
    sc, sr = np.asarray(scores_chosen, float), np.asarray(scores_rejected, float)
    lc, lr = np.asarray(len_chosen, float), np.asarray(len_rejected, float)
    if not (sc.shape == sr.shape == lc.shape == lr.shape) or sc.ndim != 1:
        raise ValueError("pairwise_accuracy needs four 1-D sequences of the same length")
    if sc.size == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    if not (np.isfinite(sc).all() and np.isfinite(sr).all()):
        raise FloatingPointError("pairwise_accuracy: non-finite scores")
    model, rule = _wins(sc, sr), _wins(lc, lr)
    out: dict[str, Any] = {"n_pairs": int(sc.size)}
    _with_ci(out, "accuracy", model, seed)
    _with_ci(out, "length_rule_accuracy", rule, seed)
    _with_ci(out, "difference_vs_length_rule", model, seed, other=rule)
    margin = sc - sr
    _with_ci(out, "mean_margin", margin, seed)
    for name, mask in (("chosen_longer", lc > lr), ("chosen_shorter", lc < lr)):
        out[f"n_{name}"] = int(mask.sum())
        _with_ci(out, f"accuracy_{name}", model[mask], seed)
        out[f"length_rule_accuracy_{name}"] = float(rule[mask].mean()) if mask.any() else None
    out["n_equal_length"] = int((lc == lr).sum())
    out["beats_length_rule"] = bool(out["difference_vs_length_rule_ci_low"] is not None
                                    and out["difference_vs_length_rule_ci_low"] > 0)
    return out


class RewardScorer:
    """A saved reward model folder (``feedback_pipeline.training.reward``) that scores (prompt, answer) pairs."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from feedback_pipeline.training.reward import REWARD_MODEL_META, PairEncoder

        self.model_dir = Path(model_dir)
        meta_file = self.model_dir / REWARD_MODEL_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{model_dir} is not a saved reward model ({REWARD_MODEL_META} missing)")
        self.meta = json.loads(meta_file.read_text())
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(str(self.model_dir), dtype=torch.float32)
        self.model.eval()
        self.encoder = PairEncoder(self.tokenizer, self.meta["kind"], int(self.meta["max_length"]))

    def score(self, prompts: Sequence[list[dict[str, str]] | str], answers: Sequence[str]) -> np.ndarray:
        """One reward per (prompt, answer); a prompt is a message list or a plain user string."""
        from feedback_pipeline.training.reward import prompt_messages, score_ids

        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        sequences = [self.encoder(prompt_messages(p), str(a))[0] for p, a in zip(prompts, answers)]
        return np.asarray(score_ids(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size), float)


def read_pairs_file(path: str | Path) -> tuple[list[dict[str, Any]], Counter]:
    """Valid pairs of a JSONL file in trl's (conversational or plain) preference format, and why others were skipped."""
    from feedback_pipeline.training.reward import answer_text, prompt_messages

    pairs, skipped = [], Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped["invalid_json"] += 1
                continue
            if not isinstance(record, dict):
                skipped["not_an_object"] += 1
                continue
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
            if missing:
                skipped[f"missing_{missing[0]}"] += 1
                continue
            try:
                prompt = prompt_messages(record["prompt"])
            except ValueError:
                skipped["bad_prompt"] += 1
                continue
            try:
                chosen, rejected = answer_text(record["chosen"]), answer_text(record["rejected"])
            except ValueError:
                skipped["bad_answer"] += 1
                continue
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs, skipped


def score_pairs_file(model_ref: str | Path, path: str | Path, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Pairwise accuracy of a reward model (folder, ``NAME@ALIAS``, ``NAME/VERSION`` or ``models:/...``) on a JSONL
    of preference pairs: :func:`pairwise_accuracy` plus ``n_pairs``, ``n_skipped`` and ``skipped`` (reason -> count).
    JSON-serialisable (undefined values are None)."""
    from feedback_pipeline.training.reward import resolve_reward_model

    pairs, skipped = read_pairs_file(path)
    if not pairs:
        raise ValueError(f"{path}: no valid preference pair (skipped: {dict(skipped)})")
    scorer = RewardScorer(resolve_reward_model(model_ref), batch_size=batch_size)
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer.score(prompts, [p["chosen"] for p in pairs])
    rejected = scorer.score(prompts, [p["rejected"] for p in pairs])
    result = pairwise_accuracy(chosen, rejected, [len(p["chosen"]) for p in pairs],
                               [len(p["rejected"]) for p in pairs], seed=seed)
    result.update({"n_skipped": int(sum(skipped.values())), "skipped": dict(sorted(skipped.items())),
                   "model_ref": str(model_ref), "file": str(path)})
    return result
