"""The improvement_suggestions table: each analysis run's suggestions, replaced as a whole on re-run."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from feedback_pipeline.store.repository import FeedbackStore
from feedback_pipeline.store.tables import SUGGESTIONS
from feedback_pipeline.store.tables import to_db_time as _to_db_time


def save_suggestions(store: FeedbackStore, run_id: str, frame: pd.DataFrame) -> int:
    """Store one run's suggestions (frame columns: kind, target, title, evidence, metrics, priority)."""
    now = _to_db_time(datetime.now(timezone.utc), store.dialect)
    ordered = frame.sort_values("priority", ascending=False, kind="stable").reset_index(drop=True)
    rows = [{"run_id": run_id, "rank": i + 1, "kind": r["kind"], "target": str(r["target"]), "title": r["title"],
             "evidence": r["evidence"], "priority": float(r["priority"]), "created_at": now,
             "metrics": json.loads(r["metrics"]) if isinstance(r["metrics"], str) else r["metrics"]}
            for i, r in ordered.iterrows()]
    with store.engine.begin() as conn:
        conn.execute(sa.delete(SUGGESTIONS).where(SUGGESTIONS.c.run_id == run_id))
        if rows:
            conn.execute(sa.insert(SUGGESTIONS), rows)
    return len(rows)


def latest_suggestions(store: FeedbackStore) -> pd.DataFrame:
    """The suggestions of the most recent analysis run, highest priority first."""
    newest = sa.select(SUGGESTIONS.c.run_id).order_by(SUGGESTIONS.c.created_at.desc()).limit(1).scalar_subquery()
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(SUGGESTIONS).where(SUGGESTIONS.c.run_id == newest).order_by(SUGGESTIONS.c.rank))
        return pd.DataFrame([dict(r._mapping) for r in rows], columns=[c.name for c in SUGGESTIONS.columns])
