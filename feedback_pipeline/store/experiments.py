"""A/B experiments and the exposure log of served chat answers (sql/008), on PostgreSQL or SQLite.

The router reads running experiments from here, the chat endpoint records every answer it serves
(``record_response``), the capture service attributes feedback to the served variant (``served_variants``), and the
A/B asset reads one row per exposure with its latest rating (``arm_outcomes``). An experiment is decided once:
``stop_experiment`` refuses a second decision in the same statement that writes the first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa

from feedback_pipeline.store.repository import _JSON, _TS, FEEDBACK, FeedbackStore, _to_db_time, _utc

EXPERIMENTS = sa.Table(
    "experiments", sa.MetaData(),
    sa.Column("name", sa.Text, primary_key=True), sa.Column("arms", _JSON), sa.Column("eligibility", _JSON),
    sa.Column("baseline_arm", sa.Text), sa.Column("started_at", _TS), sa.Column("stopped_at", _TS),
    sa.Column("decision", sa.Text), sa.Column("decided_at", _TS), sa.Column("evidence", _JSON),
)
CHAT_RESPONSES = sa.Table(
    "chat_responses", sa.MetaData(),
    sa.Column("response_id", sa.Text, primary_key=True), sa.Column("served_at", _TS),
    sa.Column("experiment", sa.Text), sa.Column("arm", sa.Text), sa.Column("registered_model", sa.Text),
    sa.Column("model_version", sa.Text), sa.Column("alias", sa.Text), sa.Column("user_id", sa.Text),
    sa.Column("session_id", sa.Text), sa.Column("intent", sa.Text), sa.Column("project", sa.Text),
    sa.Column("task", sa.Text), sa.Column("latency_ms", sa.Float), sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
)
DECISIONS = ("deploy_test_model", "keep_baseline", "aborted")  # "continue" is no decision: nothing is written
ELIGIBILITY_KEYS = ("intent", "project", "task")
OUTCOME_COLUMNS = ["response_id", "arm", "unit", "served_at", "rating_thumb", "intent", "project"]


class ExperimentDecided(ValueError):
    """The experiment already carries a decision; it is never decided twice."""


@dataclass(frozen=True)
class Arm:
    name: str
    model: str                  # registered model name, e.g. feedback-chat
    weight: float               # share of the experiment's traffic
    alias: str | None = None    # exactly one of alias / version
    version: str | None = None

    def __post_init__(self):
        if (self.alias is None) == (self.version is None):
            raise ValueError(f"arm {self.name!r}: give exactly one of alias or version")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"arm {self.name!r}: weight must be a positive number, got {self.weight!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Arm:
        version = data.get("version")
        return cls(name=str(data["name"]), model=str(data["model"]), weight=float(data["weight"]),
                   alias=data.get("alias"), version=None if version is None else str(version))

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    baseline_arm: str
    started_at: datetime
    eligibility: dict[str, tuple[str, ...]] = field(default_factory=dict)  # {} = every request
    stopped_at: datetime | None = None
    decision: str | None = None
    decided_at: datetime | None = None
    evidence: dict | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


@dataclass(frozen=True)
class ServedResponse:
    """One answer as served: the row ``record_response`` writes before the answer leaves the service."""
    response_id: str
    registered_model: str
    model_version: str
    served_at: datetime
    alias: str | None = None
    experiment: str | None = None
    arm: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    intent: str | None = None
    project: str | None = None
    task: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _check(name: str, arms: list[Arm], baseline_arm: str, eligibility: dict) -> None:
    if not name or not name.strip():
        raise ValueError("an experiment needs a name")
    if len(arms) < 2 or len({a.name for a in arms}) != len(arms):
        raise ValueError(f"experiment {name!r} needs two or more arms with distinct names")
    if not math.isclose(sum(a.weight for a in arms), 1.0, abs_tol=1e-9):
        raise ValueError(f"experiment {name!r}: arm weights must sum to 1, got {sum(a.weight for a in arms)}")
    if baseline_arm not in {a.name for a in arms}:
        raise ValueError(f"experiment {name!r}: baseline arm {baseline_arm!r} is not one of its arms")
    if unknown := sorted(set(eligibility) - set(ELIGIBILITY_KEYS)):
        raise ValueError(f"experiment {name!r}: eligibility by {unknown[0]!r}; allowed: {list(ELIGIBILITY_KEYS)}")


def create_experiment(store: FeedbackStore, name: str, arms: Iterable[Arm | dict], baseline_arm: str | None = None,
                      eligibility: dict[str, Iterable[str]] | None = None,
                      started_at: datetime | None = None) -> Experiment:
    """Start an experiment; ``baseline_arm`` defaults to the first arm. A taken name raises ValueError."""
    arms = [a if isinstance(a, Arm) else Arm.from_dict(a) for a in arms]
    baseline_arm = baseline_arm or (arms[0].name if arms else "")
    eligibility = {k: tuple(str(v) for v in values) for k, values in (eligibility or {}).items()}
    _check(name, arms, baseline_arm, eligibility)
    experiment = Experiment(name=name, arms=tuple(arms), baseline_arm=baseline_arm, eligibility=eligibility,
                            started_at=_utc(started_at or datetime.now(timezone.utc)))
    with store.engine.begin() as conn:
        if conn.execute(sa.select(EXPERIMENTS.c.name).where(EXPERIMENTS.c.name == name)).first() is not None:
            raise ValueError(f"experiment {name!r} exists already")
        conn.execute(EXPERIMENTS.insert().values(
            name=name, arms=[a.as_dict() for a in arms], eligibility={k: list(v) for k, v in eligibility.items()},
            baseline_arm=baseline_arm, started_at=_to_db_time(experiment.started_at, store.dialect)))
    return experiment


def _experiment(row) -> Experiment:
    return Experiment(name=row.name, arms=tuple(Arm.from_dict(a) for a in row.arms), baseline_arm=row.baseline_arm,
                      eligibility={k: tuple(v) for k, v in (row.eligibility or {}).items()},
                      started_at=_utc(row.started_at), stopped_at=_utc(row.stopped_at), decision=row.decision,
                      decided_at=_utc(row.decided_at), evidence=row.evidence)


def list_experiments(store: FeedbackStore, running_only: bool = False) -> list[Experiment]:
    query = sa.select(EXPERIMENTS).order_by(EXPERIMENTS.c.started_at, EXPERIMENTS.c.name)
    if running_only:
        query = query.where(EXPERIMENTS.c.stopped_at.is_(None))
    with store.engine.connect() as conn:
        return [_experiment(r) for r in conn.execute(query)]


def get_experiment(store: FeedbackStore, name: str) -> Experiment | None:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(EXPERIMENTS).where(EXPERIMENTS.c.name == name)).first()
    return _experiment(row) if row is not None else None


def stop_experiment(store: FeedbackStore, name: str, decision: str, evidence: dict[str, Any] | None = None,
                    at: datetime | None = None) -> Experiment:
    """Stop a running experiment with its decision and evidence. KeyError: unknown; ExperimentDecided: stopped
    before (the check and the write are one conditional UPDATE, so two deciders cannot both win)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    at = _to_db_time(at or datetime.now(timezone.utc), store.dialect)
    with store.engine.begin() as conn:
        done = conn.execute(sa.update(EXPERIMENTS).where(EXPERIMENTS.c.name == name, EXPERIMENTS.c.stopped_at.is_(None))
                            .values(stopped_at=at, decision=decision, decided_at=at, evidence=evidence or {})).rowcount
        row = conn.execute(sa.select(EXPERIMENTS).where(EXPERIMENTS.c.name == name)).first()
    if row is None:
        raise KeyError(f"no experiment {name!r}")
    if not done:
        raise ExperimentDecided(f"experiment {name!r} was stopped already ({row.decision} at {row.decided_at})")
    return _experiment(row)


