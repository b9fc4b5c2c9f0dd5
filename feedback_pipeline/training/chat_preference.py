"""python -m feedback_pipeline.training.chat_preference --config cfg.json

LoRA preference tuning of a causal chat model with trl: KTO on thumbs (prompt / completion / bool label), or one of
the pair methods on chosen/rejected pairs (config JSON keys are the fields of ``PreferenceConfig``; the result is
printed as JSON on stdout, progress goes to the log on stderr). Pair methods:

- ``dpo``: DPO (sigmoid loss on the summed log-ratio against the base).
- ``ld_dpo``: length-desensitised DPO (trl's ``ld_alpha``): log-probs of the tokens past the shorter answer's
  length count only ``ld_alpha`` times, so the longer answer does not win by length alone.
- ``ipo``: IPO (squared loss towards a margin of 1 / (2 beta) on per-token averaged log-ratios).
- ``simpo``: SimPO through trl's CPOTrainer (``loss_type="simpo"``, ``cpo_alpha=0``): reward = beta x the mean
  per-token log-prob (no reference model), margin ``simpo_gamma``.
- ``cpo``: CPO through trl's CPOTrainer (``loss_type="sigmoid"``, ``cpo_alpha=1``): DPO's sigmoid loss on beta x
  the difference of summed log-probs (no reference model) plus the chosen answer's NLL.
- ``orpo``: ORPO through trl's ORPOTrainer: NLL of the chosen answer plus beta x the log-sigmoid of the log odds
  ratio between chosen and rejected, with odds from the mean per-token probability (no reference model).

Input JSONL, one record per line (the extra keys the dataset builders write are ignored):

    KTO: {"prompt": [messages], "completion": [{"role": "assistant", ...}], "label": true|false}
    DPO: {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}

The reference model is the base itself: with a LoRA adapter trl computes reference log-probs with the adapter
disabled, so one copy of the weights is in memory. trl truncates prompt+completion to ``max_length`` from the
right; a long prompt would leave little or no completion, so prompts are first fitted into ``max_prompt_length``
tokens by dropping their oldest messages (and, for a single over-long message, its oldest tokens).

Checkpoints (adapter, optimizer, scheduler, RNG, trainer state, plus our ``training_config.json``) are written every
``save_steps``; with ``resume`` a killed run continues from the last complete checkpoint in ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from transformers import TrainerCallback

from feedback_pipeline.training.checkpoints import (
    TRAINING_CONFIG_NAME, CheckpointOptions, CheckpointStory, check_resumable, checkpoint_arguments, resume_point,
)
from feedback_pipeline.training.common import (
    PREFERENCE_METRICS, LoraOptions, MlflowStepLogger, ProgressReporter, TrainableWeights, cpu_training_arguments,
    data_fingerprints, load_causal_lm, load_tokenizer, lora_config, publish_folder, quiet, read_splits,
    require_model_folder, run_cli, sha256_file, train, validate_early_stopping, write_manifest,
)
from feedback_pipeline.training.config_file import JsonConfig, jsonl_records

logger = logging.getLogger(__name__)

PreferenceMethod = Literal["kto", "dpo", "ld_dpo", "ipo", "simpo", "cpo", "orpo"]
METHODS: tuple[str, ...] = get_args(PreferenceMethod)
# pair methods train on chosen/rejected pairs; kto on labelled completions
PAIR_METHODS = ("dpo", "ld_dpo", "ipo", "simpo", "cpo", "orpo")
# beta when the config leaves it unset. SimPO's reward is beta x a per-token mean log-prob (no reference): the SimPO
# paper uses beta 2-2.5 with gamma / beta 0.5-0.8 (simpo_gamma defaults to 1.0 = 0.5 x 2.0); the others scale a
# log-ratio against the base (CPO: a plain log-prob difference), where 0.1 is trl's default. ORPO's beta is the
# paper's lambda (weight of the odds-ratio term next to the NLL), 0.1 in the paper and in trl.
DEFAULT_BETA = {"kto": 0.1, "dpo": 0.1, "ld_dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "cpo": 0.1, "orpo": 0.1}
# KTO paper, eq. 8: weights with lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]; aim at the middle of that range.
KTO_TARGET_RATIO = 7 / 6


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PreferenceConfig(JsonConfig, CheckpointOptions, LoraOptions):
    base_model_path: str = field(
        metadata={"help": "Local Hugging Face causal-LM folder (config.json, weights, tokenizer)."}
    )
    train_file: str = field(metadata={"help": "JSONL of KTO records or DPO pairs (see the module docstring)."})
    output_dir: str = field(
        metadata={"help": "Where checkpoints, the final LoRA adapter, tokenizer and training_config.json go."}
    )
    method: PreferenceMethod = field(
        default="kto",
        metadata={"help": "'kto' (thumbs: unpaired labels), or on pairs 'dpo', 'ld_dpo' (length-desensitised DPO), "
                          "'ipo', 'simpo' (length-normalised, no reference model), 'cpo' or 'orpo' (chosen NLL "
                          "+ a pairwise term, no reference model)."},
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Optional JSONL in the train format; its preference loss is eval_loss."}
    )
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps (the data is cycled if it is shorter)."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Records per forward/backward pass (KTO needs >= 2: its KL term mixes a batch)."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    beta: float | None = field(
        default=None,
        metadata={"help": "KTO/DPO/LD-DPO/IPO: strength of the pull towards the reference (base) model, higher = "
                          "closer (default 0.1). SimPO: scale of its length-normalised reward (default 2.0). CPO: "
                          "scale of the summed log-prob difference (default 0.1). ORPO: weight of the odds-ratio term "
                          "next to the chosen answer's NLL (default 0.1)."},
    )
    simpo_gamma: float = field(
        default=1.0, metadata={"help": "SimPO's target reward margin (method 'simpo' only; gamma / beta = 0.5)."}
    )
    ld_alpha: float = field(
        default=0.5,
        metadata={"help": "LD-DPO: weight in [0, 1] of the log-probs of tokens past the shorter answer's length "
                          "(method 'ld_dpo' only; 1 is plain DPO)."},
    )
    lora_dropout: float = field(
        default=0.0, kw_only=True,
        metadata={"help": "Dropout on the LoRA branch. 0 keeps trl's default of disabling every dropout, so policy "
                          "and reference log-probs are not noisy; > 0 turns dropout back on."},
    )
    max_length: int = field(
        default=256, metadata={"help": "Max tokens of prompt+response; longer sequences are cut at the end."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt token budget (default max_length // 2); longer prompts lose their oldest messages."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for LoRA init, dropout and data order."})
    desirable_weight: float | None = field(
        default=None,
        metadata={"help": "KTO loss weight of liked records. With undesirable_weight unset too, both are set from the "
                          "label counts so that w_D * n_D / (w_U * n_U) = 7/6, inside trl's recommended [1, 4/3]."},
    )
    undesirable_weight: float | None = field(
        default=None, metadata={"help": "KTO loss weight of disliked records (see desirable_weight)."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log loss (progress, MLflow) every N optimizer steps."})

    def __post_init__(self) -> None:
        self.normalise_common(("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r",
                               "max_length", "eval_steps", "save_steps", "save_total_limit", "logging_steps"))
        if self.method not in METHODS:
            raise ValueError(f"PreferenceConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.method]
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"PreferenceConfig.beta must be a positive number, got {self.beta!r}")
        if not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"PreferenceConfig.ld_alpha must lie in [0, 1], got {self.ld_alpha!r}")
        if not math.isfinite(self.simpo_gamma):
            raise ValueError(f"PreferenceConfig.simpo_gamma must be finite, got {self.simpo_gamma!r}")
        if self.max_prompt_length is None:
            self.max_prompt_length = self.max_length // 2
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"max_prompt_length must lie in [1, max_length), got {self.max_prompt_length}")
        if self.method == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError("KTO needs per_device_train_batch_size >= 2 (its KL estimate mixes the batch)")
        if self.method != "kto" and (self.desirable_weight is not None or self.undesirable_weight is not None):
            raise ValueError("desirable_weight/undesirable_weight are KTO settings; pairs have no classes")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"PreferenceConfig.{name} must be a positive number, got {value!r}")
        validate_early_stopping(self)


@dataclass(frozen=True)
class PreferenceResult:
    adapter_dir: str
    method: str
    steps: int  # global step reached (counting steps done before a resume)
    loss_history: list[tuple[int, float]]  # (global step, training loss), including steps before a resume
    final_train_loss: float
    eval_history: list[tuple[int, float]]  # (global step, eval_loss) of the periodic evaluations
    eval_loss: float | None  # eval loss of the saved adapter (the best checkpoint under early stopping)
    best_checkpoint: str | None
    stopped_early: bool
    resumed_from: str | None  # checkpoint folder this run continued from
    train_runtime_s: float  # this run only
    train_tokens: int  # prompt+response tokens of the policy batches in this run
    tokens_per_s: float
    trainable_params: int
    weights_changed: bool  # any LoRA parameter differs from its fresh initial value
    n_train_examples: int
    desirable_weight: float | None
    undesirable_weight: float | None
    last_train_metrics: dict[str, float]  # trl's reward / KL metrics of the last logging step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def _messages(value: Any, where: str, what: str, roles: tuple[str, ...]) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: '{what}' must be a non-empty list of messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: each '{what}' message needs role {'/'.join(roles)} and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load_preference_records(path: str | Path, method: str) -> list[dict[str, Any]]:
    """Read KTO records or DPO pairs into exactly the columns trl uses, validating each line."""
    rows: list[dict[str, Any]] = []
    prompt_roles = ("system", "user", "assistant")
    for where, record in jsonl_records(path):
        prompt = _messages(record.get("prompt"), where, "prompt", prompt_roles)
        if prompt[-1]["role"] != "user":
            raise ValueError(f"{where}: the prompt must end with a user message")
        if method == "kto":
            if not isinstance(record.get("label"), bool):
                raise ValueError(f"{where}: KTO records need a boolean 'label'")
            rows.append({"prompt": prompt,
                         "completion": _messages(record.get("completion"), where, "completion", ("assistant",)),
                         "label": record["label"]})
        else:
            rows.append({"prompt": prompt,
                         "chosen": _messages(record.get("chosen"), where, "chosen", ("assistant",)),
                         "rejected": _messages(record.get("rejected"), where, "rejected", ("assistant",))})
    return rows


def kto_class_weights(n_desirable: int, n_undesirable: int,
                      target_ratio: float = KTO_TARGET_RATIO) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with w_D * n_D / (w_U * n_U) = target_ratio; the minority is upweighted.

    trl (after the KTO paper, eq. 8) recommends that ratio in [1, 4/3] and changing only one of the two weights.
    """
    if n_desirable < 1 or n_undesirable < 1:
        raise ValueError(f"KTO needs liked and disliked examples, got {n_desirable} liked / {n_undesirable} disliked")
    if n_desirable <= n_undesirable * target_ratio:  # liked are the minority (or near balance): raise them
        return round(target_ratio * n_undesirable / n_desirable, 4), 1.0
    return 1.0, round(n_desirable / (target_ratio * n_undesirable), 4)


