"""The model_deployments table: an append-only history of release decisions, on PostgreSQL or SQLite."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from feedback_pipeline.store.repository import FEEDBACK, FeedbackStore, _to_db_time, _utc

ACTIONS = ("promote", "keep", "needs_review", "approve", "rollback", "archive")
SOURCES = ("gate", "ab_test", "manual", "cleanup")
# Actions after which the version is champion: the history rollback walks.
CHAMPION_ACTIONS = ("promote", "approve", "rollback")

DEPLOYMENTS = sa.Table(
    "model_deployments", sa.MetaData(),
    sa.Column("id", FEEDBACK.c.id.type, primary_key=True),
    sa.Column("model_name", sa.Text), sa.Column("version", sa.Text), sa.Column("family", sa.Text),
    sa.Column("action", sa.Text), sa.Column("decision_source", sa.Text),
    sa.Column("previous_champion_version", sa.Text), sa.Column("evidence", FEEDBACK.c.metadata.type),
    sa.Column("mlflow_run_id", sa.Text), sa.Column("actor", sa.Text), sa.Column("reason", sa.Text),
    sa.Column("created_at", FEEDBACK.c.created_at.type),
)


@dataclass(frozen=True)
class Deployment:
    id: str
    model_name: str
    version: str
    family: str | None
    action: str
    decision_source: str
    previous_champion_version: str | None
    evidence: dict | None
    mlflow_run_id: str | None
    actor: str | None
    reason: str | None
    created_at: datetime

    def line(self) -> str:
        prev = f" (previous champion {self.previous_champion_version})" if self.previous_champion_version else ""
        why = f": {self.reason}" if self.reason else ""
        return (f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.model_name}/{self.version} {self.action} "
                f"via {self.decision_source} by {self.actor or '?'}{prev}{why}")


def _plain(value):
    """Evidence as plain JSON: numpy scalars as numbers, NaN/inf as null (PostgreSQL's JSONB rejects NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return value.isoformat() if isinstance(value, datetime) else str(value)


def record_deployment(store: FeedbackStore, model_name: str, version: str | int, action: str, decision_source: str,
                      *, family: str | None = None, previous_champion_version: str | int | None = None,
                      evidence: dict | None = None, mlflow_run_id: str | None = None, actor: str | None = None,
                      reason: str | None = None) -> Deployment:
    """Append one decision row and return it. Times are strictly increasing per model, so the history has one order
    even when two decisions fall into the same clock tick."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    if decision_source not in SOURCES:
        raise ValueError(f"decision_source must be one of {SOURCES}, got {decision_source!r}")
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(DEPLOYMENTS.c.created_at))
                            .where(DEPLOYMENTS.c.model_name == model_name)).scalar_one()
        if last is not None and _utc(last) >= now:
            now = _utc(last) + timedelta(microseconds=1)
        previous = None if previous_champion_version is None else str(previous_champion_version)
        row = {"id": str(uuid.uuid4()), "model_name": model_name, "version": str(version), "family": family,
               "action": action, "decision_source": decision_source, "previous_champion_version": previous,
               "evidence": None if evidence is None else _plain(evidence), "mlflow_run_id": mlflow_run_id,
               "actor": actor, "reason": reason, "created_at": _to_db_time(now, store.dialect)}
        conn.execute(sa.insert(DEPLOYMENTS), [row])
    return Deployment(**{**row, "created_at": now})


def deployments(store: FeedbackStore, model_name: str | None = None, version: str | int | None = None,
                actions: tuple[str, ...] | None = None, limit: int | None = None) -> list[Deployment]:
    """Decision rows, newest first, optionally for one model, one version and some actions."""
    query = sa.select(DEPLOYMENTS).order_by(DEPLOYMENTS.c.created_at.desc(), DEPLOYMENTS.c.id.desc())
    if model_name is not None:
        query = query.where(DEPLOYMENTS.c.model_name == model_name)
    if version is not None:
        query = query.where(DEPLOYMENTS.c.version == str(version))
    if actions is not None:
        query = query.where(DEPLOYMENTS.c.action.in_(actions))
    if limit is not None:
        query = query.limit(limit)
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    return [Deployment(**{**r, "id": str(r["id"]), "created_at": _utc(r["created_at"])}) for r in rows]


def latest_decision(store: FeedbackStore, model_name: str, version: str | int) -> Deployment | None:
    """The newest decision about one version (archive rows are housekeeping, not decisions)."""
    found = deployments(store, model_name, version, actions=tuple(a for a in ACTIONS if a != "archive"), limit=1)
    return found[0] if found else None
