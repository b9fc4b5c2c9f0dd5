"""Shared fixtures: real stores only (a SQLite file and the local PostgreSQL), never mocks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from feedback_pipeline.settings import REPO_ROOT
from feedback_pipeline.store.repository import FeedbackStore

POSTGRES_URL = os.environ.get("FEEDBACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_DATA = Path(os.environ.get("FEEDBACK_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
OASST1 = SHARED_DATA / "oasst1-en-validation" / "en-validation.jsonl"


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M converted once per test session (about 30 s)."""
    from feedback_pipeline.training.base_model import prepare_base_chat_model

    return prepare_base_chat_model(tmp_path_factory.mktemp("base") / "smollm2-135m-instruct")


@pytest.fixture
def postgres_url():
    """A fresh schema in the local PostgreSQL per test; dropped afterwards. Fails (never skips) if unreachable."""
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> FeedbackStore:
    url = f"sqlite:///{tmp_path / 'feedback.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = FeedbackStore(url)
    store.migrate()
    yield store
    store.dispose()


def feedback(**overrides) -> dict:
    """A valid incoming record; tests override the fields they are about."""
    record = {"query": "How do I reset my password?", "response": "Open Settings, then Security, then Reset.",
              "rating": "up", "user_id": "u1", "session_id": "s1", "model_name": "chat", "model_version": "v1"}
    record.update(overrides)
    return record
