"""``/v1/feedback/stats`` and ``/v1/feedback/accuracy`` (read scope), answered from the daily summary table.

Filters are exact matches on model_name, model_version, intent, project, subject; the range is ``window`` (7, 30
or 90 days back from today, UTC, inclusive) or ``start``/``end`` dates (default: the last 30 days). An unknown
query parameter is a 422 naming it, so a typo never returns unfiltered numbers; ``user_id`` is refused too (the
summary keeps no users). The counting logic lives in ``feedback_pipeline/store/daily_stats.py``.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.ingestion.records import FeedbackValidationError
from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.store import daily_stats

router = APIRouter(prefix="/v1/feedback", tags=["stats"], dependencies=[Depends(require("read"))])
_ALLOWED = {"window", "start", "end", "user_id", *daily_stats.DIMENSIONS}


def _query(request: Request, window: int | None = None, start: date | None = None, end: date | None = None,
           model_name: str | None = None, model_version: str | None = None, intent: str | None = None,
           project: str | None = None, subject: str | None = None,
           user_id: str | None = None) -> daily_stats.StatsQuery:
    unknown = sorted(set(request.query_params) - _ALLOWED)
    if unknown:
        raise FeedbackValidationError(unknown[0], f"unknown query parameter; use {', '.join(sorted(_ALLOWED - {'user_id'}))}")
    return daily_stats.build_query(window, start, end, user_id=user_id, model_name=model_name,
                                   model_version=model_version, intent=intent, project=project, subject=subject)


QueryDep = Annotated[daily_stats.StatsQuery, Depends(_query)]


@router.get("/stats", summary="Totals, likes, dislikes, like-rate and a daily series over a window")
async def feedback_stats(query: QueryDep, store: StoreDep) -> dict[str, Any]:
    return await run_in_threadpool(daily_stats.stats, store.engine, query)


@router.get("/accuracy", summary="Like-rate per model x version x intent x project with Wilson 95% intervals")
async def feedback_accuracy(query: QueryDep, store: StoreDep) -> dict[str, Any]:
    return await run_in_threadpool(daily_stats.accuracy, store.engine, query)
