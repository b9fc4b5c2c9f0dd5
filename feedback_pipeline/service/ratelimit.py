"""Per-key rate limit: a token bucket per API key in this process (``FEEDBACK_RATE_LIMIT_PER_MINUTE``); over it,
429 with ``Retry-After``. With several service processes each enforces its own share."""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from feedback_pipeline.service.deps import current_key
from feedback_pipeline.service.keys import ApiKey


class TokenBuckets:
    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def take(self, key_id: str, now: float | None = None) -> float:
        """0 when the request may go on, else the seconds until a token is back."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1 - tokens) / self.rate


# async: runs on the event loop, so the buckets need no lock.
async def rate_limited(request: Request, key: Annotated[ApiKey, Depends(current_key)]) -> None:
    buckets: TokenBuckets = request.app.state.rate_limits
    wait = buckets.take(key.id)
    if wait > 0:
        raise HTTPException(429, detail={"field": "Authorization", "reason": (
            f"rate limit of {int(buckets.capacity)} requests per minute for this key reached")},
            headers={"Retry-After": str(max(1, math.ceil(wait)))})