def record_responses(store: FeedbackStore, served: Iterable[ServedResponse]) -> int:
    rows = [{**asdict(s), "served_at": _to_db_time(s.served_at, store.dialect)} for s in served]
    if rows:
        with store.engine.begin() as conn:
            conn.execute(CHAT_RESPONSES.insert(), rows)
    return len(rows)


def record_response(store: FeedbackStore, served: ServedResponse) -> None:
    record_responses(store, [served])


def served_variants(conn: sa.Connection, response_ids: Iterable[str]) -> dict[str, dict]:
    """The served variant of each known response id: experiment, arm, model_name, model_version."""
    ids = sorted({r for r in response_ids if r})
    if not ids:
        return {}
    c = CHAT_RESPONSES.c
    query = sa.select(c.response_id, c.experiment, c.arm, c.registered_model, c.model_version).where(
        c.response_id.in_(ids))
    return {r.response_id: {"experiment": r.experiment, "arm": r.arm, "model_name": r.registered_model,
                            "model_version": r.model_version} for r in conn.execute(query)}


def arm_outcomes(store: FeedbackStore, name: str) -> pd.DataFrame:
    """One row per answer served in experiment ``name``: its arm, the assignment unit (user_id, else session_id),
    when, and ``rating_thumb`` of the latest rated feedback naming that answer (<NA> when nobody rated it)."""
    r, f = CHAT_RESPONSES.c, FEEDBACK.c
    latest = (sa.select(f.rating_thumb).where(f.response_id == r.response_id, f.rating_thumb.is_not(None))
              .order_by(f.updated_at.desc(), f.id.desc()).limit(1).scalar_subquery())
    query = (sa.select(r.response_id, r.arm, sa.func.coalesce(r.user_id, r.session_id).label("unit"), r.served_at,
                       latest.label("rating_thumb"), r.intent, r.project)
             .where(r.experiment == name).order_by(r.served_at, r.response_id))
    with store.engine.connect() as conn:
        frame = pd.DataFrame([tuple(row) for row in conn.execute(query)], columns=OUTCOME_COLUMNS)
    frame["served_at"] = pd.to_datetime(frame["served_at"].map(_utc), utc=True)
    frame["rating_thumb"] = frame["rating_thumb"].astype("Int64")
    return frame


def attribute(conn: sa.Connection, rows: list[dict]) -> set[str]:
    """Copy the served variant onto each feedback row naming a ``response_id`` (in place): what was served, not what
    the client claims. Returns the row ids whose response id was never served."""
    served = served_variants(conn, (r.get("response_id") for r in rows))
    unknown = set()
    for row in rows:
        if row.get("response_id"):
            if row["response_id"] in served:
                row.update(served[row["response_id"]])
            else:
                unknown.add(row["id"])
    return unknown


def finish_response(store: FeedbackStore, response_id: str, latency_ms: float, prompt_tokens: int,
                    completion_tokens: int) -> None:
    """Usage of a streamed answer, known only once its last token is out (its row was written before the first)."""
    with store.engine.begin() as conn:
        conn.execute(sa.update(CHAT_RESPONSES).where(CHAT_RESPONSES.c.response_id == response_id).values(
            latency_ms=latency_ms, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
