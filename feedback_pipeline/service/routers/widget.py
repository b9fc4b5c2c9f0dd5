"""``/widget.js`` (the embeddable feedback widget) and ``/demo`` (a page of canned answers using it).

Both are static files in ``service/static``: no build step. The demo page never contains a key; its script reads
``?key=`` from its own URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["widget"])


@router.get("/widget.js", include_in_schema=False)
async def widget_js() -> FileResponse:
    return FileResponse(STATIC / "widget.js", media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


@router.get("/demo", include_in_schema=False)
async def demo() -> FileResponse:
    return FileResponse(STATIC / "demo.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 "X-Content-Type-Options": "nosniff"})
