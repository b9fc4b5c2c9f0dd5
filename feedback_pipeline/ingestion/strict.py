"""Strict reading of untrusted JSON (an HTTP body, an import line) around ``normalise_record``, and a check of the
normalised row against the columns, so that no input reaches the database as something it rejects (a 5xx for
the service, a failed batch for an import). The service and the importers share ``parse_json`` +
``validate_record``.

Rejected with the path of the field: invalid JSON or UTF-8, NaN/Infinity (also numbers that overflow to
infinity), lone surrogates and NUL characters in any string or key, nesting deeper than ``MAX_DEPTH``, integers
outside the column range, text columns given a non-text value, text longer than its documented size, JSON
columns larger than ``MAX_JSON_BYTES``, timestamps outside ``records.EARLIEST`` .. now + ``records.FUTURE_SLACK`` (checked in ``normalise_record``).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from feedback_pipeline.ingestion.records import FeedbackValidationError, normalise_record

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
# Documented sizes (README "Limits"): long free text, short labels, and each JSON column once serialised.
MAX_LONG_TEXT = 100_000
MAX_SHORT_TEXT = 512
MAX_JSON_BYTES = 256 * 1024
_LONG_TEXT = ("query", "response", "comment")
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


def parse_json(raw: bytes) -> Any:
    """JSON from bytes (one body or one line); raises FeedbackValidationError(field, reason) for anything a column could not hold."""
    if not raw:
        raise FeedbackValidationError("body", "is empty: send JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackValidationError("body", f"is not UTF-8 (byte {exc.start})") from None
    suspect: list[str] = []  # numbers the hooks saw that a column may not hold

    def _float(literal: str):
        value = float(literal)
        if math.isfinite(value):
            return value
        suspect.append(literal)
        return _NonFinite(literal)

    def _int(literal: str) -> int:
        if len(literal) > 18:
            suspect.append(literal)
        return int(literal)

    def _constant(literal: str) -> _NonFinite:
        suspect.append(literal)
        return _NonFinite(literal)

    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise FeedbackValidationError("body", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise FeedbackValidationError("body", f"nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise FeedbackValidationError("body", f"holds a number that cannot be read ({exc})") from None
    # In text that decoded as UTF-8, a NUL or lone surrogate can only come from an escape; only the walk of
    # check_value (which costs more than the parse) names the field, so walk only when something is suspect.
    if suspect or "\\u0000" in text or "\\ud" in text or "\\uD" in text \
            or text.count("[") + text.count("{") > MAX_DEPTH:
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
    """Raise FeedbackValidationError naming the path of the first value no column could hold."""
    if depth == 0 and _clean(value):
        return
    _walk(value, path, depth)


_LONG_INT = re.compile(r"[0-9]{19}")  # may be an integer outside the 64-bit range


def _clean(value: Any) -> bool:
    """The same checks on the C-encoded text, without building a path per value; False means walk to find it."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate fails here
    except (TypeError, ValueError, RecursionError):
        return False
    return "\\u0000" not in text and text.count("[") + text.count("{") <= MAX_DEPTH and not _LONG_INT.search(text)


def _walk(value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FeedbackValidationError(path or "body", f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        text = value.text if isinstance(value, _NonFinite) else repr(value)
        raise FeedbackValidationError(path or "body", f"must be a finite number, got {text}")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise FeedbackValidationError(path or "body", "integer outside the 64-bit range")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path}.{key!r}" if path else repr(key))
            _walk(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", depth + 1)


def check_row(row: dict) -> None:
    """The normalised row fits its columns (range, type, size); raise FeedbackValidationError otherwise. The
    timestamp window is ``normalise_record``'s (every importer applies it there)."""
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
        limit = MAX_LONG_TEXT if name in _LONG_TEXT else MAX_SHORT_TEXT
        if value is not None and len(value) > limit:
            raise FeedbackValidationError(name, f"is {len(value)} characters, more than the {limit} allowed")
    for name in _JSON_COLUMNS:
        try:
            size = len(json.dumps(row.get(name), allow_nan=False, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError) as exc:
            raise FeedbackValidationError(name, f"cannot be stored as JSON ({exc})") from None
        if size > MAX_JSON_BYTES:
            raise FeedbackValidationError(name, f"is {size} bytes as JSON, more than the {MAX_JSON_BYTES} allowed")


def validate_record(record: Any, source: str, now: datetime | None = None, *, checked: bool = False) -> dict:
    """One already-parsed record -> a row that every column accepts, or FeedbackValidationError.

    ``checked``: the record comes straight from ``parse_json``, which ran ``check_value`` already.
    """
    if not isinstance(record, dict):
        raise FeedbackValidationError("record", f"must be one JSON object, got {type(record).__name__}")
    if not checked:
        check_value(record, "")
    try:
        row = normalise_record(record, source=source, now=now)
    except OverflowError:  # a timestamp near year 1 or 9999 whose offset moves it out of range
        raise FeedbackValidationError(_overflowing_timestamp(record), "is a timestamp out of range") from None
    for name in _JSON_COLUMNS:  # JSON sent as text was decoded after check_value saw it
        if isinstance(record.get(name), str):
            check_value(row[name], name)
    check_row(row)
    return row


def _overflowing_timestamp(record: dict) -> str:
    for name in ("created_at", "updated_at"):
        try:
            datetime.fromisoformat(str(record.get(name)).replace("Z", "+00:00")).astimezone(timezone.utc)
        except OverflowError:
            return name
        except ValueError:
            pass
    return "record"
