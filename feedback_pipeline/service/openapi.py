"""The documented request bodies. Endpoints read raw bytes through the strict parser (``ingestion/strict.py``),
so these pydantic models only describe the shape in /openapi.json; ``normalise_record`` + ``validate_record`` stay
the one validation, and a test keeps the model's fields equal to the accepted ones."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from feedback_pipeline.ingestion.strict import MAX_LONG_TEXT, MAX_SHORT_TEXT

_INT = {"ge": 0, "le": 2**31 - 1}
Short = Field(default=None, max_length=MAX_SHORT_TEXT)


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class FeedbackIn(BaseModel):
    """One rating of one answer. Give ``rating`` (up/down, like/dislike, true/false or a number in [-1, 1]) or
    ``stars`` (1..5), or neither for an unrated answer. Timestamps lie between 2000-01-01 and now + 1 day."""
    model_config = ConfigDict(extra="forbid")

    id: UUID | None = Field(None, description="client id: a retry with the same id is stored once")
    query: str = Field(min_length=1, max_length=MAX_LONG_TEXT)
    response: str = Field(min_length=1, max_length=MAX_LONG_TEXT)
    rating: float | bool | Literal["up", "down", "like", "dislike", "neutral"] | None = None
    stars: int | None = Field(None, ge=1, le=5)
    rating_scale: str | None = Short
    comment: str | None = Field(None, max_length=MAX_LONG_TEXT)
    user_id: str | None = Short
    session_id: str | None = Short
    message_index: int | None = Field(None, **_INT)
    history: list[Message] | None = None
    model_name: str | None = Short
    model_version: str | None = Short
    intent: str | None = Short
    project: str | None = Short
    subject: str | None = Short
    tools_called: list[Any] | None = None
    retrieved_context: list[Any] | None = None
    latency_ms: float | None = Field(None, ge=0)
    prompt_tokens: int | None = Field(None, **_INT)
    completion_tokens: int | None = Field(None, **_INT)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    response_id: str | None = Field(None, max_length=MAX_SHORT_TEXT, description=(
        "the `id` of the chat completion rated (POST /v1/chat/completions): experiment, arm, model_name and "
        "model_version are then taken from the answer served; an unknown id is rejected"))


class FeedbackPatch(FeedbackIn):
    """Only the fields given change (e.g. a re-rating or a comment); the merged record is validated again."""
    query: str | None = Field(None, min_length=1, max_length=MAX_LONG_TEXT)
    response: str | None = Field(None, min_length=1, max_length=MAX_LONG_TEXT)


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[FeedbackIn] = Field(max_length=1000)


def _body(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # Message is registered below as a component
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


RECORD_BODY = _body(FeedbackIn)
PATCH_BODY = _body(FeedbackPatch)
BATCH_BODY = _body(FeedbackBatch)
COMPONENTS = {name: model.model_json_schema(ref_template="#/components/schemas/{model}")
              for name, model in (("Message", Message), ("FeedbackIn", FeedbackIn))}
