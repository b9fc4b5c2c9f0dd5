"""OpenAI-compatible chat: ``POST /v1/chat/completions`` (also streamed as SSE) and ``GET /v1/models``.

Mounted only when ``SERVING_ENABLED=1``. Any OpenAI client works (``base_url=http://HOST/v1``, ``api_key=`` a
write key). The router picks the variant: ``model`` "auto" or the chat model's registered name lets experiments and
task rules decide; ``NAME@ALIAS`` or ``NAME/VERSION`` pins one (outside any experiment). Who the user is: ``user``
(or ``safety_identifier``, or the ``X-User-Id`` header); ``metadata`` may carry ``session_id``, ``intent``,
``project`` and ``task`` (or send them as top-level extras).

Every answer gets a response id (``chatcmpl-<uuid>``) and names the variant that produced it, in the body
(``feedback_pipeline``) and in ``X-Response-Id`` / ``X-Model`` / ``X-Model-Version`` / ``X-Experiment`` / ``X-Arm``
headers. It is written to ``chat_responses`` before the answer is sent (a stream: before its first chunk), so
feedback posted with ``response_id`` is attributed to exactly that variant. Generation runs in the threadpool.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from feedback_pipeline.ingestion.strict import MAX_LONG_TEXT, MAX_SHORT_TEXT
from feedback_pipeline.service.deps import current_key, require
from feedback_pipeline.service.keys import ApiKey
from feedback_pipeline.service.ratelimit import rate_limited
from feedback_pipeline.serving.models import Completion, NoModelAvailable
from feedback_pipeline.serving.router import ModelRef, RequestContext, Route
from feedback_pipeline.serving.runtime import Serving
from feedback_pipeline.store.experiments import ServedResponse, finish_response, record_response

router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[Depends(rate_limited)])
Short = Field(default=None, max_length=MAX_SHORT_TEXT)


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(description="text, or OpenAI content parts of type text")


class ChatRequest(BaseModel):
    """The OpenAI chat request fields this service honours; other OpenAI fields are accepted and ignored."""
    model_config = ConfigDict(extra="ignore")

    model: str = Field("auto", max_length=MAX_SHORT_TEXT)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: Literal[1] = 1
    stream: bool = False
    user: str | None = Short
    safety_identifier: str | None = Short
    metadata: dict[str, str] | None = None
    session_id: str | None = Short
    intent: str | None = Short
    project: str | None = Short
    task: str | None = Short


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _text(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(p.get("text", "") for p in message.content if p.get("type") == "text")


def _context(body: ChatRequest, request: Request) -> RequestContext:
    meta = body.metadata or {}

    def pick(name: str) -> str | None:
        value = getattr(body, name) or meta.get(name) or request.headers.get(f"x-{name.replace('_', '-')}")
        return value[:MAX_SHORT_TEXT] if value else None

    user = body.user or body.safety_identifier or meta.get("user_id") or request.headers.get("x-user-id")
    return RequestContext(user_id=user[:MAX_SHORT_TEXT] if user else None, session_id=pick("session_id"),
                          intent=pick("intent"), project=pick("project"), task=pick("task"))


def _route(serving: Serving, body: ChatRequest, ctx: RequestContext) -> Route:
    if body.model in ("auto", "", serving.router.champion.model):
        return serving.router.route(ctx, serving.experiments())
    try:
        pinned = ModelRef.parse(body.model)
    except ValueError as exc:
        raise HTTPException(422, detail={"field": "model", "reason": f"{exc}, or auto"}) from None
    return Route(serving.router.with_fallbacks(pinned))


def _variant(served: ServedResponse) -> dict[str, Any]:
    return {"response_id": served.response_id, "registered_model": served.registered_model,
            "model_version": served.model_version, "alias": served.alias, "experiment": served.experiment,
            "arm": served.arm}


def _headers(served: ServedResponse) -> dict[str, str]:
    values = {"X-Response-Id": served.response_id, "X-Model": served.registered_model,
              "X-Model-Version": served.model_version, "X-Experiment": served.experiment, "X-Arm": served.arm}
    return {k: v for k, v in values.items() if v}


@router.post("/chat/completions", summary="OpenAI-compatible chat completion by the routed variant (write scope)",
             responses={503: {"description": "no model could be loaded"}})
async def chat_completions(body: ChatRequest, request: Request,
                           key: Annotated[ApiKey, Depends(require("write"))]):
    serving = _serving(request)
    ctx = _context(body, request)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m)} for m in body.messages]
    if sum(len(m["content"]) for m in messages) > MAX_LONG_TEXT:
        raise HTTPException(422, detail={"field": "messages", "reason": f"more than {MAX_LONG_TEXT} characters"})
    max_tokens = min(body.max_completion_tokens or body.max_tokens or serving.max_tokens, serving.max_tokens)
    route = await run_in_threadpool(_route, serving, body, ctx)
    try:
        ref, model = await run_in_threadpool(serving.pool.serve, route.candidates)
    except NoModelAvailable as exc:
        raise HTTPException(503, detail={"field": None, "reason": str(exc)}, headers={"Retry-After": "10"}) from None
    # An arm whose model failed to load was answered by a fallback: that answer belongs to no arm.
    in_arm = route.experiment is not None and ref == route.candidates[0]
    served = ServedResponse(
        response_id=f"chatcmpl-{uuid.uuid4()}", registered_model=model.registered_model, model_version=model.version,
        served_at=datetime.now(timezone.utc), alias=ref.alias, experiment=route.experiment if in_arm else None,
        arm=route.arm if in_arm else None, user_id=ctx.user_id, session_id=ctx.session_id, intent=ctx.intent,
        project=ctx.project, task=ctx.task)
    started = time.perf_counter()
    if body.stream:
        await run_in_threadpool(record_response, serving.store, served)
        pieces = model.stream(messages, max_tokens, body.temperature, body.top_p)
        return StreamingResponse(_sse(serving, served, pieces, started), media_type="text/event-stream",
                                 headers=_headers(served))
    completion: Completion = await run_in_threadpool(model.complete, messages, max_tokens, body.temperature, body.top_p)
    served = replace(served, latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=completion.prompt_tokens,
                     completion_tokens=completion.completion_tokens)
    await run_in_threadpool(record_response, serving.store, served)
    return JSONResponse(_completion_body(served, completion), headers=_headers(served))


def _model_name(served: ServedResponse) -> str:
    return f"{served.registered_model}/{served.model_version}"


def _completion_body(served: ServedResponse, completion: Completion) -> dict[str, Any]:
    return {"id": served.response_id, "object": "chat.completion", "created": int(served.served_at.timestamp()),
            "model": _model_name(served),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason}],
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                      "total_tokens": completion.prompt_tokens + completion.completion_tokens},
            "feedback_pipeline": _variant(served)}


async def _sse(serving: Serving, served: ServedResponse, pieces, started: float):
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        data = {"id": served.response_id, "object": "chat.completion.chunk", "created": int(served.served_at.timestamp()),
                "model": _model_name(served), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "feedback_pipeline": _variant(served), **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for piece in iterate_in_threadpool(pieces):
        if isinstance(piece, Completion):
            await run_in_threadpool(finish_response, serving.store, served.response_id,
                                    (time.perf_counter() - started) * 1000, piece.prompt_tokens,
                                    piece.completion_tokens)
            usage = {"prompt_tokens": piece.prompt_tokens, "completion_tokens": piece.completion_tokens,
                     "total_tokens": piece.prompt_tokens + piece.completion_tokens}
            yield chunk({}, piece.finish_reason, usage=usage)
        else:
            yield chunk({"content": piece})
    yield "data: [DONE]\n\n"


@router.get("/models", summary="The routed model and the variants loaded now (any valid key)")
async def list_models(request: Request, key: Annotated[ApiKey, Depends(current_key)]) -> dict[str, Any]:
    serving = _serving(request)
    data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "feedback-pipeline",
             "description": f"routed: experiments, task rules, then {serving.router.champion}"}]
    for ref, model in sorted(serving.pool.loaded().items(), key=lambda item: str(item[0])):
        data.append({"id": str(ref), "object": "model", "created": 0, "owned_by": "feedback-pipeline",
                     "registered_model": model.registered_model, "version": model.version,
                     "load_seconds": round(getattr(model, "load_s", 0.0), 2)})
    return {"object": "list", "data": data}
