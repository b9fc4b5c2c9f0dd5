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

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from feedback_pipeline.training.checkpoints import (
    TRAINING_CONFIG_NAME, CheckpointOptions, CheckpointStory, check_resumable, checkpoint_arguments, resume_point,
)
from feedback_pipeline.training.config_file import JsonConfig, jsonl_records, run_cli

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ChatSFTConfig(JsonConfig, CheckpointOptions):
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
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names that get LoRA adapters (a list, or a comma-separated string in JSON)."},
    )
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
        if not self.lora_target_modules:
            raise ValueError("ChatSFTConfig.lora_target_modules is empty")
        validate_early_stopping(self)


def validate_early_stopping(cfg: Any) -> None:
    """Shared by the SFT and preference configs: early stopping needs evaluations and checkpoints that line up."""
    if cfg.early_stopping_patience is None:
        return
    name = type(cfg).__name__
    if cfg.early_stopping_patience < 1:
        raise ValueError(f"{name}.early_stopping_patience must be >= 1 (or None to train all max_steps)")
    if not cfg.eval_file:
        raise ValueError(f"{name}.early_stopping_patience needs an eval_file to compute eval_loss on")
    if cfg.save_steps % cfg.eval_steps:
        # transformers' load_best_model_at_end can only pick among evaluated checkpoints.
        raise ValueError(f"with early stopping, save_steps ({cfg.save_steps}) must be a multiple of eval_steps "
                         f"({cfg.eval_steps})")



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


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
# Callbacks
# ---------------------------------------------------------------------------------------------------------------------


