"""python -m feedback_pipeline.training.chat_sft --config cfg.json

LoRA supervised fine-tuning of a causal chat model on weighted feedback examples (config JSON keys are the fields
of ``ChatSFTConfig``; the result is printed as JSON on stdout, progress goes to the log on stderr).

Input: JSONL, one example per line::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], "weight": 1.0}

The last message is the assistant answer to learn; the messages before it are the prompt. Examples are handed to
trl in its conversational prompt/completion format, so the loss covers the completion tokens only.

trl's SFTTrainer has no per-example weights (an extra ``weight`` column is silently dropped), so
``WeightedSFTTrainer`` keeps that column through tokenization and collation and minimises

    sum_i w_i * nll_i / sum_i w_i,   nll_i = mean NLL over the completion tokens of example i

i.e. every example counts by its weight, whatever its length (unlike trl's default token-level mean).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from feedback_pipeline.training.checkpoints import (
    CheckpointOptions, CheckpointStory, check_resumable, checkpoint_arguments, resume_point,
)
from feedback_pipeline.training.common import (
    LoraOptions, MlflowStepLogger, ProgressReporter, TrainableWeights, cpu_training_arguments, load_causal_lm,
    load_tokenizer, lora_config, quiet, read_splits, require_model_folder, run_cli, sha256_file, train,
    validate_early_stopping, write_manifest,
)
from feedback_pipeline.training.config_file import JsonConfig, jsonl_records

# MlflowStepLogger, ProgressReporter and validate_early_stopping live in feedback_pipeline.training.common; they are
# still importable from here for modules not moved yet (embedder.py imports MlflowStepLogger).
__all__ = ["ChatSFTConfig", "ChatSFTResult", "MlflowStepLogger", "ProgressReporter", "WeightedSFTTrainer",
           "example_nll", "load_chat_examples", "main", "validate_early_stopping", "weighted_example_nll"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ChatSFTConfig(JsonConfig, CheckpointOptions, LoraOptions):
    base_model_path: str = field(
        metadata={"help": "Local Hugging Face causal-LM folder (config.json, weights, tokenizer)."}
    )
    train_file: str = field(
        metadata={"help": "JSONL of {'messages': [...], 'weight': float}; the last message is the assistant answer."}
    )
    output_dir: str = field(
        metadata={"help": "Where the LoRA adapter, tokenizer and training_config.json are written."}
    )
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Optional JSONL in the train format; its weighted NLL is reported as eval_loss."},
    )
    max_steps: int = field(default=12, metadata={"help": "Optimizer steps (the data is cycled if it is shorter)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Examples per forward/backward pass."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    max_length: int = field(
        default=256, metadata={"help": "Max tokens of prompt+completion; longer sequences are cut at the end."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for LoRA init, dropout and data order."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss (progress, MLflow) every N optimizer steps."})
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch examples of similar length (less padding: 1.12x real tokens/s measured in "
                          "bench/training_throughput.py). Packing is not offered: it would drop the weights."},
    )

    def __post_init__(self) -> None:
        self.normalise_common(("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r",
                               "max_length", "logging_steps", "eval_steps", "save_steps", "save_total_limit"))
        validate_early_stopping(self)


@dataclass(frozen=True)
class ChatSFTResult:
    adapter_dir: str
    steps: int
    loss_history: list[tuple[int, float]]  # (global step, training loss logged at that step)
    final_train_loss: float  # loss logged at the last logging step
    eval_loss: float | None  # weighted mean NLL on eval_file, None when there is no eval file
    train_runtime_s: float
    trainable_params: int
    weights_changed: bool  # any LoRA parameter differs from its initial value after training
    stopped_early: bool = False  # early stopping ended the run before max_steps
    resumed_from: str | None = None  # the checkpoint this run continued from
    best_checkpoint: str | None = None  # with early stopping: the checkpoint whose adapter was kept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Loss math (pure functions, tested by hand-computed values)
# ---------------------------------------------------------------------------------------------------------------------


def example_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token NLL per example and the number of scored tokens per example.

    ``logits`` (B, T, V), ``labels`` (B, T) with -100 on ignored positions. Position t predicts label t+1, as in every
    causal LM. An example without scored tokens gets NLL 0 and count 0 (its weight must then be ignored).
    """
    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE_INDEX
    # log_softmax only at the scored (completion) positions, not over the whole (batch, seq, vocab) block: prompts
    # are most of the tokens. fp32, since a log_softmax over a 49k vocabulary in bf16 loses precision.
    picked = logits[:, :-1, :][mask].float()
    token_logprobs = torch.log_softmax(picked, dim=-1).gather(-1, shift_labels[mask].unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=token_logprobs.dtype, device=logits.device).index_add(
        0, rows, token_logprobs
    )
    counts = mask.sum(dim=-1)
    nll = -sums / counts.clamp(min=1)
    return nll, counts