def _prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer: Any, messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """The prompt, chat-templated, in at most ``budget`` tokens: oldest messages go first (leading system messages
    stay, and the kept part starts with a user turn); a last message that alone is too long keeps its end."""
    if _prompt_length(tokenizer, messages) <= budget:
        return messages
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    while len(rest) > 1 and (_prompt_length(tokenizer, system + rest) > budget or rest[0]["role"] != "user"):
        rest = rest[1:]
    fitted = system + rest
    while (excess := _prompt_length(tokenizer, fitted) - budget) > 0:
        last = fitted[-1]
        ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
        keep = len(ids) - excess - 1
        if keep < 1:
            if system:  # the system message itself is what does not fit
                system, fitted = [], fitted[len(system):]
                continue
            raise ValueError(f"a prompt cannot be fitted into {budget} tokens (template overhead alone exceeds it)")
        fitted = fitted[:-1] + [{"role": last["role"], "content": tokenizer.decode(ids[-keep:])}]
    return fitted


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def _fit_prompts(rows: list[dict[str, Any]], tokenizer: Any, budget: int) -> int:
    trimmed = 0
    for row in rows:
        fitted = fit_prompt(tokenizer, row["prompt"], budget)
        if fitted is not row["prompt"]:
            row["prompt"] = fitted
            trimmed += 1
    return trimmed


