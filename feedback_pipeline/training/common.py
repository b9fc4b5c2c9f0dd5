"""What the trainers share, so that each trainer's ``main`` reads like a trl example script.

- config pieces: ``LoraOptions`` (rank, alpha, dropout, target modules) next to ``checkpoints.CheckpointOptions``,
  ``validate_early_stopping``, and ``lora_config`` / ``cpu_training_arguments`` that turn a config into peft's
  ``LoraConfig`` and the ``TrainingArguments`` keywords every trainer sets the same way on a CPU;
- loaders and guards: ``require_model_folder``, ``load_tokenizer``, ``load_causal_lm``, ``read_splits`` (train and
  optional eval file, neither empty), ``TrainableWeights`` (there is something to train; did it change?);
- callbacks: ``MlflowStepLogger`` (metrics into the caller's MLflow run), ``ProgressReporter`` (one line per logging
  step), ``quiet`` (no raw dicts printed to stdout);
- running: ``train`` (resume, train, losses finite, weights changed) returning a ``TrainOutcome``;
- the run manifest: ``sha256_file``, ``write_manifest`` (``training_config.json``, written last) and
  ``publish_folder`` (a folder written beside its target and renamed into place);
- the command line: ``run_cli`` (trl's ``TrlParser``, an ``HfArgumentParser``: ``--config cfg.json`` and/or one
  flag per config field).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState

from feedback_pipeline.training.checkpoints import TRAINING_CONFIG_NAME

logger = logging.getLogger(__name__)

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------------------
# Config pieces
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LoraOptions:
    """LoRA fields shared by the trainers' configs (keyword-only, so they can follow the configs' required fields).
    A config overrides a default by redefining the field with ``kw_only=True``."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names that get LoRA adapters (a list, or a comma-separated string in JSON)."},
    )


def lora_config(cfg: LoraOptions, task_type: str = "CAUSAL_LM", **extra: Any):
    """peft's LoraConfig from a config's LoRA fields (no bias training)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), bias="none", task_type=task_type, **extra)


def validate_early_stopping(cfg: Any) -> None:
    """Early stopping needs evaluations and checkpoints that line up (configs with ``CheckpointOptions``)."""
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


def cpu_training_arguments(cfg: Any, output_dir: str | Path, **extra: Any) -> dict[str, Any]:
    """The TrainingArguments keywords every trainer sets alike, from the config's step, batch, rate, length, seed and
    logging fields; ``extra`` adds or replaces keywords (checkpoints, trainer-specific ones)."""
    batch = cfg.per_device_train_batch_size
    args = dict(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch,
        # KTO pairs each completion with its batch neighbour's prompt for the KL term: same batch size in eval.
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=getattr(cfg, "gradient_accumulation_steps", 1),
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        # trl defaults bf16 and activation (gradient) checkpointing to True: both wrong or slow on a CPU.
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5 name; `gradient_checkpointing` is its deprecated alias
        use_cpu=not torch.cuda.is_available(),
        report_to=[],  # the caller owns the MLflow run; MlflowStepLogger writes into it
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressReporter gives one line per logging step instead
    )
    args.update(extra)
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Loaders and guards
# ---------------------------------------------------------------------------------------------------------------------


def require_model_folder(path: str | Path, what: str = "base_model_path") -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a local HF model folder")
    return folder


def load_tokenizer(folder: str | Path):
    """The folder's tokenizer, padding with EOS when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: str | Path):
    """fp32: bf16 on a CPU is slow and lossy for a small model (trl would pick fp32 as well)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)


def read_splits(load: Callable[[str], list], train_file: str, eval_file: str | None,
                noun: str = "examples") -> tuple[list, list | None]:
    """(train rows, eval rows or None without an eval file); an empty train or given eval file raises."""
    train = load(train_file)
    if not train:
        raise ValueError(f"train_file {train_file!r} holds no {noun}")
    evaluation = load(eval_file) if eval_file else None
    if evaluation is not None and not evaluation:
        raise ValueError(f"eval_file {eval_file!r} holds no {noun}")
    return train, evaluation


class TrainableWeights:
    """A copy of the trainable parameters before training: something must be trainable, and afterwards ``changed``
    says whether any of them moved."""

    def __init__(self, model: Any, what: str):
        self.initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.count = sum(p.numel() for p in self.initial.values())
        if self.count == 0:
            raise RuntimeError(f"no trainable parameters: {what}")

    def changed(self, model: Any) -> bool:
        current = dict(model.named_parameters())
        return any(not torch.equal(current[n].detach(), before) for n, before in self.initial.items())


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------------------------

# trl's preference metrics (implicit rewards, KTO's KL estimate), logged besides the losses by the preference trainer.
PREFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl",
                      "eval_rewards/margins", "eval_rewards/accuracies", "eval_kl")


class MlflowStepLogger(TrainerCallback):
    """Logs loss / learning_rate / grad_norm per logging step (and eval_loss) to the active MLflow run, plus ``extra``
    keys of the trainer's logs.

    Does nothing when no run is active. transformers' own MLflow integration is disabled (report_to=[]) because it
    starts and ends runs itself; here the caller owns the run, so this only writes metrics into the active one.
    """

    KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")

    def __init__(self, extra: Sequence[str] = ()):
        self.keys = (*self.KEYS, *extra)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        metrics = {
            key: float(logs[key])
            for key in self.keys
            if isinstance(logs.get(key), (int, float)) and math.isfinite(float(logs[key]))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


class ProgressReporter(TrainerCallback):
    """Human-readable progress lines sent to ``log`` (a Dagster logger later): "<name> started: N steps", then per
    logging step the step, loss, learning rate, ``extra`` metrics, tokens/s, s/step and ETA; evaluations and resumes
    get their own line."""

    def __init__(self, log: Log, name: str = "SFT", extra: Sequence[str] = ()):
        self.log, self.name, self.extra = log, name, tuple(extra)
        self._start = 0.0
        self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last_time = time.perf_counter()
        self._last_tokens = 0
        self.log(f"{self.name} started: {state.max_steps} steps")
        if state.global_step:
            self.log(f"{self.name} resumed at step {state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "eval_loss" in logs:
            self.log(f"step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")
        if "loss" not in logs:
            return
        now = time.perf_counter()
        step, total = state.global_step, state.max_steps
        per_step = (now - self._start) / max(step, 1)
        parts = [f"step {step}/{total}", f"loss {logs['loss']:.4f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        parts += [f"{key} {logs[key]:.3f}" for key in self.extra if isinstance(logs.get(key), (int, float))]
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)) and now > self._last_time:
            parts.append(f"{(tokens - self._last_tokens) / (now - self._last_time):.0f} tok/s")
            self._last_tokens = tokens
        self._last_time = now
        parts.append(f"{per_step:.1f} s/step")
        parts.append(f"ETA {per_step * max(total - step, 0):.0f} s")
        self.log(" | ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        self.log(f"{self.name} finished: {state.global_step} steps in {time.perf_counter() - self._start:.1f} s")


def quiet(trainer: Any) -> Any:
    """With disable_tqdm, transformers adds PrinterCallback, which print()s raw log dicts to stdout: removed."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