class MlflowStepLogger(TrainerCallback):
    """Logs loss / learning_rate / grad_norm per logging step (and the final eval_loss) to the active MLflow run.

    Does nothing when no run is active. transformers' own MLflow integration is disabled (report_to=[]) because it
    starts and ends runs itself; here the caller owns the run, so this only writes metrics into the active one.
    """

    KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        metrics = {
            key: float(logs[key])
            for key in self.KEYS
            if isinstance(logs.get(key), (int, float)) and math.isfinite(float(logs[key]))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


class ProgressReporter(TrainerCallback):
    """Human-readable progress lines (step, loss, tokens/s, ETA) sent to ``log`` (a Dagster logger later)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self._start = 0.0
        self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last_time = time.perf_counter()
        self._last_tokens = 0
        self.log(f"SFT started: {state.max_steps} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        step, total = state.global_step, state.max_steps
        elapsed = now - self._start
        per_step = elapsed / max(step, 1)
        parts = [f"step {step}/{total}", f"loss {logs['loss']:.4f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)) and now > self._last_time:
            parts.append(f"{(tokens - self._last_tokens) / (now - self._last_time):.0f} tok/s")
            self._last_tokens = tokens
        self._last_time = now
        parts.append(f"{per_step:.1f} s/step")
        parts.append(f"ETA {per_step * max(total - step, 0):.0f} s")
        self.log(" | ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        self.log(f"SFT finished: {state.global_step} steps in {time.perf_counter() - self._start:.1f} s")


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
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig

    log = log or logger.info
    base = Path(cfg.base_model_path)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base_model_path {cfg.base_model_path!r} is not a local HF model folder")
    out = Path(cfg.output_dir)
    train_sha = _sha256(cfg.train_file)
    resume_from = resume_point(out, cfg.resume, log)
    if resume_from is not None:
        check_resumable(resume_from, {"train_file_sha256": train_sha, "base_model_path": str(base.resolve())},
                        cfg.max_steps)

    train_rows = load_chat_examples(cfg.train_file)
    if not train_rows:
        raise ValueError(f"train_file {cfg.train_file!r} holds no examples")
    if not sum(r["weight"] for r in train_rows) > 0:
        raise ValueError(f"train_file {cfg.train_file!r}: all example weights are 0")
    eval_rows = load_chat_examples(cfg.eval_file) if cfg.eval_file else None
    if eval_rows is not None and not eval_rows:
        raise ValueError(f"eval_file {cfg.eval_file!r} holds no examples")
    log(
        f"SFT on {len(train_rows)} examples"
        + (f" (+{len(eval_rows)} eval)" if eval_rows else "")
        + f", base {base}, {cfg.max_steps} steps x batch {cfg.per_device_train_batch_size}"
        f" x accum {cfg.gradient_accumulation_steps}"
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # fp32: trl would default to fp32 as well; bf16 on CPU is slow and lossy for a 135M model.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    early = cfg.early_stopping_patience is not None

    args = SFTConfig(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        # trl defaults bf16 and (gradient/activation) checkpointing to True: both wrong or slow on a CPU.
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5 name; `gradient_checkpointing` is its deprecated alias
        use_cpu=not torch.cuda.is_available(),
        report_to=[],  # the caller logs to MLflow through MlflowStepLogger, inside its own run
        # Periodic evaluations (batch means of the weighted loss) drive early stopping; the reported eval_loss is
        # computed once at the end, exactly weighted over the whole file.
        **checkpoint_arguments(cfg, evaluate=early),
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressReporter gives one line per logging step instead
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    )
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    def story(step: int) -> dict[str, Any]:
        return {"config": asdict(cfg), "steps": step, "base_model_path": str(base.resolve()),
                "train_file_sha256": train_sha, "n_train_examples": len(train_rows)}

    story_callback = CheckpointStory(story)
    trainer = WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MlflowStepLogger(), ProgressReporter(log), story_callback, *extra_callbacks]
        + ([EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold)] if early else []),
    )
    # disable_tqdm swaps the progress bar for PrinterCallback, which print()s raw dicts to stdout: not wanted.
    trainer.remove_callback(PrinterCallback)

    # trl drops examples whose completion is entirely cut off by max_length.
    if len(trainer.train_dataset) == 0:
        raise ValueError(f"no training example keeps a completion token within max_length={cfg.max_length}")
    if len(trainer.train_dataset) < len(train_rows):
        log(f"{len(train_rows) - len(trainer.train_dataset)} examples dropped: completion beyond max_length")

    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainable_params = sum(p.numel() for p in trainable.values())
    if trainable_params == 0:
        raise RuntimeError(f"no trainable parameters: none of {cfg.lora_target_modules} matched the model")

    if resume_from is not None:
        log(f"resuming from {resume_from}")
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    loss_history = [
        (int(entry["step"]), float(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry
    ]
    final_train_loss = loss_history[-1][1] if loss_history else float(train_output.training_loss)
    bad = [(s, v) for s, v in loss_history if not math.isfinite(v)]
    if bad or not math.isfinite(final_train_loss):
        raise FloatingPointError(f"training loss is not finite: {bad or final_train_loss}")

    current = dict(trainer.model.named_parameters())
    weights_changed = any(not torch.equal(current[n].detach(), before) for n, before in trainable.items())

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
    steps = int(trainer.state.global_step)
    runtime = float(train_output.metrics.get("train_runtime", float("nan")))
    # Written last: its presence means the adapter folder is complete.
    (out / TRAINING_CONFIG_NAME).write_text(
        json.dumps(
            {
                **story(steps),
                "n_train_examples": len(trainer.train_dataset),
                "resumed_from": str(resume_from) if resume_from else None,
                "final_train_loss": final_train_loss,
                "eval_loss": eval_loss,
                "train_runtime_s": runtime,
                "trainable_params": trainable_params,
            },
            indent=2,
        )
    )
    log(f"adapter saved to {out}")
    return ChatSFTResult(
        adapter_dir=str(out),
        steps=steps,
        loss_history=loss_history,
        final_train_loss=final_train_loss,
        eval_loss=eval_loss,
        train_runtime_s=runtime,
        trainable_params=trainable_params,
        weights_changed=weights_changed,
        stopped_early=steps < cfg.max_steps,
        resumed_from=str(resume_from) if resume_from else None,
        best_checkpoint=trainer.state.best_model_checkpoint if early else None,
    )


if __name__ == "__main__":
    run_cli(ChatSFTConfig, main, __doc__.splitlines()[0] if __doc__ else None)
