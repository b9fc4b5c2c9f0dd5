"""Validation and normalisation of one incoming feedback record.

Applications send feedback in many shapes (thumbs, stars, up/down words). Everything is normalised onto
``rating`` in [-1, 1] with the thumb derived from it, and the original kept in ``rating_raw``.
A record that cannot be understood raises ``FeedbackValidationError`` naming the field and the reason. The rules
every entry point shares (service, importers, CLI) live here: numbers must be finite (NaN and Infinity are
rejected, never read as "no value"), a boolean is a thumb for ``rating`` but never a number (``stars: true``,
``latency_ms: true``, ``message_index: false`` are rejected), and ``created_at`` / ``updated_at`` must lie in
``EARLIEST`` .. now + ``FUTURE_SLACK``.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from feedback_pipeline.store.tables import COLUMNS  # the stored fields: the store layer owns the schema

# The documented window of feedback timestamps: nothing was rated before 2000, and a clock a day fast is tolerated.
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
FUTURE_SLACK = timedelta(days=1)

# Stable namespace so a re-imported record without an id gets the same id again (idempotent imports).
_ID_NAMESPACE = uuid.UUID("6f1c1c4e-9a52-4c57-9d0e-6a0f1b7c2e11")

# Copied by the capture service from the served answer that ``response_id`` names (sql/008); never client input.
SERVED_FIELDS = ("experiment", "arm")
_TEXT_FIELDS = ("user_id", "session_id", "model_name", "model_version", "intent", "project", "subject", "comment",
                "response_id")
_THUMB_WORDS = {"up": 1, "+1": 1, "like": 1, "liked": 1, "good": 1, "true": 1, "positive": 1,
                "down": -1, "-1": -1, "dislike": -1, "disliked": -1, "bad": -1, "false": -1, "negative": -1,
                "0": 0, "neutral": 0}


class FeedbackValidationError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


def thumb_of(rating: float | None) -> int | None:
    if rating is None:
        return None
    return 1 if rating > 0 else (-1 if rating < 0 else 0)


def stars_to_rating(stars: int) -> float:
    """1 star -> -1, 3 -> 0, 5 -> +1: the midpoint of a 5-point scale is neutral."""
    return (stars - 3) / 2.0


def parse_rating(record: dict[str, Any]) -> dict[str, Any]:
    """Read ``stars`` (1-5) or ``rating`` (thumb, word or number in [-1, 1]) into the stored rating fields."""
    star_field = "stars" if "stars" in record else "rating_stars"
    stars, rating = record.get(star_field), record.get("rating")
    _finite(stars, star_field)
    _finite(rating, "rating")
    if isinstance(stars, bool):
        raise FeedbackValidationError(star_field, f"must be a whole number from 1 to 5, got {stars!r}")
    if _present(stars):
        try:
            value = float(stars)
        except (TypeError, ValueError):
            raise FeedbackValidationError(star_field, f"must be a number from 1 to 5, got {stars!r}") from None
        if not value.is_integer() or not 1 <= value <= 5:
            raise FeedbackValidationError(star_field, f"must be a whole number from 1 to 5, got {stars!r}")
        normalised = stars_to_rating(int(value))
        return {"rating": normalised, "rating_thumb": thumb_of(normalised), "rating_stars": int(value),
                "rating_raw": str(stars), "rating_scale": "stars"}
    if not _present(rating):
        return {"rating": None, "rating_thumb": None, "rating_stars": None, "rating_raw": None,
                "rating_scale": record.get("rating_scale")}
    if isinstance(rating, bool):
        value = 1.0 if rating else -1.0
    elif isinstance(rating, str) and rating.strip().lower() in _THUMB_WORDS:
        value = float(_THUMB_WORDS[rating.strip().lower()])
    else:
        try:
            value = float(rating)
        except (TypeError, ValueError):
            raise FeedbackValidationError("rating", f"must be up/down, -1/0/+1 or a number in [-1, 1], got {rating!r}") from None
    if math.isnan(value) or not -1.0 <= value <= 1.0:
        raise FeedbackValidationError("rating", f"must lie in [-1, 1], got {rating!r}")
    return {"rating": value, "rating_thumb": thumb_of(value), "rating_stars": None, "rating_raw": str(rating),
            "rating_scale": record.get("rating_scale") or "thumbs"}


def normalise_record(record: dict[str, Any], source: str, now: datetime | None = None) -> dict[str, Any]:
    """Return a row with exactly ``COLUMNS``; raise FeedbackValidationError on the first bad field."""
    if not isinstance(record, dict):
        raise FeedbackValidationError("record", f"must be a JSON object, got {type(record).__name__}")
    unknown = set(record) - set(COLUMNS) - {"stars"}
    if unknown:
        raise FeedbackValidationError(sorted(unknown)[0], "unknown field")
    if given := [name for name in SERVED_FIELDS if _present(record.get(name))]:
        raise FeedbackValidationError(given[0], "is set by the server from response_id")
    now = now or datetime.now(timezone.utc)
    row: dict[str, Any] = {"query": _required_text(record, "query"), "response": _required_text(record, "response")}
    for name in _TEXT_FIELDS:
        row[name] = _optional_text(record, name)
    row.update(parse_rating(record))
    row["created_at"] = _timestamp(record, "created_at", now, now)
    row["updated_at"] = _timestamp(record, "updated_at", row["created_at"], now)
    row["ingested_at"] = now
    row["message_index"] = _optional_int(record, "message_index", minimum=0)
    row["prompt_tokens"] = _optional_int(record, "prompt_tokens", minimum=0)
    row["completion_tokens"] = _optional_int(record, "completion_tokens", minimum=0)
    row["latency_ms"] = _optional_number(record, "latency_ms")
    row["history"] = _messages(record.get("history"))
    row["tools_called"] = _json_list(record, "tools_called")
    row["retrieved_context"] = _json_list(record, "retrieved_context")
    metadata = _decode_json(record, "metadata") if isinstance(record.get("metadata"), str) else record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise FeedbackValidationError("metadata", "must be a JSON object")
    row["metadata"] = metadata or {}
    row["source"] = _optional_text(record, "source") or source
    row["experiment"] = row["arm"] = None
    row["id"] = _record_id(record, row)
    return {name: row[name] for name in COLUMNS}


def _finite(value: Any, name: str) -> None:
    """NaN and Infinity are never "no value": a client that sends them has a bug worth hearing about."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FeedbackValidationError(name, f"must be a finite number, got {value!r}")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip()) and not (
        isinstance(value, float) and math.isnan(value))


