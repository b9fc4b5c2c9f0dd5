"""``/v1/improvement``: what the error analysis found, read from where the analysis assets put it.

Suggestions are rows of ``improvement_suggestions`` (the latest analysis run's); error patterns exist only as the
``error_patterns`` asset's markdown report under ``reports_dir``. Nothing is computed here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.repository import _utc
from feedback_pipeline.store.suggestions import latest_suggestions

router = APIRouter(prefix="/v1/improvement", tags=["improvement"], dependencies=[Depends(require("read"))])


@router.get("/suggestions", summary="The latest analysis run's improvement suggestions, highest priority first")
async def suggestions(store: StoreDep, kind: Annotated[str | None, Query(max_length=50)] = None) -> dict[str, Any]:
    frame = await run_in_threadpool(latest_suggestions, store)
    if kind is not None:
        frame = frame[frame["kind"] == kind]
    rows = frame.drop(columns=["run_id", "created_at"]).to_dict("records")
    return jsonable_encoder({
        "run_id": frame["run_id"].iloc[0] if len(frame) else None,
        "created_at": _utc(frame["created_at"].iloc[0]) if len(frame) else None,
        "suggestions": rows})


@router.get("/patterns", summary="The latest error-patterns report (markdown); null before the first analysis")
async def patterns() -> dict[str, Any]:
    path = load_settings().reports_dir / "error_patterns.md"

    def read() -> tuple[str, float] | None:
        try:
            return path.read_text(encoding="utf-8"), path.stat().st_mtime
        except FileNotFoundError:
            return None

    found = await run_in_threadpool(read)
    return {"updated_at": datetime.fromtimestamp(found[1], timezone.utc).isoformat() if found else None,
            "report": found[0] if found else None}