# ---------------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------------


def logged(trainer: Any, key: str) -> list[tuple[int, float]]:
    """(global step, value) of every log entry of the trainer's history that holds ``key``."""
    return [(int(e["step"]), float(e[key])) for e in trainer.state.log_history if key in e]


@dataclass(frozen=True)
class TrainOutcome:
    """What ``train`` measured: the losses (checked finite), steps, runtime and whether the weights moved."""

    loss_history: list[tuple[int, float]]  # (global step, training loss), including steps before a resume
    eval_history: list[tuple[int, float]]  # (global step, eval_loss) of evaluations during training
    final_train_loss: float  # loss logged at the last logging step
    steps: int  # global step reached
    train_runtime_s: float  # this run only
    trainable_params: int
    weights_changed: bool


def _finished_state(trainer: Any, checkpoint: Path) -> TrainerState | None:
    """The checkpoint's trainer state when it reached the run's planned end (max_steps, else the epochs)."""
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    args = trainer.args
    done = state.global_step >= args.max_steps if args.max_steps > 0 else (state.epoch or 0) >= args.num_train_epochs
    return state if done else None


def train(trainer: Any, weights: TrainableWeights, resume_from: Path | None = None,
          log: Log | None = None) -> TrainOutcome:
    """``trainer.train()`` (from ``resume_from`` when given); raises when a logged loss is not finite.

    A checkpoint that already reached the planned end (a retried run after the last checkpoint was written) is
    loaded and not trained further: ``Trainer.train`` would run one more step at the finished schedule's learning
    rate of 0 and count it."""
    say = log or logger.info
    runtime = training_loss = float("nan")
    finished = _finished_state(trainer, resume_from) if resume_from is not None else None
    if finished is not None:
        say(f"{resume_from} already finished at step {finished.global_step}: loading it, nothing left to train")
        trainer._load_from_checkpoint(str(resume_from))  # what train() does on resume; weights only
        trainer.state = finished
        runtime = 0.0
    else:
        if resume_from is not None:
            say(f"resuming from {resume_from}")
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        runtime = float(output.metrics.get("train_runtime", float("nan")))
        training_loss = float(output.training_loss)
    losses, evals = logged(trainer, "loss"), logged(trainer, "eval_loss")
    final = losses[-1][1] if losses else training_loss
    bad = [(s, v) for s, v in losses + evals if not math.isfinite(v)]
    if bad or not math.isfinite(final):
        raise FloatingPointError(f"loss is not finite: {bad or final}")
    return TrainOutcome(loss_history=losses, eval_history=evals, final_train_loss=final,
                        steps=int(trainer.state.global_step), train_runtime_s=runtime,
                        trainable_params=weights.count, weights_changed=weights.changed(trainer.model))


# ---------------------------------------------------------------------------------------------------------------------
# The run manifest
# ---------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprints(cfg: Any) -> dict[str, str | None]:
    """SHA-256 of the config's train_file and eval_file (None without one): what a resume must match."""
    eval_file = getattr(cfg, "eval_file", None)
    return {"train_file_sha256": sha256_file(cfg.train_file),
            "eval_file_sha256": sha256_file(eval_file) if eval_file else None}


def write_manifest(folder: str | Path, story: dict[str, Any]) -> Path:
    """``training_config.json`` (config, steps, data and base-model fingerprints, result) in ``folder``. Written
    last: its presence means the folder (a checkpoint, the adapter) is complete."""
    path = Path(folder) / TRAINING_CONFIG_NAME
    path.write_text(json.dumps(story, indent=2))
    return path


@contextlib.contextmanager
def publish_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yields a temp folder beside ``out_dir``; on success it replaces ``out_dir`` (never half-written), on an error it
    is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{time.monotonic_ns()}"
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def run_cli(config_cls: type, main: Callable[[Any], Any], description: str | None = None,
            argv: Sequence[str] | None = None) -> None:
    """``python -m <trainer> --config cfg.json [--field value ...]``: trl's TrlParser (an HfArgumentParser) reads the
    file (JSON or YAML; an unknown key is an error) and any field given as a flag overrides it; train, then print the
    result as JSON on stdout (progress goes to stderr)."""
    import sys

    from trl import TrlParser

    parser = TrlParser(config_cls, description=description)
    (cfg,) = parser.parse_args_and_config(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(main(cfg).to_dict(), indent=2))
