"""``/v1/jobs``: fine-tuning runs of ``retraining_job``, launched, listed, read and cancelled through the Dagster
webserver at ``DAGSTER_WEBSERVER_URL``. Dagster schedules and records every run; this router only forwards.

503 when the webserver cannot be reached within the timeout, 404 for a run id Dagster does not know (or a run
of another job), 409 when cancelling a run that has already finished.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.service.dagster_jobs import (DagsterJobs, DagsterUnavailable, LaunchRejected, RunInfo,
                                                    RunNotFound, RunNotTerminated)
from feedback_pipeline.service.keys import ApiKey
from feedback_pipeline.settings import load_settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JOB_NAME = "retraining_job"
SENSOR_NAME = "new_feedback_sensor"
TIMEOUT_S = 5
KEY_TAG = "feedback_pipeline/api_key_id"  # which API key launched the run


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_config: dict[str, Any] | None = Field(None, description="Dagster run config, e.g. {'ops': {...}}")
    tags: dict[str, str] | None = Field(None, description="Extra Dagster run tags")


def get_jobs() -> DagsterJobs:
    return DagsterJobs(load_settings().dagster_url, timeout_s=TIMEOUT_S)


JobsDep = Annotated[DagsterJobs, Depends(get_jobs)]
Admin = Annotated[ApiKey, Depends(require("admin"))]


async def _dagster(func, *args, **kwargs):
    """Run one blocking client call; its errors become HTTP errors."""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except DagsterUnavailable as exc:
        raise HTTPException(503, detail={"field": None, "reason": str(exc)}, headers={"Retry-After": "10"})
    except RunNotFound as exc:
        raise HTTPException(404, detail={"field": "run_id", "reason": str(exc)})
    except RunNotTerminated as exc:
        raise HTTPException(409, detail={"field": "run_id", "reason": str(exc)})
    except LaunchRejected as exc:
        raise HTTPException(422, detail={"field": "run_config", "reason": str(exc)})


def _run_of_job(jobs: DagsterJobs, run_id: str) -> RunInfo:
    run = jobs.run(run_id)
    if run.job_name != JOB_NAME:
        raise RunNotFound(f"run {run_id} belongs to {run.job_name}, not {JOB_NAME}")
    return run


@router.post("", status_code=201, summary="Launch retraining_job (optional run config and tags)")
async def launch(jobs: JobsDep, key: Admin, body: LaunchRequest | None = None) -> dict[str, Any]:
    body = body or LaunchRequest()
    tags = {**(body.tags or {}), KEY_TAG: key.id}
    run_id = await _dagster(jobs.launch, JOB_NAME, run_config=body.run_config, tags=tags)
    return asdict(await _dagster(jobs.run, run_id))


@router.get("", summary="Recent retraining_job runs, newest first")
async def list_runs(jobs: JobsDep, key: Admin, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    return {"runs": [asdict(run) for run in await _dagster(jobs.runs, JOB_NAME, limit=limit)]}


@router.post("/check", summary="Whether the retraining sensor's threshold of new rated feedback is met now")
async def check(store: StoreDep, jobs: JobsDep, key: Annotated[ApiKey, Depends(require("read"))]) -> dict[str, Any]:
    # Imported here: the sensor's module loads dagster (seconds), which only this endpoint needs.
    from feedback_pipeline.defs.automation import check_new_rated, parse_watermark

    watermark = parse_watermark(await _dagster(jobs.latest_text_metadata, "sft_dataset", "data_watermark"))
    cursor = await _dagster(jobs.sensor_cursor, SENSOR_NAME)
    result = await run_in_threadpool(check_new_rated, store, watermark, cursor,
                                     load_settings().retrain_min_new_feedback)
    return jsonable_encoder({**asdict(result), "due": result.due, "reason": result.reason})


@router.get("/{run_id}", summary="One retraining_job run and its status")
async def get_run(run_id: str, jobs: JobsDep, key: Admin) -> dict[str, Any]:
    return asdict(await _dagster(_run_of_job, jobs, run_id))


@router.post("/{run_id}/cancel", status_code=202, summary="Terminate a run; 409 when it has already finished")
async def cancel(run_id: str, jobs: JobsDep, key: Admin) -> dict[str, Any]:
    await _dagster(_run_of_job, jobs, run_id)
    return {"run_id": run_id, "status": await _dagster(jobs.terminate, run_id)}