def _required_text(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise FeedbackValidationError(name, "is required and must be non-empty text")
    return value


def _optional_text(record: dict, name: str) -> str | None:
    value = record.get(name)
    if not _present(value):
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FeedbackValidationError(name, f"must be text, got {type(value).__name__}")
    return str(value).strip()


def _optional_int(record: dict, name: str, minimum: int) -> int | None:
    value = record.get(name)
    _finite(value, name)
    if not _present(value):
        return None
    if isinstance(value, bool):
        raise FeedbackValidationError(name, f"must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeedbackValidationError(name, f"must be a whole number, got {value!r}") from None
    if not number.is_integer() or number < minimum:
        raise FeedbackValidationError(name, f"must be a whole number >= {minimum}, got {value!r}")
    return int(number)


def _optional_number(record: dict, name: str) -> float | None:
    value = record.get(name)
    _finite(value, name)
    if not _present(value):
        return None
    if isinstance(value, bool):
        raise FeedbackValidationError(name, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeedbackValidationError(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise FeedbackValidationError(name, f"must be a non-negative number, got {value!r}")
    return number


def _timestamp(record: dict, name: str, default: datetime, now: datetime | None = None) -> datetime:
    """An aware UTC timestamp inside ``EARLIEST`` .. ``now`` + ``FUTURE_SLACK`` (``default`` when absent)."""
    value = record.get(name)
    if not _present(value):
        return default
    if isinstance(value, bool):
        raise FeedbackValidationError(name, f"must be an ISO-8601 timestamp, got {value!r}")
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise FeedbackValidationError(name, f"must be an ISO-8601 timestamp, got {value!r}") from None
    # Naive timestamps are taken as UTC: applications that log local time must say so explicitly.
    try:
        parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # year 1 or 9999 moved out of range by its offset
        raise FeedbackValidationError(name, f"is a timestamp out of range, got {value!r}") from None
    latest = (now or datetime.now(timezone.utc)) + FUTURE_SLACK
    if not EARLIEST <= parsed <= latest:
        raise FeedbackValidationError(
            name, f"must lie between {EARLIEST.date()} and now + {FUTURE_SLACK.days} day, got {parsed.isoformat()}")
    return parsed


def _decode_json(record: dict, name: str) -> Any:
    try:
        return json.loads(record[name])
    except json.JSONDecodeError as exc:
        raise FeedbackValidationError(name, f"is not valid JSON ({exc.msg})") from None


def _json_list(record: dict, name: str) -> list:
    value = record.get(name)
    if isinstance(value, str):
        value = _decode_json(record, name) if value.strip() else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise FeedbackValidationError(name, "must be a JSON list")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = _decode_json({"history": value}, "history") if value.strip() else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise FeedbackValidationError("history", "must be a list of {role, content} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool") \
                or not isinstance(message.get("content"), str):
            raise FeedbackValidationError(f"history[{i}]", "must be {role: system|user|assistant|tool, content: text}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _record_id(record: dict, row: dict) -> str:
    given = record.get("id")
    if _present(given):
        try:
            return str(uuid.UUID(str(given)))
        except ValueError:
            raise FeedbackValidationError("id", f"must be a UUID, got {given!r}") from None
    key = json.dumps([row["source"], row["user_id"], row["session_id"], row["message_index"], row["query"],
                      row["response"], str(record.get("created_at") or "")], ensure_ascii=False)
    return str(uuid.uuid5(_ID_NAMESPACE, key))
