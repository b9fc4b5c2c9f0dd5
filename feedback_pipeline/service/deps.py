"""Dependencies: the process's FeedbackStore and the API key of the request (401 without, 403 wrong scope or,
for a key bound to browser origins, a missing or foreign ``Origin`` header)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from feedback_pipeline.service.keys import ApiKey, verify
from feedback_pipeline.store.repository import FeedbackStore


def get_store(request: Request) -> FeedbackStore:
    return request.app.state.store


StoreDep = Annotated[FeedbackStore, Depends(get_store)]


def _secret(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip() or None


# A verified key is trusted for this long without asking the database again: revoking a key takes effect in a
# running service within KEY_CACHE_S seconds. Unknown secrets are never cached.
KEY_CACHE_S = 2.0
_MAX_CACHED = 10_000


async def current_key(request: Request, store: StoreDep) -> ApiKey:
    secret, now = _secret(request), time.monotonic()
    cache: dict = request.app.state.key_cache
    hit = cache.get(secret) if secret else None
    if hit is not None and hit[1] > now:
        key = hit[0]
    else:
        key = await run_in_threadpool(verify, store, secret)
        if key is not None:
            if len(cache) >= _MAX_CACHED:
                cache.clear()
            cache[secret] = (key, now + KEY_CACHE_S)
    if key is None:
        raise HTTPException(401, detail={"field": "Authorization", "reason": "missing, unknown or revoked API key"},
                            headers={"WWW-Authenticate": "Bearer"})
    if not key.allows_origin(request.headers.get("origin")):
        raise HTTPException(403, detail={"field": "Origin", "reason": "this key is bound to other browser origins "
                                         f"(request Origin: {request.headers.get('origin') or 'none'})"})
    return key


def require(scope: str):
    """A dependency returning the request's key when it has ``scope`` (admin has every scope)."""
    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        if not key.allows(scope):
            raise HTTPException(403, detail={"field": "Authorization", "reason": f"this key lacks the {scope!r} scope"})
        return key
    return check
