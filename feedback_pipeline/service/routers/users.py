"""``DELETE /v1/users/{user_id}/feedback``: the right to erasure, the same as ``feedback-pipeline erase-user`` (the
store's tables in one transaction, then the reports and datasets under the data directory holding the user's text;
``store/erasure.py``). Admin scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.ingestion.strict import check_value
from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.service.keys import ApiKey
from feedback_pipeline.service.ratelimit import rate_limited
from feedback_pipeline.settings import load_settings
from feedback_pipeline.store.erasure import erase_user as erase_everywhere

router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[Depends(rate_limited)])


@router.delete("/{user_id}/feedback", summary="Erase every record of one user (admin)")
async def erase_user(user_id: Annotated[str, Path(min_length=1, max_length=512)], store: StoreDep,
                     key: Annotated[ApiKey, Depends(require("admin"))]) -> dict:
    check_value(user_id, "user_id")
    report = await run_in_threadpool(erase_everywhere, store, user_id, load_settings().data_dir)
    return report.as_dict()
