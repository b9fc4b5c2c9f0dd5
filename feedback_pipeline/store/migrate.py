"""Apply the versioned migrations in ``sql/`` to the feedback database.

Each ``sql/NNN_name.sql`` file is applied once, in order, inside a transaction, and recorded in
``schema_migrations`` with its checksum: an already-applied file that was edited afterwards is an error,
because the databases that ran the old text would silently differ from new ones.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from feedback_pipeline.settings import REPO_ROOT

MIGRATIONS_DIR = REPO_ROOT / "sql"

# One schema text for both engines; only these type names differ.
_TYPES = {
    "postgresql": {"uuid": "UUID", "json": "JSONB", "timestamp": "TIMESTAMPTZ", "bigint": "BIGINT"},
    "sqlite": {"uuid": "TEXT", "json": "JSON", "timestamp": "TIMESTAMP", "bigint": "INTEGER"},
}

_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, dialect: str) -> list[str]:
        if dialect not in _TYPES:
            raise ValueError(f"unsupported database dialect {dialect!r}: use postgresql or sqlite")
        body = "\n".join(line.split("--", 1)[0] for line in self.text.splitlines())
        for key, value in _TYPES[dialect].items():
            body = body.replace("{" + key + "}", value)
        return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} must be named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}: {versions}")
    return found


def migrate(engine: sa.Engine, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; return the versions applied now (empty when up to date)."""
    applied_now = []
    with engine.begin() as conn:
        conn.execute(sa.text(_LEDGER))
        done = {row.version: row.checksum for row in conn.execute(sa.text("SELECT version, checksum FROM schema_migrations"))}
    for migration in discover(directory):
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise RuntimeError(
                    f"migration {migration.path.name} changed after it was applied; add a new migration instead"
                )
            continue
        with engine.begin() as conn:  # one transaction per migration: all of it or nothing
            for statement in migration.render(engine.dialect.name):
                conn.execute(sa.text(statement))
            conn.execute(
                sa.text("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (:v, :n, :c, :t)"),
                {"v": migration.version, "n": migration.name, "c": migration.checksum,
                 "t": datetime.now(timezone.utc).isoformat()},
            )
        applied_now.append(migration.version)
    return applied_now
