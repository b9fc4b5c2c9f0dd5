"""``/v1/feedback``: submit one record, read it, delete it.

A record goes through the same ``normalise_record`` as the importers and the old ``http.server`` endpoint, after
a strict JSON read (``ingestion/strict.py``). Ids: a client-given ``id`` or an ``Idempotency-Key`` header (scoped
to the API key) makes a retry land on the same row; without either the server assigns a fresh uuid4, so two
users' identical answers are two rows. The writing key's id is kept in ``metadata.api_key_id``: only that key
(or an admin key) may overwrite or delete the record.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.ingestion.records import FeedbackValidationError, _present
from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.service.keys import ApiKey
from feedback_pipeline.ingestion.strict import MAX_BODY_BYTES, check_value, parse_json, validate_record
from feedback_pipeline.store.repository import FEEDBACK, FeedbackStore, _utc

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
SOURCE = "api"
WRITER_KEY = "api_key_id"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("3b0d4f6e-5c1a-4e8b-9f27-1d6c2a8e7b90")
MAX_IDEMPOTENCY_KEY = 200


class BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(413 if declared.isdigit() else 400, detail={
            "field": "Content-Length", "reason": f"must be a number of bytes up to {MAX_BODY_BYTES}"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, detail={"field": "body", "reason": f"larger than {MAX_BODY_BYTES} bytes"})
        chunks.append(chunk)
    return b"".join(chunks)


def _fresh_id(key: ApiKey, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not idempotency_key.strip() or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise FeedbackValidationError("Idempotency-Key", f"must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{key.id}\n{idempotency_key}"))


def _writer(store: FeedbackStore, conn, feedback_id: str) -> tuple[bool, str | None]:
    row = conn.execute(sa.select(FEEDBACK.c.metadata).where(FEEDBACK.c.id == feedback_id)).first()
    if row is None:
        return False, None
    metadata = row.metadata if isinstance(row.metadata, dict) else {}
    return True, metadata.get(WRITER_KEY)


def _save(store: FeedbackStore, row: dict, key: ApiKey) -> bool:
    """Write one row (committed on return); True when it is new. 409 when another key wrote this id."""
    with store.engine.connect() as conn:
        exists, writer = _writer(store, conn, row["id"])
    if exists and writer != key.id and "admin" not in key.scopes:
        raise HTTPException(409, detail={"field": "id", "reason": "a record with this id was written by another key"})
    return store.write([row]).inserted == 1


@router.post("", status_code=201, summary="Submit one feedback record; 201 = committed, 200 = already stored")
async def create_feedback(request: Request, response: Response, store: StoreDep,
                          key: Annotated[ApiKey, Depends(require("write"))],
                          idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    record = parse_json(await _read_body(request))
    if not isinstance(record, dict):
        raise FeedbackValidationError("body", f"must be one JSON object, got {type(record).__name__}")
    if idempotency_key is not None:
        check_value(idempotency_key, "Idempotency-Key")
    if not _present(record.get("id")):
        record = {**record, "id": _fresh_id(key, idempotency_key)}
    row = validate_record(record, source=SOURCE)
    row["metadata"] = {**row["metadata"], WRITER_KEY: key.id}
    created = await run_in_threadpool(_save, store, row, key)
    if not created:
        response.status_code = 200
    return {"id": row["id"], "created": created}


def _fetch(store: FeedbackStore, feedback_id: str) -> dict | None:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.id == feedback_id)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    for name in ("created_at", "updated_at", "ingested_at"):
        out[name] = _utc(out[name])
    return out


@router.get("/{feedback_id}", summary="One feedback record (read scope)")
async def get_feedback(feedback_id: uuid.UUID, store: StoreDep,
                       key: Annotated[ApiKey, Depends(require("read"))]) -> dict[str, Any]:
    row = await run_in_threadpool(_fetch, store, str(feedback_id))
    if row is None:
        raise HTTPException(404, detail={"field": "id", "reason": f"no feedback {feedback_id}"})
    return jsonable_encoder(row)


def _delete(store: FeedbackStore, feedback_id: str, key: ApiKey) -> None:
    from feedback_pipeline.store.cleaned import CLEANED

    with store.engine.begin() as conn:
        exists, writer = _writer(store, conn, feedback_id)
        if not exists:
            raise HTTPException(404, detail={"field": "id", "reason": f"no feedback {feedback_id}"})
        if writer != key.id and "admin" not in key.scopes:
            raise HTTPException(403, detail={"field": "id", "reason": "only the key that wrote it or an admin key"})
        conn.execute(sa.delete(CLEANED).where(CLEANED.c.id == feedback_id))
        conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.id == feedback_id))


@router.delete("/{feedback_id}", status_code=204, summary="Delete one record (the key that wrote it, or admin)")
async def delete_feedback(feedback_id: uuid.UUID, store: StoreDep,
                          key: Annotated[ApiKey, Depends(require("write"))]) -> Response:
    await run_in_threadpool(_delete, store, str(feedback_id), key)
    return Response(status_code=204)
