"""What the training, evaluation and release assets hand each other: frozen dataclasses, ``None`` for "not set".

Each is small (paths, run ids, versions, the evaluation's numbers), pickled by the IO manager between steps. The
dataset assets' hand-offs and the feedback tables' references belong to the data plane (``store/refs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from feedback_pipeline.evaluation.chat_compare import ChatComparison
    from feedback_pipeline.evaluation.gate import Decision, Interval

Family = Literal["chat_sft", "chat_preference", "embedder", "reward"]


@dataclass(frozen=True)
class BaseChatModel:
    """base_chat_model: a local Hugging Face causal-LM folder."""

    path: str


@dataclass(frozen=True)
class ChatAdapter:
    """chat_adapter (SFT) and chat_preference_adapter (KTO, DPO ...): a LoRA adapter on ``base_model_path``, trained
    in the MLflow run ``run_id``."""

    adapter_dir: str
    run_id: str
    base_model_path: str
    dataset_fingerprint: str
    method: str  # "sft" or a PreferenceMethod ("kto", "dpo", ...)
    final_train_loss: float
    eval_loss: float | None = None
    version: str | None = None  # the registered feedback-chat version (the preference adapter registers itself)


@dataclass(frozen=True)
class MergedChatModel:
    """merged_chat_model: the adapter merged into its base, a plain HF folder."""

    path: str
    adapter_dir: str
    run_id: str


@dataclass(frozen=True)
class RegisteredVersion:
    """chat_model_version: a registered model version and the alias set on it."""

    name: str
    version: str
    alias: str
    run_id: str


@dataclass(frozen=True)
class RewardModel:
    """reward_model: the saved folder, its MLflow run and its registered version."""

    model_dir: str
    run_id: str
    name: str
    version: str
    dataset_fingerprint: str


@dataclass(frozen=True)
class Judge:
    """Who judges generated answers: a reward model (``model_dir``) or an external endpoint (``model_dir`` None)."""

    ref: str
    model_dir: str | None
    vetted: bool  # False: a reward model no decision has made champion yet (its metrics say so)


@dataclass(frozen=True)
class RewardEvaluation:
    """reward_model_evaluation: held-out pairwise accuracy, challenger vs champion, paired per pair."""

    interval: Interval
    detail: dict[str, float | None]  # pairwise_accuracy's numbers for the challenger (and the longer-answer rule)
    champion: str  # label ("feedback-reward/3", or the rule as version 0)
    champion_version: str | None
    champion_dir: str | None  # None: the longer-answer rule
    candidate: RewardModel


@dataclass(frozen=True)
class ChatEvaluation:
    """chat_model_evaluation and chat_preference_evaluation: the candidate vs the feedback-chat champion."""

    comparison: ChatComparison
    champion: str  # label
    champion_version: str | None  # None: the base model (version 0)
    run_id: str  # the candidate's MLflow run
    judge: str
    gold_set_version: str


@dataclass(frozen=True)
class ReleaseDecision:
    """A *_promotion_decision: what the gate decided and where the champion alias is now."""

    name: str
    version: str
    family: Family
    decision: Decision
    reasons: tuple[str, ...]
    deployment_id: str  # the model_deployments row
    champion: str | None  # the champion version after acting (None: version 0 serves)
    compared_with: str | None  # the champion version the evidence was measured against (None: version 0)
    mlflow_run_id: str
    judge: Judge | None = field(default=None)  # reward_promotion_decision: the judge the chat evaluations use
