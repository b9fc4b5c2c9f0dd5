"""Apply the versioned migrations in ``sql/`` to the feedback database.

Each ``sql/NNN_name.sql`` file is applied once, in order, inside a transaction, and recorded in
``schema_migrations`` with its checksum: an already-applied file that was edited afterwards is an error,
because the databases that ran the old text would silently differ from new ones.

Most files serve both engines through type placeholders. A version whose SQL cannot be shared (trigger bodies)
comes as one file per dialect, ``NNN_name.postgresql.sql`` and ``NNN_name.sqlite.sql``: a database runs and
records (with that file's checksum) only its own. Such bodies contain ``;``, so a file holding a line
``--> statement-breakpoint`` (Drizzle's marker) is split on those lines instead of on ``;``.
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

_BREAKPOINT_LINE = r"^--> statement-breakpoint[ \t]*$"

_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    dialect: str | None = None  # None: one file for every dialect

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, dialect: str) -> list[str]:
        if dialect not in _TYPES:
            raise ValueError(f"unsupported database dialect {dialect!r}: use postgresql or sqlite")
        if self.dialect not in (None, dialect):
            raise ValueError(f"{self.path.name} is for {self.dialect}, not {dialect}")
        text = self.text
        for key, value in _TYPES[dialect].items():
            text = text.replace("{" + key + "}", value)
        if re.search(_BREAKPOINT_LINE, text, flags=re.M):  # whole statements; only full-line comments dropped
            parts = ("\n".join(ln for ln in part.splitlines() if not ln.lstrip().startswith("--"))
                     for part in re.split(_BREAKPOINT_LINE, text, flags=re.M))
            return [stmt.strip() for stmt in parts if stmt.strip()]
        body = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def discover(directory: Path = MIGRATIONS_DIR, dialect: str | None = None) -> list[Migration]:
    """Migrations in version order: for ``dialect``, the one file it runs per version; without, every file."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = re.fullmatch(r"(\d+)_(\w+)(?:\.(postgresql|sqlite))?\.sql", path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} must be named NNN_name.sql or NNN_name.<dialect>.sql")
        found.append(Migration(int(match[1]), match[2], path, match[3]))
    by_version: dict[int, list[Migration]] = {}
    for m in found:
        by_version.setdefault(m.version, []).append(m)
    for version, files in by_version.items():
        shared = len(files) == 1 and files[0].dialect is None
        per_dialect = sorted(m.dialect or "" for m in files) == sorted(_TYPES) and len({m.name for m in files}) == 1
        if not (shared or per_dialect):
            raise ValueError(f"migration version {version} in {directory} needs one NNN_name.sql or one "
                             f"NNN_name.<dialect>.sql per dialect {sorted(_TYPES)}: {[m.path.name for m in files]}")
    if dialect is None:
        return found
    return [m for m in found if m.dialect in (None, dialect)]


def migrate(engine: sa.Engine, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; return the versions applied now (empty when up to date)."""
    applied_now = []
    with engine.begin() as conn:
        conn.execute(sa.text(_LEDGER))
        done = {row.version: row.checksum for row in conn.execute(sa.text("SELECT version, checksum FROM schema_migrations"))}
    for migration in discover(directory, engine.dialect.name):
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
