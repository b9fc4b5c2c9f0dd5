"""Where a preference-tuned candidate's taste for longer answers comes from: per-token views of its implicit reward.

The implicit reward of an answer is the sum over its tokens of log p_candidate - log p_base. Summed, it grows with
the number of tokens; averaged per token, it still favours longer answers if later tokens gain more than early ones.
From the per-token log-ratios of held-out pairs:

- ``position_profile``: mean log-ratio per token, by position in the answer (buckets of token indices). A profile
  that rises with position says a long answer collects more reward per token only because it has late tokens.
- ``matched_prefix_margins``: chosen minus rejected implicit reward, each summed over the first m = min(n_chosen,
  n_rejected) tokens only, so both answers are judged on as many tokens, at the same positions (what LD-DPO with
  ld_alpha = 0 and SamPO's down-sampling do in training). A candidate that wins only by length is at chance here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from feedback_pipeline.evaluation.chat_eval import response_token_logprobs
from feedback_pipeline.evaluation.preference_eval import in_pair_order

POSITION_EDGES = (0, 8, 16, 32, 64, 128)  # bucket b holds token indices [edge b, edge b+1); the last is open


def pair_token_logprobs(model: Any, tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int = 256,
                        batch_size: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per pair, the log-prob of every token of the chosen and of the rejected answer (``response_token_logprobs``)."""
    scored = in_pair_order(response_token_logprobs, model, tokenizer, pairs, max_length, batch_size)
    if not all(np.isfinite(a).all() for a in scored):
        raise FloatingPointError("pair_token_logprobs: non-finite log-probabilities")
    return scored[0::2], scored[1::2]


def log_ratios(candidate: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per answer, log p_candidate - log p_base of each token; the two must come from the same answers and window."""
    if len(candidate) != len(base):
        raise ValueError(f"log_ratios: {len(candidate)} candidate answers but {len(base)} base answers")
    out = []
    for i, (c, b) in enumerate(zip(candidate, base)):
        c, b = np.asarray(c, dtype=float), np.asarray(b, dtype=float)
        if c.shape != b.shape or c.ndim != 1:
            raise ValueError(f"log_ratios: answer {i} has {c.shape} candidate but {b.shape} base token scores")
        out.append(c - b)
    return out


def position_profile(ratios: Sequence[np.ndarray], edges: Sequence[int] = POSITION_EDGES) -> list[dict[str, float]]:
    """Mean per-token log-ratio of the tokens at positions [edges[k], edges[k+1]) (the last bucket is open), with the
    number of tokens and of answers reaching the bucket. Empty buckets give NaN means."""
    if list(edges) != sorted(set(edges)) or not edges or edges[0] != 0:
        raise ValueError("edges must be increasing and start at 0")
    bounds = list(edges) + [np.inf]
    sums, tokens, answers = np.zeros(len(edges)), np.zeros(len(edges)), np.zeros(len(edges))
    for r in ratios:
        pos = np.arange(r.size)
        bucket = np.searchsorted(edges, pos, side="right") - 1
        sums += np.bincount(bucket, weights=r, minlength=len(edges))
        counts = np.bincount(bucket, minlength=len(edges))
        tokens += counts
        answers += counts > 0
    return [{"from": float(bounds[k]), "to": float(bounds[k + 1]),
             "mean_log_ratio": float(sums[k] / tokens[k]) if tokens[k] else float("nan"),
             "tokens": float(tokens[k]), "answers": float(answers[k])} for k in range(len(edges))]


def matched_prefix_margins(chosen: Sequence[np.ndarray], rejected: Sequence[np.ndarray]) -> np.ndarray:
    """Per pair: the chosen answer's log-ratios summed over its first m tokens minus the rejected answer's over its
    first m, m = the shorter answer's token count (the scored window's)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"matched_prefix_margins: {len(chosen)} chosen but {len(rejected)} rejected answers")
    out = np.empty(len(chosen))
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        m = min(c.size, r.size)
        out[i] = float(c[:m].sum() - r[:m].sum())
    return out
