"""Strict reading of a request body before ``normalise_record``, and a check of the normalised row against the
column types, so that no client input reaches the database as something it rejects (which would be a 5xx).

Rejected with the path of the field: invalid JSON or UTF-8, NaN/Infinity (also numbers that overflow to
infinity), lone surrogates and NUL characters in any string or key, nesting deeper than ``MAX_DEPTH``, integers
outside the column range, text columns given a non-text value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from feedback_pipeline.ingestion.records import FeedbackValidationError

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
_INT32 = (-(2**31), 2**31 - 1)
_INT_COLUMNS = {"message_index": _INT32, "prompt_tokens": _INT32, "completion_tokens": _INT32,
                "rating_thumb": (-1, 1), "rating_stars": (1, 5)}
_FLOAT_COLUMNS = ("rating", "latency_ms")
_TEXT_COLUMNS = ("user_id", "session_id", "query", "response", "model_name", "model_version", "intent", "project",
                 "subject", "rating_raw", "rating_scale", "comment", "source")
_JSON_COLUMNS = ("history", "tools_called", "retrieved_context", "metadata")


class _NonFinite:
    def __init__(self, text: str):
        self.text = text


def _float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def parse_body(raw: bytes) -> Any:
    """JSON from bytes; raises FeedbackValidationError(field, reason) for anything a column could not hold."""
    if not raw:
        raise FeedbackValidationError("body", "is empty: send one JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackValidationError("body", f"is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_NonFinite, parse_float=_float)
    except json.JSONDecodeError as exc:
        raise FeedbackValidationError("body", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise FeedbackValidationError("body", f"nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise FeedbackValidationError("body", f"holds a number that cannot be read ({exc})") from None
    check_value(value, "")
    return value


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise FeedbackValidationError(path or "body", "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FeedbackValidationError(path or "body", f"contains a lone surrogate at position {exc.start}") from None


def check_value(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise FeedbackValidationError(path or "body", f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, _NonFinite):
        raise FeedbackValidationError(path or "body", f"must be a finite number, got {value.text}")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise FeedbackValidationError(path or "body", "integer outside the 64-bit range")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path}.{key!r}" if path else repr(key))
            check_value(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, f"{path}[{i}]", depth + 1)


def check_row(row: dict) -> None:
    """The normalised row fits its columns (range, type); raise FeedbackValidationError otherwise."""
    for name, (low, high) in _INT_COLUMNS.items():
        value = row.get(name)
        if value is not None and not low <= value <= high:
            raise FeedbackValidationError(name, f"must lie in [{low}, {high}], got {value}")
    for name in _FLOAT_COLUMNS:
        value = row.get(name)
        if value is not None and not math.isfinite(value):
            raise FeedbackValidationError(name, f"must be a finite number, got {value}")
    for name in _TEXT_COLUMNS:
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise FeedbackValidationError(name, f"must be text, got {type(value).__name__}")
    for name in _JSON_COLUMNS:
        try:
            json.dumps(row.get(name), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise FeedbackValidationError(name, f"cannot be stored as JSON ({exc})") from None