def _effective_weights(weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # Examples whose completion was entirely truncated away have no loss to contribute, so their weight must not
    # dilute the others through the denominator.
    return weights.to(torch.float32) * (counts > 0).to(torch.float32)


def weighted_example_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * nll_i / sum_i w_i, where nll_i is the mean NLL over the non-ignored (shifted) tokens of example i."""
    nll, counts = example_nll(logits, labels)
    w = _effective_weights(weights.to(nll.device), counts)
    total = w.sum()
    if not total > 0:
        raise ValueError("weighted_example_nll: the batch has no scored tokens with positive weight")
    return (w * nll).sum() / total


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_chat_examples(path: str | Path) -> list[dict[str, Any]]:
    """Read the JSONL into trl's conversational prompt/completion rows plus a ``weight`` column."""
    rows: list[dict[str, Any]] = []
    for where, record in jsonl_records(path):
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise ValueError(f"{where}: 'messages' must be a list of at least a prompt message and an answer")
        clean = []
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(
                m.get("content"), str
            ):
                raise ValueError(f"{where}: each message needs role system/user/assistant and a string content")
            clean.append({"role": m["role"], "content": m["content"]})
        if clean[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant answer to learn")
        weight = float(record.get("weight", 1.0))
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}: weight must be a finite number >= 0, got {record.get('weight')!r}")
        rows.append({"prompt": clean[:-1], "completion": clean[-1:], "weight": weight})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class _WeightCollator:
    """Wraps trl's collator (which only emits input_ids/attention_mask/labels) and adds a float ``weight``."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        batch["weight"] = torch.tensor([float(ex["weight"]) for ex in examples], dtype=torch.float32)
        return batch


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the weighted mean over examples of each example's mean completion-token NLL.

    The train/eval datasets need a numeric ``weight`` column. Gradient accumulation is exact: the denominator is
    the weight total of all micro-batches of the optimizer step, not of each micro-batch.
    """

    # Our training loss is already divided by the accumulation group's weight total (see get_batch_samples),
    # so transformers must not divide it again by the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any):
        train_dataset = kwargs.get("train_dataset")
        if train_dataset is None or "weight" not in train_dataset.column_names:
            raise ValueError("WeightedSFTTrainer needs a train_dataset with a 'weight' column")
        super().__init__(*args, **kwargs)
        self.data_collator = _WeightCollator(self.data_collator)
        self._accum_weight_total: float | None = None
        self._tokens_seen = 0

    def _set_signature_columns_if_needed(self) -> None:
        # Trainer drops every column the model's forward does not accept; keep `weight` alive until the collator.
        super()._set_signature_columns_if_needed()
        if "weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "weight"]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Called once per optimizer step with all its micro-batches: the place to total their weights.
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        total = 0.0
        for batch in batch_samples:
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=-1)
            total += float(_effective_weights(batch["weight"], counts).sum())
        self._accum_weight_total = total
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weight")
        labels = inputs.pop("labels")
        inputs["use_cache"] = False
        # Plain forward, not trl's fused LM head: full logits, so the loss is exactly `weighted_example_nll`
        # (on CPU the fused head scores every position anyway, so it would save memory, not time).
        outputs = model(**inputs)
        nll, counts = example_nll(outputs.logits, labels)
        w = _effective_weights(weights.to(nll.device), counts)
        if model.training and self._accum_weight_total is not None:
            denominator = self._accum_weight_total
        else:
            denominator = float(w.sum())
        # An all-zero-weight group gives a zero loss that still has a graph (backward must not fail).
        loss = (w * nll).sum() / max(denominator, 1e-12)

        if model.training:
            # Feed trl's metric dict so its `log` adds `num_tokens` (used for the tokens/s progress line).
            self._tokens_seen += int(inputs["attention_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self._tokens_seen]
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def _weighted_eval_loss(trainer, dataset) -> float:
    """Exact weighted mean NLL over the eval set (Trainer.evaluate would average per-batch means instead)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    numerator, denominator = 0.0, 0.0
    try:
        with torch.no_grad():
            for batch in trainer.get_eval_dataloader(dataset):
                batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                weights, labels = batch.pop("weight"), batch.pop("labels")
                nll, counts = example_nll(model(**batch, use_cache=False).logits, labels)
                w = _effective_weights(weights, counts)
                numerator += float((w * nll).sum())
                denominator += float(w.sum())
    finally:
        model.train(was_training)
    if denominator <= 0:
        raise ValueError("eval set has no scored tokens with positive weight")
    return numerator / denominator


def main(
    cfg: ChatSFTConfig,
    extra_callbacks: Sequence[TrainerCallback] = (),
    log: Callable[[str], None] | None = None,
) -> ChatSFTResult:
    """Train a LoRA adapter on ``cfg.train_file`` and save it to ``cfg.output_dir``. Raises on empty data or NaN."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig

    log = log or logger.info
    base = require_model_folder(cfg.base_model_path)
    out = Path(cfg.output_dir)
    train_sha = sha256_file(cfg.train_file)
    resume_from = resume_point(out, cfg.resume, log)
    if resume_from is not None:
        check_resumable(resume_from, {"train_file_sha256": train_sha, "base_model_path": str(base.resolve())},
                        cfg.max_steps)

    train_rows, eval_rows = read_splits(load_chat_examples, cfg.train_file, cfg.eval_file)
    if not sum(r["weight"] for r in train_rows) > 0:
        raise ValueError(f"train_file {cfg.train_file!r}: all example weights are 0")
    log(f"SFT on {len(train_rows)} examples" + (f" (+{len(eval_rows)} eval)" if eval_rows else "")
        + f", base {base}, {cfg.max_steps} steps x batch {cfg.per_device_train_batch_size}"
          f" x accum {cfg.gradient_accumulation_steps}")

    tokenizer = load_tokenizer(base)
    early = cfg.early_stopping_patience is not None
    args = SFTConfig(**cpu_training_arguments(
        cfg, out,
        # Periodic evaluations (batch means of the weighted loss) drive early stopping; the reported eval_loss is
        # computed once at the end, exactly weighted over the whole file.
        **checkpoint_arguments(cfg, evaluate=early),
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    ))

    def story(step: int) -> dict[str, Any]:
        return {"config": asdict(cfg), "steps": step, "base_model_path": str(base.resolve()),
                "train_file_sha256": train_sha, "n_train_examples": len(train_rows)}

    callbacks = [MlflowStepLogger(), ProgressReporter(log, "SFT"), CheckpointStory(story), *extra_callbacks]
    if early:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold))
    trainer = quiet(WeightedSFTTrainer(
        model=load_causal_lm(base), args=args, processing_class=tokenizer, peft_config=lora_config(cfg),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, callbacks=callbacks,
    ))
    # trl drops examples whose completion is entirely cut off by max_length.
    if len(trainer.train_dataset) == 0:
        raise ValueError(f"no training example keeps a completion token within max_length={cfg.max_length}")
    if len(trainer.train_dataset) < len(train_rows):
        log(f"{len(train_rows) - len(trainer.train_dataset)} examples dropped: completion beyond max_length")

    weights = TrainableWeights(trainer.model, f"none of {cfg.lora_target_modules} matched the model")
    outcome = train(trainer, weights, resume_from, log)

    eval_loss = None
    if trainer.eval_dataset is not None:
        eval_loss = _weighted_eval_loss(trainer, trainer.eval_dataset)
        if not math.isfinite(eval_loss):
            raise FloatingPointError(f"eval loss is not finite: {eval_loss}")
        log(f"eval weighted NLL {eval_loss:.4f}")
        trainer.log({"eval_loss": eval_loss})  # reaches MlflowStepLogger & co. like a training log line

    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out)  # PeftModel: adapter_config.json + adapter_model.safetensors only
    tokenizer.save_pretrained(out)
    write_manifest(out, {**story(outcome.steps), "n_train_examples": len(trainer.train_dataset),
                         "resumed_from": str(resume_from) if resume_from else None,
                         "final_train_loss": outcome.final_train_loss, "eval_loss": eval_loss,
                         "train_runtime_s": outcome.train_runtime_s, "trainable_params": outcome.trainable_params})
    log(f"adapter saved to {out}")
    return ChatSFTResult(
        adapter_dir=str(out), steps=outcome.steps, loss_history=outcome.loss_history,
        final_train_loss=outcome.final_train_loss, eval_loss=eval_loss, train_runtime_s=outcome.train_runtime_s,
        trainable_params=outcome.trainable_params, weights_changed=outcome.weights_changed,
        stopped_early=outcome.steps < cfg.max_steps, resumed_from=str(resume_from) if resume_from else None,
        best_checkpoint=trainer.state.best_model_checkpoint if early else None,
    )


if __name__ == "__main__":
    run_cli(ChatSFTConfig, main, __doc__.splitlines()[0] if __doc__ else None)