def main(
    cfg: PreferenceConfig,
    log: Callable[[str], None] | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> PreferenceResult:
    """Train a KTO or pair-method (DPO, LD-DPO, IPO, SimPO, CPO, ORPO) LoRA adapter on ``cfg.train_file`` and save it
    to ``cfg.output_dir``. Raises on bad data, NaN losses, or a resume onto a checkpoint trained on other data."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback

    log = log or logger.info
    base = require_model_folder(cfg.base_model_path)
    out = Path(cfg.output_dir)
    fingerprints = data_fingerprints(cfg)
    resume_from = resume_point(out, cfg.resume, log)
    if resume_from is not None:
        check_resumable(resume_from, {"method": cfg.method, "train_file_sha256": fingerprints["train_file_sha256"],
                                      "base_model_path": str(base.resolve())}, cfg.max_steps)

    train_rows, eval_rows = read_splits(lambda path: load_preference_records(path, cfg.method), cfg.train_file,
                                        cfg.eval_file, "records")
    desirable = undesirable = None
    if cfg.method == "kto":
        n_liked = sum(r["label"] for r in train_rows)
        if cfg.desirable_weight is None and cfg.undesirable_weight is None:
            desirable, undesirable = kto_class_weights(n_liked, len(train_rows) - n_liked)
        else:
            desirable, undesirable = cfg.desirable_weight or 1.0, cfg.undesirable_weight or 1.0
        log(f"KTO on {n_liked} liked / {len(train_rows) - n_liked} disliked: weights {desirable} / {undesirable}")

    tokenizer = load_tokenizer(base)
    trimmed = sum(_fit_prompts(rows, tokenizer, cfg.max_prompt_length) for rows in (train_rows, eval_rows or []))
    if trimmed:
        log(f"{trimmed} prompts longer than {cfg.max_prompt_length} tokens lost their oldest messages/tokens")
    log(f"{cfg.method.upper()} on {len(train_rows)} records" + (f" (+{len(eval_rows)} eval)" if eval_rows else "")
        + f", base {base}, {cfg.max_steps} steps x batch {cfg.per_device_train_batch_size}"
          f" x accum {cfg.gradient_accumulation_steps}")

    evaluate = eval_rows is not None
    early = cfg.early_stopping_patience is not None
    common = cpu_training_arguments(cfg, out, beta=cfg.beta, disable_dropout=cfg.lora_dropout == 0,
                                    **checkpoint_arguments(cfg, evaluate))
    if cfg.method == "kto":
        from trl import KTOConfig, KTOTrainer

        args, trainer_cls = KTOConfig(**common, desirable_weight=desirable, undesirable_weight=undesirable), KTOTrainer
    elif cfg.method in ("simpo", "cpo"):
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        loss = {"simpo": {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": cfg.simpo_gamma},
                "cpo": {"loss_type": "sigmoid", "cpo_alpha": 1.0}}[cfg.method]
        args, trainer_cls = CPOConfig(**common, **loss), CPOTrainer
    elif cfg.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args, trainer_cls = ORPOConfig(**common), ORPOTrainer
    else:
        from trl import DPOConfig, DPOTrainer

        loss = {"dpo": {}, "ld_dpo": {"ld_alpha": cfg.ld_alpha}, "ipo": {"loss_type": ["ipo"]}}[cfg.method]
        args, trainer_cls = DPOConfig(**common, **loss), DPOTrainer

    def story(step: int) -> dict[str, Any]:
        return {"config": asdict(cfg), "method": cfg.method, "steps": step, "base_model_path": str(base.resolve()),
                **fingerprints, "n_train_examples": len(trainer.train_dataset), "desirable_weight": desirable,
                "undesirable_weight": undesirable}

    checkpoint_story = CheckpointStory(story)
    callbacks = [MlflowStepLogger(PREFERENCE_METRICS), ProgressReporter(log, cfg.method.upper()), checkpoint_story]
    if early:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold))
    trainer = quiet(trainer_cls(
        model=load_causal_lm(base), args=args, processing_class=tokenizer, peft_config=lora_config(cfg),
        # KTO reads the data in file order (its KL term needs a fixed order), so the order is shuffled here, once.
        train_dataset=Dataset.from_list(train_rows).shuffle(seed=cfg.seed),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=[*callbacks, *extra_callbacks],
    ))
    if len(trainer.train_dataset) == 0:
        raise ValueError(f"no training record keeps a response token within max_length={cfg.max_length}")
    if len(trainer.train_dataset) < len(train_rows):
        log(f"{len(train_rows) - len(trainer.train_dataset)} records dropped: prompt fills max_length")

    weights = TrainableWeights(trainer.model, f"none of {cfg.lora_target_modules} matched the model")
    outcome = train(trainer, weights, resume_from, log)
    steps = outcome.steps

    eval_loss = None
    if evaluate:
        if early and trainer.state.best_metric is not None:
            eval_loss = float(trainer.state.best_metric)  # the best checkpoint was loaded back at the end
        elif outcome.eval_history and outcome.eval_history[-1][0] == steps:
            eval_loss = outcome.eval_history[-1][1]
        else:
            eval_loss = float(trainer.evaluate()["eval_loss"])
        if not math.isfinite(eval_loss):
            raise FloatingPointError(f"eval loss is not finite: {eval_loss}")
        log(f"eval_loss of the saved adapter {eval_loss:.4f}")

    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out)  # PeftModel: adapter_config.json + adapter_model.safetensors only
    tokenizer.save_pretrained(out)
    runtime = outcome.train_runtime_s
    last_metrics = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    result = PreferenceResult(
        adapter_dir=str(out), method=cfg.method, steps=steps, loss_history=outcome.loss_history,
        final_train_loss=outcome.final_train_loss, eval_history=outcome.eval_history, eval_loss=eval_loss,
        best_checkpoint=trainer.state.best_model_checkpoint if early else None, stopped_early=steps < cfg.max_steps,
        resumed_from=str(resume_from) if resume_from else None, train_runtime_s=runtime,
        train_tokens=checkpoint_story.tokens,
        tokens_per_s=checkpoint_story.tokens / runtime if runtime > 0 else float("nan"),
        trainable_params=outcome.trainable_params, weights_changed=outcome.weights_changed,
        n_train_examples=len(trainer.train_dataset), desirable_weight=desirable, undesirable_weight=undesirable,
        last_train_metrics={k: float(v) for k, v in last_metrics.items()
                            if isinstance(v, (int, float)) and (k.startswith(("rewards/", "logps/")) or k == "kl")},
    )
    write_manifest(out, {**story(steps), "result": result.to_dict()})
    log(f"adapter saved to {out}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------


def merge_and_export(base_model_path: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """A full HF model folder (base weights + LoRA merged, tokenizer, generation config) for serving without peft.

    Written to a sibling temp folder and renamed into place, so ``out_dir`` is never half-written; an existing
    ``out_dir`` is replaced. GGUF is not produced: that needs llama.cpp's converter, which is not installed.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not ((adapter_dir / "adapter_config.json").is_file() and weights.is_file()):
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json / {weights.name} missing)")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file()
                                              else base_model_path)
    base = load_causal_lm(base_model_path)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.eval()

    with publish_folder(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"base_model_path": str(Path(base_model_path).resolve()),
                      "adapter_dir": str(adapter_dir.resolve()),
                      "adapter_sha256": sha256_file(weights)}
        if (adapter_dir / TRAINING_CONFIG_NAME).is_file():
            provenance["training"] = json.loads((adapter_dir / TRAINING_CONFIG_NAME).read_text())
        (tmp / "merge_provenance.json").write_text(json.dumps(provenance, indent=2))
    return out_dir


if __name__ == "__main__":
    run_cli(PreferenceConfig, main, __doc__.splitlines()[0] if __doc__ else None)
