"""HTTP endpoint for chat applications: ``POST /feedback`` with one record or a list of records.

A request is all-or-nothing: every record is validated first; if any is invalid the answer is 422 with the
index, field and reason of each problem and nothing is written. 201 means every record is committed.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record
from feedback_pipeline.store.repository import FeedbackStore

MAX_BODY_BYTES = 10 * 1024 * 1024
log = logging.getLogger(__name__)


def make_handler(store: FeedbackStore, source: str = "http"):
    class FeedbackHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", "rows": store.count()})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

        def do_POST(self):
            if self.path != "/feedback":
                return self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                return self._reply(HTTPStatus.BAD_REQUEST if length <= 0 else HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   {"error": f"body must be 1..{MAX_BODY_BYTES} bytes of JSON, got {length}"})
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return self._reply(HTTPStatus.BAD_REQUEST, {"error": f"body is not valid JSON: {exc}"})
            records = body if isinstance(body, list) else [body]
            rows, errors = [], []
            for index, record in enumerate(records):
                try:
                    rows.append(normalise_record(record, source=source))
                except FeedbackValidationError as exc:
                    errors.append({"index": index, **exc.as_dict()})
            if errors:
                return self._reply(HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": errors})
            try:
                result = store.write(rows)
            except Exception as exc:  # the client must know its data was not stored
                log.exception("writing feedback failed")
                return self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"not stored: {type(exc).__name__}"})
            self._reply(HTTPStatus.CREATED, {"ids": [r["id"] for r in rows], "inserted": result.inserted,
                                             "updated": result.updated, "unchanged": result.unchanged})

        def _reply(self, status: HTTPStatus, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

    return FeedbackHandler


def make_server(store: FeedbackStore, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    store.migrate()
    return ThreadingHTTPServer((host, port), make_handler(store))
