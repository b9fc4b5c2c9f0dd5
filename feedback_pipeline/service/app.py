"""The capture service: ``create_app(settings)``; one FeedbackStore per process, created in the lifespan.

Nothing touches the database at import time. Errors all have the shape ``{"errors": [{"field", "reason"}]}``:
4xx for anything the client sent, 503 only when the database cannot be used.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from feedback_pipeline.ingestion.records import FeedbackValidationError
from feedback_pipeline.service.limits import ReadDeadline
from feedback_pipeline.service.openapi import COMPONENTS
from feedback_pipeline.service.ratelimit import TokenBuckets
from feedback_pipeline.service.routers import feedback, users
from feedback_pipeline.service.routers import stats
from feedback_pipeline.service.routers import widget
from feedback_pipeline.service.routers import improvement, jobs
from feedback_pipeline.service.routers import chat
from feedback_pipeline.settings import Settings, load_settings
from feedback_pipeline.store import daily_stats
from feedback_pipeline.store.repository import FeedbackStore

log = logging.getLogger(__name__)


def _errors(status: int, field: str | None, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "reason": reason}]}, status_code=status, headers=headers)


def _migrate(app: FastAPI) -> None:
    if not app.state.migrated:
        app.state.store.migrate()
        app.state.migrated = True


COMPACT_EVERY_S = 5.0


async def _compact_stats_forever(app: FastAPI) -> None:
    """Fold the stats triggers' deltas into the daily summary every few seconds (PostgreSQL)."""
    while True:
        await asyncio.sleep(COMPACT_EVERY_S)
        try:
            if app.state.migrated:
                await run_in_threadpool(daily_stats.compact, app.state.store.engine)
        except Exception as exc:  # the database may be down: readers stay exact, the next round catches up
            log.warning("stats compaction failed: %s", exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = FeedbackStore(settings.feedback_db_url, pre_ping=False)
        app.state.migrated = False
        try:
            await run_in_threadpool(_migrate, app)
        except Exception as exc:  # the service still starts: /readyz says 503 and retries the migration
            log.warning("database not ready at startup: %s", exc)
        # Only PostgreSQL's triggers append deltas; SQLite's update the summary directly.
        compactor = asyncio.create_task(_compact_stats_forever(app)) if app.state.store.dialect == "postgresql" \
            else None
        if settings.serving_enabled:  # only then are models loaded: the capture-only service stays light
            from feedback_pipeline.serving.runtime import Serving

            app.state.serving = await run_in_threadpool(Serving.from_settings, settings, app.state.store)
            app.state.serving.start()
        yield
        if compactor is not None:
            compactor.cancel()
        if settings.serving_enabled:
            app.state.serving.stop()
        app.state.store.dispose()

    app = FastAPI(title="feedback capture", version="1", lifespan=lifespan)
    app.state.rate_limits = TokenBuckets(settings.rate_limit_per_minute)
    app.state.key_cache = {}
    app.include_router(stats.router)
    app.include_router(feedback.router)
    app.include_router(improvement.router)
    app.include_router(jobs.router)
    app.include_router(users.router)
    app.include_router(widget.router)
    if settings.serving_enabled:
        app.include_router(chat.router)
    # Browser pages on these origins (FEEDBACK_CORS_ORIGINS) may call the API; any other origin gets no CORS headers.
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key"], max_age=600)
    app.add_middleware(ReadDeadline, timeout_s=settings.read_timeout_s)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description="Feedback capture: auth with `Authorization: Bearer <key>`.")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(FeedbackValidationError)
    async def invalid_record(request: Request, exc: FeedbackValidationError):
        return _errors(400 if exc.field == "body" else 422, exc.field, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "reason": e.get("msg", "")}
                  for e in exc.errors()]
        return JSONResponse({"errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, dict) else {"field": None, "reason": str(exc.detail)}
        return _errors(exc.status_code, detail.get("field"), detail.get("reason", ""), getattr(exc, "headers", None))

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_error(request: Request, exc: sa.exc.SQLAlchemyError):
        log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
        return _errors(503, None, f"database unavailable, nothing stored ({type(exc).__name__})",
                       {"Retry-After": "5"})

    @app.get("/healthz", tags=["health"], summary="The process answers (no database)")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The database is reachable and migrated; 503 otherwise")
    async def readyz(request: Request):
        def check() -> None:
            _migrate(request.app)
            with request.app.state.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        try:
            await run_in_threadpool(check)
        except Exception as exc:
            return _errors(503, None, f"database not reachable: {type(exc).__name__}", {"Retry-After": "5"})
        return {"status": "ready"}

    return app
