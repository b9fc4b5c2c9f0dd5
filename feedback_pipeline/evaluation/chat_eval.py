"""Score chat answers under a base model and a LoRA-tuned candidate, without generation.

Generation-based evaluation on 2 CPU cores runs at ~15 tokens/s, too slow for a pipeline step; scoring existing
answers with one forward pass per batch is ~100x cheaper and directly measures what feedback fine-tuning should do:
make liked answers more likely and disliked answers less likely than under the base model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feedback_pipeline.analysis.stats import bootstrap_interval

Message = dict[str, str]


def _end_of_turn_ids(model: Any, tokenizer: Any) -> set[int]:
    # The template's end-of-turn token is the (or one of the) EOS ids: <|im_end|> for ChatML models (SmolLM2, Qwen),
    # <|eot_id|> for Llama 3 instruct models, which list it in generation_config rather than as tokenizer.eos_token.
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, Iterable):
        ids.update(int(i) for i in gen_eos)
    return ids


def _as_messages(prompt: Any) -> list[Message]:
    if isinstance(prompt, str):  # convenience: a bare string is one user turn
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"example prompt must be a non-empty list of chat messages, got {type(prompt).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _encode(tokenizer: Any, example: dict[str, Any], eot_ids: set[int], max_length: int) -> tuple[list[int], list[int]]:
    """(context ids, response ids) for one example, response = answer tokens + end-of-turn token."""
    prompt = _as_messages(example["prompt"])
    response = example["response"]
    if not isinstance(response, str):
        raise ValueError(f"example response must be a string, got {type(response).__name__}")
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": response}], add_generation_prompt=False, tokenize=False
    )
    # The templates already contain BOS and role markers; add_special_tokens would add a second BOS.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    # Score the response as it is tokenized in context (exactly what SFT trained on), not tokenized alone: the two
    # can differ at the boundary. The response starts where prompt and full conversation diverge.
    split = 0
    while split < min(len(prompt_ids), len(full_ids)) and prompt_ids[split] == full_ids[split]:
        split += 1
    context, response_ids = full_ids[:split], full_ids[split:]
    # Stop after the end-of-turn token: what follows (a newline in ChatML) is template filler, not the answer.
    for i, tok in enumerate(response_ids):
        if tok in eot_ids:
            response_ids = response_ids[: i + 1]
            break
    if not response_ids or not context:
        raise ValueError("could not locate the response tokens in the chat-templated conversation")
    # Keep the response, drop the oldest prompt tokens. A response longer than the window keeps its beginning and
    # one context token (the first response token needs something to be predicted from).
    if len(response_ids) >= max_length:
        response_ids = response_ids[: max_length - 1]
        context = context[-1:]
    else:
        context = context[-(max_length - len(response_ids)) :]
    return context, response_ids


def _response_token_batches(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], max_length: int,
                            batch_size: int):
    """Per batch: (per-row sums of response-token log-probs as float64, response token counts, the float64 tensor of
    the token log-probs of the batch's scored positions in row order)."""
    if max_length < 2:
        raise ValueError("max_length must be >= 2")
    eot_ids = _end_of_turn_ids(model, tokenizer)
    encoded = [_encode(tokenizer, ex, eot_ids, max_length) for ex in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no LoRA/attention dropout
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), max(1, batch_size)):
                chunk = encoded[start : start + max(1, batch_size)]
                width = max(len(c) + len(r) for c, r in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                for row, (context, response) in enumerate(chunk):
                    n = len(context) + len(response)
                    input_ids[row, :n] = torch.tensor(context + response)
                    attention[row, :n] = 1  # right padding: real tokens keep positions 0..n-1
                    labels[row, len(context) : n] = torch.tensor(response)
                logits = model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False
                ).logits
                shift_labels = labels[:, 1:].to(device)
                mask = shift_labels != -100
                # log_softmax only at the scored positions: the full (batch, seq, vocab) tensor is large on a CPU.
                picked = logits[:, :-1][mask].float()
                token_lp = torch.log_softmax(picked, dim=-1).gather(-1, shift_labels[mask].unsqueeze(-1)).squeeze(-1)
                token_lp = token_lp.double()
                per_row = torch.zeros(len(chunk), dtype=torch.float64, device=device)
                per_row.index_add_(0, mask.nonzero()[:, 0], token_lp)
                yield per_row.tolist(), mask.sum(dim=-1).tolist(), token_lp
    finally:
        model.train(was_training)


