"""Request read deadline: the whole body must arrive within ``read_timeout_s`` of the request's start, so a
client trickling bytes (1 byte/s) is answered 408 and its connection closed instead of holding a worker forever.

uvicorn bounds the rest: ``limit_concurrency`` (503 beyond ``FEEDBACK_MAX_CONNECTIONS``), ``timeout_keep_alive``,
h11's header size cap, and no ``Server`` header.
"""

from __future__ import annotations

import asyncio
import json


class ReadDeadline:
    def __init__(self, app, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False
        started = False

        async def timed_receive():
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect (streaming responses)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise _TooSlow() from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except _TooSlow:
            if started:
                raise
            body = json.dumps({"errors": [{"field": "body", "reason": (
                f"not received within {self.timeout_s:g} s")}]}).encode()
            await send({"type": "http.response.start", "status": 408, "headers": [
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class _TooSlow(Exception):
    pass
