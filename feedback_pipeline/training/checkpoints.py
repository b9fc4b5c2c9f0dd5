"""Resumable training runs: which checkpoint is complete, and whether a run may continue from it.

transformers writes ``checkpoint-<step>/`` folders; our trainers add ``training_config.json`` (config, step, data
and base-model fingerprints) into each one *last*, so its presence marks a checkpoint as complete. A run killed
mid-save leaves a folder without it, which is skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_CONFIG_NAME = "training_config.json"


def checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest step first."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint with both trainer_state.json and our training_config.json (written last)."""
    for path in reversed(checkpoints(Path(output_dir))):
        if (path / "trainer_state.json").is_file() and (path / TRAINING_CONFIG_NAME).is_file():
            return path
    return None


def resume_point(output_dir: Path, resume: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to continue from: None for a fresh run. Refuses to train over checkpoints unless ``resume``."""
    if not checkpoints(output_dir):
        return None
    if not resume:
        raise FileExistsError(f"{output_dir} already holds checkpoints: set resume=True to continue that run, or "
                              "use an empty output_dir")
    found = last_complete_checkpoint(output_dir)
    if found is None:
        log(f"no complete checkpoint in {output_dir}: training from the start")
    return found


def check_resumable(checkpoint: Path, expected: dict[str, Any], max_steps: int) -> None:
    """Raise when the checkpoint was trained on other data, base model or method (``expected``: story key -> value)."""
    story = json.loads((checkpoint / TRAINING_CONFIG_NAME).read_text())
    if story["config"]["max_steps"] != max_steps:
        # The optimizer state restores the learning rate the old schedule had reached (0 at its end), so the first
        # resumed step runs at that rate; only the steps after it follow the new schedule.
        logger.warning("resuming a run planned for %s steps with max_steps=%s: the first resumed step uses the old "
                       "schedule's learning rate (0 if that run had finished)", story["config"]["max_steps"],
                       max_steps)
    bad = {key: (story.get(key, story["config"].get(key)), value) for key, value in expected.items()
           if story.get(key, story["config"].get(key)) != value}
    if bad:
        raise ValueError(f"cannot resume from {checkpoint}: it was trained with different {sorted(bad)} "
                         f"({bad}); use a new output_dir")


@dataclass(kw_only=True)
class CheckpointOptions:
    """Evaluation, early-stopping and checkpoint fields shared by the trainers' configs (keyword-only, so they can
    follow the configs' required fields)."""

    eval_steps: int = field(default=10, metadata={"help": "Evaluate eval_file every N steps (when given)."})
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without eval_loss improvement, then keep the best "
                          "checkpoint (needs eval_file; save_steps must be a multiple of eval_steps)."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum eval_loss decrease that counts as an improvement."}
    )
    save_steps: int = field(default=10, metadata={"help": "Write a resumable checkpoint every N steps."})
    save_total_limit: int = field(
        default=2, metadata={"help": "Checkpoints kept (oldest deleted first; the best one is always kept)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last complete checkpoint in output_dir, if any."}
    )


def checkpoint_arguments(cfg: CheckpointOptions, evaluate: bool) -> dict[str, Any]:
    """TrainingArguments for checkpoints every ``save_steps``, evaluations every ``eval_steps`` when ``evaluate``,
    and, with early stopping, the best checkpoint by eval_loss loaded back at the end."""
    early = cfg.early_stopping_patience is not None
    return dict(
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.eval_steps if evaluate else None,
        load_best_model_at_end=early, metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
    )


class CheckpointStory(TrainerCallback):
    """Writes training_config.json (from ``story(step)``) into every checkpoint, last, so that its presence marks
    the checkpoint as complete; also keeps the last token count trl logged in this run."""

    def __init__(self, story: Callable[[int], dict[str, Any]]):
        self.story = story
        self.tokens = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("num_tokens"), (int, float)):
            self.tokens = int(logs["num_tokens"])

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if folder.is_dir():
            (folder / TRAINING_CONFIG_NAME).write_text(json.dumps(self.story(state.global_step), indent=2))
