"""Generated answers for the release gate: one base model, several named LoRA adapters, greedy batched decoding.

    gen = ChatGenerator("data/models/base", {"champion": None, "challenger": "runs/7/adapter"})
    answers = gen.generate("challenger", [[{"role": "user", "content": "How do I reset my password?"}]])

The base weights are loaded once; each adapter is a named PEFT adapter on the same PeftModel and ``None`` means the
bare base (``disable_adapter()``), so the champion "version 0" and every tuned version share one copy in memory.
Decoding is greedy (deterministic) with left padding, so a batch of prompts gives the same answers as one at a time.
Measured on the shared 2-core CPU, SmolLM2-135M fp32 + LoRA, 1 torch thread, 16 OASST1 prompts (33-84 tokens), 48 new
tokens each: batch 1 12 answer tokens/s, batch 8 40 tokens/s (3.3x; identical answers). Batching gains less when
answers end early, since finished rows keep decoding padding until their batch is done. ``last_stats`` records it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feedback_pipeline.analysis.error_types import is_refusal, repetition_ratio
from feedback_pipeline.evaluation.chat_eval import _as_messages, _end_of_turn_ids

# Share of repeated 4-grams/lines above which an answer counts as repetitive. The same default as the error report
# (error_types.classify_errors), so the gate and the report agree; on human OASST1 answers (1,243 English
# assistant messages) 1.1% exceed it (lists, poems), 1.9% exceed 0.2, while a greedy loop scores above 0.5.
REPETITION_THRESHOLD = 0.3


@dataclass(frozen=True)
class GenerationStats:
    """What the last ``generate`` call did: answer tokens are counted up to (not including) the end-of-turn token."""

    prompts: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


class ChatGenerator:
    """A base causal chat model with named LoRA adapters (``None`` = the bare base), for greedy answer generation."""

    def __init__(self, base_model_path: str | Path, adapters: Mapping[str, str | Path | None],
                 max_prompt_tokens: int = 384) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not adapters:
            raise ValueError("ChatGenerator needs at least one named model (an adapter path, or None for the base)")
        if max_prompt_tokens < 8:
            raise ValueError(f"max_prompt_tokens must be >= 8, got {max_prompt_tokens}")
        for name, path in adapters.items():
            if not name or not isinstance(name, str) or "." in name:
                raise ValueError(f"adapter names must be non-empty strings without '.', got {name!r}")
            if path is not None and not (Path(path) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter {name!r}: {path} holds no PEFT adapter (adapter_config.json missing)")
        self.adapters = dict(adapters)
        self.max_prompt_tokens = max_prompt_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
        self.tokenizer.padding_side = "left"  # generation appends on the right: every row must end at its prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=torch.float32)
        paths = [(name, str(path)) for name, path in adapters.items() if path is not None]
        if paths:
            model = PeftModel.from_pretrained(model, paths[0][1], adapter_name=paths[0][0])
            for name, path in paths[1:]:
                model.load_adapter(path, adapter_name=name)
        self.model = model.eval()
        self.eot_ids = sorted(_end_of_turn_ids(self.model, self.tokenizer))
        self.last_stats: GenerationStats | None = None

    def encode(self, prompts: Sequence[Any]) -> list[list[int]]:
        """Token ids of each chat-templated prompt (with the generation prompt), fitted into ``max_prompt_tokens``:
        oldest messages go first, a last turn that alone is too long keeps its end."""
        from feedback_pipeline.training.chat_preference import fit_prompt

        ids = []
        for prompt in prompts:
            messages = fit_prompt(self.tokenizer, _as_messages(prompt), self.max_prompt_tokens)
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            # The template already holds the special tokens it needs; add_special_tokens would add a second BOS.
            ids.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids

    def use(self, name: str) -> contextlib.AbstractContextManager:
        """Make model ``name`` the active one for the block (also for scoring with the loaded ``model``)."""
        if name not in self.adapters:
            raise KeyError(f"unknown model {name!r}; loaded: {sorted(self.adapters)}")
        if self.adapters[name] is None:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def generate(self, name: str, prompts: Sequence[Any], max_new_tokens: int = 48, batch_size: int = 8) -> list[str]:
        """Greedy answers of model ``name`` to each prompt (a list of chat messages), in input order, decoded without
        special tokens and stripped. Stops at the end-of-turn token or after ``max_new_tokens``."""
        from transformers import GenerationConfig

        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        encoded = self.encode(prompts)
        pad_id = int(self.tokenizer.pad_token_id)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eot_ids, pad_token_id=pad_id)
        # Similar lengths share a batch (less padding); the order is a pure function of the input, so the same
        # prompts always form the same batches. Answers are returned in input order.
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        answers: list[str] = [""] * len(encoded)
        new_tokens, started = 0, time.perf_counter()
        with self.use(name), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    attention[r, width - len(encoded[i]):] = 1
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
                for r, i in enumerate(rows):
                    generated = out[r, width:].tolist()
                    stop = next((k for k, tok in enumerate(generated) if tok in self.eot_ids), len(generated))
                    new_tokens += stop
                    answers[i] = self.tokenizer.decode(generated[:stop], skip_special_tokens=True).strip()
        self.last_stats = GenerationStats(len(encoded), new_tokens, time.perf_counter() - started)
        return answers


# ---------------------------------------------------------------------------------------------------------------------
# Guardrails: cheap properties of the answers themselves, next to the reward model's score
# ---------------------------------------------------------------------------------------------------------------------


def guardrail_arrays(answers: Sequence[str], tokenizer: Any = None,
                     repetition_threshold: float = REPETITION_THRESHOLD) -> dict[str, np.ndarray]:
    """Per-answer values, aligned with ``answers`` (for paired intervals between two models on the same prompts):
    ``words``, ``tokens`` (with a tokenizer), ``refusal``, ``repetitive``, ``empty`` (0/1) and ``repetition_ratio``."""
    texts = [str(a) for a in answers]
    arrays = {
        "words": np.array([len(t.split()) for t in texts], dtype=float),
        "refusal": np.array([is_refusal(t) for t in texts], dtype=float),
        "repetition_ratio": np.array([repetition_ratio(t) for t in texts], dtype=float),
        "empty": np.array([not t.strip() for t in texts], dtype=float),
    }
    arrays["repetitive"] = (arrays["repetition_ratio"] > repetition_threshold).astype(float)
    if tokenizer is not None:
        arrays["tokens"] = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts],
                                    dtype=float)
    return arrays


def guardrail_metrics(answers: Sequence[str], tokenizer: Any = None,
                      repetition_threshold: float = REPETITION_THRESHOLD) -> dict[str, float]:
    """Mean and median length (words; tokens with a tokenizer), refusal / repetition / empty-answer rates, count."""
    if not answers:
        raise ValueError("guardrail_metrics needs at least one answer")
    arrays = guardrail_arrays(answers, tokenizer, repetition_threshold)
    metrics = {"n_answers": float(len(answers))}
    for unit in ("words", "tokens"):
        if unit in arrays:
            metrics[f"mean_{unit}"] = float(arrays[unit].mean())
            metrics[f"median_{unit}"] = float(statistics.median(arrays[unit].tolist()))
    for key in ("refusal", "repetitive", "empty"):
        metrics[f"{'repetition' if key == 'repetitive' else key}_rate"] = float(arrays[key].mean())
    return metrics
