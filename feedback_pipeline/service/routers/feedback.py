"""``/v1/feedback``: submit one or a batch, read, list, replace, patch, delete, export.

A record goes through the same strict read and ``normalise_record`` as the importers (``ingestion/strict.py``).
Ids: a client-given ``id`` or an ``Idempotency-Key`` header (scoped to the API key) makes a retry land on the same
row; without either the server assigns a fresh uuid4, so two users' identical answers are two rows. The writing
key's id is kept in ``metadata.api_key_id``: only that key (or an admin key) may change or delete the record; the
check and the write share one transaction (the row is locked on PostgreSQL). Every 2xx means committed.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from feedback_pipeline.datasets.export import sft_export_lines
from feedback_pipeline.ingestion.records import COLUMNS, SERVED_FIELDS, FeedbackValidationError, _present
from feedback_pipeline.ingestion.strict import MAX_BODY_BYTES, check_value, parse_json, validate_record
from feedback_pipeline.service.deps import StoreDep, require
from feedback_pipeline.service.keys import ApiKey
from feedback_pipeline.service.openapi import BATCH_BODY, RECORD_BODY, PATCH_BODY
from feedback_pipeline.service.ratelimit import rate_limited
from feedback_pipeline.store.experiments import attribute
from feedback_pipeline.store.feedback_query import (RATINGS, BadCursor, FeedbackFilter, list_page, plain_row,
                                                    read_filtered_frame)
from feedback_pipeline.store.repository import CONFLICT_REASON, FEEDBACK, FeedbackStore

router = APIRouter(prefix="/v1/feedback", tags=["feedback"], dependencies=[Depends(rate_limited)])
SOURCE = "api"
WRITER_KEY = "api_key_id"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("3b0d4f6e-5c1a-4e8b-9f27-1d6c2a8e7b90")
MAX_IDEMPOTENCY_KEY = 200
MAX_BATCH_RECORDS = 1000
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_PAGE = 500
# Fields a PUT/PATCH may not change: identity, provenance and the server's own clock.
_FIXED = ("id", "ingested_at", "source", "rating_thumb", "rating_raw", *SERVED_FIELDS)
_UNSERVED = "no chat answer was served with this response id"
_RATING_INPUTS = ("rating", "stars", "rating_stars", "rating_scale")

Writer = Annotated[ApiKey, Depends(require("write"))]
Reader = Annotated[ApiKey, Depends(require("read"))]


def _error(status: int, field: str, reason: str) -> HTTPException:
    return HTTPException(status, detail={"field": field, "reason": reason})


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _error(413 if declared.isdigit() else 400, "Content-Length", f"must be a number of bytes up to {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _error(413, "body", f"larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _idempotent_id(key: ApiKey, idempotency_key: str | None, index: int | None = None) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not idempotency_key.strip() or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise FeedbackValidationError("Idempotency-Key", f"must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    check_value(idempotency_key, "Idempotency-Key")
    suffix = "" if index is None else f"\n{index}"
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{key.id}\n{idempotency_key}{suffix}"))


def _new_row(record: Any, key: ApiKey, fallback_id: str) -> dict:
    if isinstance(record, dict) and not _present(record.get("id")):
        record = {**record, "id": fallback_id}
    row = validate_record(record, source=SOURCE, checked=True)  # parse_json checked it
    row["metadata"] = {**row["metadata"], WRITER_KEY: key.id}
    return row


def _owners(conn, ids: list[str], lock: bool) -> dict[str, str | None]:
    """Existing ids among ``ids`` and the key that wrote each; rows locked until commit on PostgreSQL."""
    query = sa.select(FEEDBACK.c.id, FEEDBACK.c.metadata).where(FEEDBACK.c.id.in_(ids))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {str(r.id): (r.metadata or {}).get(WRITER_KEY) if isinstance(r.metadata, dict) else None
            for r in conn.execute(query)}


def _may_change(key: ApiKey, writer: str | None) -> bool:
    return writer == key.id or "admin" in key.scopes


def _save(store: FeedbackStore, rows: list[dict], key: ApiKey, fresh: bool = False) -> list[str]:
    """Write ``rows`` in one transaction; per row: inserted, updated, unchanged, conflict (a known id with another
    query or response: not written), forbidden (another key's id) or unserved (a response_id no answer had; rows
    naming a served one are attributed to its variant first).
    ``fresh``: every id was just minted here (uuid4), so no owner can exist and the lookups are skipped."""
    with store.engine.begin() as conn:
        unserved = attribute(conn, rows)
        owners = {} if fresh else _owners(conn, [r["id"] for r in rows], lock=True)
        refused = ["unserved" if r["id"] in unserved else "forbidden"
                   if r["id"] in owners and not _may_change(key, owners[r["id"]]) else None for r in rows]
        allowed = [r for r, no in zip(rows, refused) if no is None]
        outcomes = iter(store.write_in(conn, allowed, fresh=fresh)[1] if allowed else [])
    return [no or next(outcomes) for no in refused]


@router.post("", status_code=201, summary="Submit one record; 201 = committed, 200 = already stored",
             openapi_extra=RECORD_BODY,
             responses={409: {"description": "the id belongs to a record another key wrote, or is stored with "
                                             "another query or response"}})
async def create_feedback(request: Request, response: Response, store: StoreDep, key: Writer,
                          idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    record = parse_json(await _read_body(request))
    if not isinstance(record, dict):
        raise FeedbackValidationError("body", f"must be one JSON object, got {type(record).__name__}")
    fresh = idempotency_key is None and not _present(record.get("id"))
    row = _new_row(record, key, _idempotent_id(key, idempotency_key))
    outcome = (await run_in_threadpool(_save, store, [row], key, fresh))[0]
    if outcome == "forbidden":
        raise _error(409, "id", "a record with this id was written by another key")
    if outcome == "conflict":
        raise _error(409, "id", CONFLICT_REASON)
    if outcome == "unserved":
        raise _error(422, "response_id", _UNSERVED)
    if outcome != "inserted":
        response.status_code = 200
    return {"id": row["id"], "created": outcome == "inserted"}


@router.post("/batch", summary=f"Submit up to {MAX_BATCH_RECORDS} records ({MAX_BATCH_BYTES // 2**20} MB); "
                               "per-record results", openapi_extra=BATCH_BODY)
async def create_batch(request: Request, store: StoreDep, key: Writer,
                       idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """Body ``{"records": [...]}``. Valid records are committed together; each bad one is reported by index with
    its field and reason and stores nothing. With an ``Idempotency-Key`` a retried batch lands on the same rows."""
    body = parse_json(await _read_body(request, MAX_BATCH_BYTES))
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise FeedbackValidationError("records", "must be a JSON list of records")
    if len(records) > MAX_BATCH_RECORDS:
        raise FeedbackValidationError("records", f"holds {len(records)} records, more than {MAX_BATCH_RECORDS}")
    if extra := sorted(set(body) - {"records"}):
        raise FeedbackValidationError(extra[0], "unknown field")
    results: list[dict] = [{} for _ in records]
    rows, positions = [], []
    for i, record in enumerate(records):
        try:
            rows.append(_new_row(record, key, _idempotent_id(key, idempotency_key, i)))
            positions.append(i)
        except FeedbackValidationError as exc:
            results[i] = {"index": i, "status": "rejected", "errors": [{**exc.as_dict(),
                                                                        "field": f"records[{i}].{exc.field}"}]}
    seen: set[str] = set()
    for i, row in zip(positions, rows):
        if row["id"] in seen:  # one statement cannot upsert a row twice: the first one wins, the copy is told why
            results[i] = {"index": i, "status": "rejected", "errors": [
                {"field": f"records[{i}].id", "reason": "repeats the id of an earlier record in this batch"}]}
        seen.add(row["id"])
    keep = [(i, row) for i, row in zip(positions, rows) if not results[i]]
    fresh = idempotency_key is None and not any(isinstance(r, dict) and _present(r.get("id")) for r in records)
    outcomes = await run_in_threadpool(_save, store, [row for _, row in keep], key, fresh) if keep else []
    refusals = {"forbidden": ("id", "a record with this id was written by another key"),
                "conflict": ("id", CONFLICT_REASON), "unserved": ("response_id", _UNSERVED)}
    for (i, row), outcome in zip(keep, outcomes):
        results[i] = {"index": i, "id": row["id"], "status": outcome} if outcome not in refusals else {
            "index": i, "id": row["id"], "status": "rejected",
            "errors": [{"field": f"records[{i}].{refusals[outcome][0]}", "reason": refusals[outcome][1]}]}
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"counts": counts, "results": results}


Label = Annotated[str | None, Query(max_length=512)]


def _filter(model_name: Label = None, model_version: Label = None, intent: Label = None, project: Label = None,
            subject: Label = None, user_id: Label = None,
            rating: Annotated[Literal[tuple(RATINGS)] | None, Query()] = None,  # type: ignore[valid-type]
            since: Annotated[datetime | None, Query(description="created_at >= since (UTC when no zone)")] = None,
            until: Annotated[datetime | None, Query(description="created_at < until")] = None) -> FeedbackFilter:
    for name, value in (("model_name", model_name), ("model_version", model_version), ("intent", intent),
                        ("project", project), ("subject", subject), ("user_id", user_id)):
        check_value(value, name)
    if since and until and since.replace(tzinfo=since.tzinfo or timezone.utc) >= until.replace(
            tzinfo=until.tzinfo or timezone.utc):
        raise FeedbackValidationError("until", "must be later than since")
    return FeedbackFilter(model_name, model_version, intent, project, subject, user_id, rating, since, until)


FilterDep = Annotated[FeedbackFilter, Depends(_filter)]


def _public(row: dict) -> dict:
    return jsonable_encoder(row)


@router.get("", summary="List records newest first, with filters and a cursor (read scope)")
async def list_feedback(store: StoreDep, key: Reader, flt: FilterDep,
                        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                        cursor: Annotated[str | None, Query(max_length=500)] = None) -> dict[str, Any]:
    try:
        rows, next_cursor = await run_in_threadpool(list_page, store, flt, limit, cursor)
    except BadCursor as exc:
        raise FeedbackValidationError("cursor", str(exc)) from None
    return {"items": [_public(r) for r in rows], "next_cursor": next_cursor}


@router.get("/export", summary="Stream the SFT export (OpenAI chat JSONL with weights); raw needs admin",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "one JSON record per line"}})
async def export_feedback(store: StoreDep, key: Reader, flt: FilterDep,
                          redact: Annotated[bool, Query(description="false needs an admin key")] = True):
    """The lines ``sft_dataset`` would write for the selected feedback (same cleaning, spam signals, split and
    weights), each with its ``split``. Redacted unless ``redact=false`` with an admin key."""
    if not redact and "admin" not in key.scopes:
        raise _error(403, "redact", "an unredacted export needs an admin key")
    frame = await run_in_threadpool(read_filtered_frame, store, flt)
    lines = await run_in_threadpool(lambda: list(sft_export_lines(frame, redact=redact)))
    return StreamingResponse(iterate_in_threadpool(iter(lines)), media_type="application/x-ndjson")


def _fetch(store: FeedbackStore, feedback_id: str) -> dict | None:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.id == feedback_id)).first()
    return plain_row(row) if row is not None else None


@router.get("/{feedback_id}", summary="One record (read scope)")
async def get_feedback(feedback_id: uuid.UUID, store: StoreDep, key: Reader) -> dict[str, Any]:
    row = await run_in_threadpool(_fetch, store, str(feedback_id))
    if row is None:
        raise _error(404, "id", f"no feedback {feedback_id}")
    return _public(row)


def _as_input(stored: dict) -> dict:
    """A stored row back in the submitted shape, so a PATCH re-validates the whole merged record."""
    record = {k: v for k, v in stored.items() if k in COLUMNS and k not in _FIXED and v is not None}
    if stored.get("rating_stars") is not None:
        record.pop("rating", None)
    return record


def _locked_writer(conn, feedback_id: str, key: ApiKey, verb: str) -> str | None:
    """The key that wrote the record, its row locked until commit; 404 when missing, 403 when ``key`` may not."""
    owners = _owners(conn, [feedback_id], lock=True)
    if feedback_id not in owners:
        raise _error(404, "id", f"no feedback {feedback_id}")
    if not _may_change(key, owners[feedback_id]):
        raise _error(403, "id", f"only the key that wrote it or an admin key may {verb} it")
    return owners[feedback_id]


def _replace(store: FeedbackStore, feedback_id: str, body: dict, key: ApiKey, partial: bool) -> dict:
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        writer = _locked_writer(conn, feedback_id, key, "change")
        stored = plain_row(conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.id == feedback_id)).one())
        base = _as_input(stored) if partial else {}
        if any(name in body for name in _RATING_INPUTS):
            for name in _RATING_INPUTS:
                base.pop(name, None)
        merged = {**base, **body, "id": feedback_id}
        merged.setdefault("created_at", stored["created_at"])
        if "updated_at" not in body:  # a change is newer than what is stored, whatever that said
            merged["updated_at"] = now
        row = validate_record(merged, source=stored["source"], now=now)
        if partial and not any(name in body for name in _RATING_INPUTS):  # keep the rating exactly as it came
            for name in ("rating", "rating_thumb", "rating_stars", "rating_raw", "rating_scale"):
                row[name] = stored[name]
        row["metadata"] = {**row["metadata"], WRITER_KEY: writer}
        if attribute(conn, [row]):
            raise FeedbackValidationError("response_id", _UNSERVED)
        values = {k: v for k, v in row.items() if k not in ("id", "ingested_at", "source")}
        if store.dialect == "sqlite":
            values = {k: (v.replace(tzinfo=None) if isinstance(v, datetime) else v) for k, v in values.items()}
        conn.execute(sa.update(FEEDBACK).where(FEEDBACK.c.id == feedback_id).values(**values))
        return plain_row(conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.id == feedback_id)).one())


async def _change(request: Request, store: FeedbackStore, feedback_id: uuid.UUID, key: ApiKey, partial: bool):
    body = parse_json(await _read_body(request))
    if not isinstance(body, dict):
        raise FeedbackValidationError("body", f"must be one JSON object, got {type(body).__name__}")
    if "id" in body and str(body["id"]) != str(feedback_id):
        raise FeedbackValidationError("id", "differs from the id in the path")
    if fixed := sorted(set(body) & (set(_FIXED) - {"id"})):
        raise FeedbackValidationError(fixed[0], "is set by the server and cannot be changed")
    return _public(await run_in_threadpool(_replace, store, str(feedback_id), body, key, partial))


@router.put("/{feedback_id}", summary="Replace a record (the key that wrote it, or admin)", openapi_extra=RECORD_BODY)
async def put_feedback(feedback_id: uuid.UUID, request: Request, store: StoreDep, key: Writer) -> dict[str, Any]:
    return await _change(request, store, feedback_id, key, partial=False)


@router.patch("/{feedback_id}", summary="Change some fields, e.g. a re-rating or a comment (writer or admin)",
              openapi_extra=PATCH_BODY)
async def patch_feedback(feedback_id: uuid.UUID, request: Request, store: StoreDep, key: Writer) -> dict[str, Any]:
    return await _change(request, store, feedback_id, key, partial=True)


def _delete(store: FeedbackStore, feedback_id: str, key: ApiKey) -> None:
    from feedback_pipeline.store.cleaned import CLEANED

    with store.engine.begin() as conn:
        _locked_writer(conn, feedback_id, key, "delete")
        conn.execute(sa.delete(CLEANED).where(CLEANED.c.id == feedback_id))
        conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.id == feedback_id))


@router.delete("/{feedback_id}", status_code=204, summary="Delete one record (the key that wrote it, or admin)")
async def delete_feedback(feedback_id: uuid.UUID, store: StoreDep, key: Writer) -> Response:
    await run_in_threadpool(_delete, store, str(feedback_id), key)
    return Response(status_code=204)