def response_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    max_length: int = 256,
    batch_size: int = 4,
) -> list[tuple[float, int]]:
    """For each ``{"prompt": [messages], "response": str}``: (sum of response-token log-probs, response token count).

    The prompt is chat-templated with the generation prompt; the response tokens include the end-of-turn token, so
    an answer that should have ended is scored as such. Prompts longer than ``max_length`` lose their oldest tokens.
    """
    results: list[tuple[float, int]] = []
    for sums, counts, _ in _response_token_batches(model, tokenizer, examples, max_length, batch_size):
        results.extend((float(s), int(c)) for s, c in zip(sums, counts))
    return results


def response_token_logprobs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    max_length: int = 256,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """For each example (as ``response_logprobs``): the log-prob of every response token, in order (float64)."""
    results: list[np.ndarray] = []
    for _, counts, token_lp in _response_token_batches(model, tokenizer, examples, max_length, batch_size):
        results.extend(np.split(token_lp.cpu().numpy(), np.cumsum(counts)[:-1]))
    return results


def _difference_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _mean_per_token(scores: list[tuple[float, int]]) -> list[float]:
    return [s / n for s, n in scores]


def compare_chat_models(
    base_model_path: str | Path,
    adapter_dir: str | Path,
    liked: Sequence[dict[str, Any]],
    disliked: Sequence[dict[str, Any]],
    max_length: int = 256,
    batch_size: int = 4,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Compare base vs base+adapter on liked/disliked answers.

    Returns base/candidate per-token NLL and perplexity on ``liked`` (pooled over tokens), the mean change of average
    per-token log-prob (candidate - base) on liked and on disliked answers, their difference ``preference_margin``
    (> 0: the candidate moved towards liked and away from disliked answers) with a bootstrap 95% interval, and counts.
    Without disliked examples the margin and its interval are NaN (undefined), never 0.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not liked:
        raise ValueError("compare_chat_models needs at least one liked example")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json missing)")

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    # One copy of the base weights serves both models: disable_adapter() gives the exact base outputs.
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()

    def score(examples: Sequence[dict[str, Any]]) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        candidate = response_logprobs(model, tokenizer, examples, max_length, batch_size)
        with model.disable_adapter():
            reference = response_logprobs(model, tokenizer, examples, max_length, batch_size)
        return candidate, reference

    cand_liked, base_liked = score(liked)
    cand_disliked, base_disliked = score(disliked) if disliked else ([], [])

    tokens = sum(n for _, n in base_liked)
    base_nll = -sum(s for s, _ in base_liked) / tokens
    cand_nll = -sum(s for s, _ in cand_liked) / tokens
    delta_liked = np.subtract(_mean_per_token(cand_liked), _mean_per_token(base_liked))
    delta_disliked = np.subtract(_mean_per_token(cand_disliked), _mean_per_token(base_disliked))

    nan = float("nan")
    margin = ci_low = ci_high = nan
    if len(delta_disliked):
        margin = float(delta_liked.mean() - delta_disliked.mean())
        # Liked and disliked are resampled independently: they are separate samples of feedback.
        ci_low, ci_high = bootstrap_interval([delta_liked, delta_disliked], _difference_of_means,
                                             n_resamples=bootstrap, seed=seed)

    result = {
        "base_nll": float(base_nll),
        "candidate_nll": float(cand_nll),
        "base_perplexity": float(math.exp(base_nll)),
        "candidate_perplexity": float(math.exp(cand_nll)),
        "liked_logprob_delta": float(delta_liked.mean()),
        "disliked_logprob_delta": float(delta_disliked.mean()) if len(delta_disliked) else nan,
        "preference_margin": margin,
        "preference_margin_ci_low": ci_low,
        "preference_margin_ci_high": ci_high,
        "n_liked": float(len(liked)),
        "n_disliked": float(len(disliked)),
        "n_liked_tokens": float(tokens),
    }
    for key in ("base_nll", "candidate_nll", "liked_logprob_delta"):
        if not math.isfinite(result[key]):
            raise FloatingPointError(f"compare_chat_models: {key} is not finite ({result[key]})")
    return result
