"""API keys: scoped secrets whose sha256 is stored in ``api_keys`` (sql/005_api_keys.sql), never the secret.

A key may be bound to browser origins (sql/006_api_key_origins.sql): the feedback widget ships its key inside a web
page, so such a key is only accepted on requests whose ``Origin`` header is one of its origins.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from urllib.parse import urlsplit
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from feedback_pipeline.store.repository import _UUID, _TS, _to_db_time, _utc

SCOPES = ("write", "read", "admin")
SECRET_PREFIX = "fbk_"

API_KEYS = sa.Table(
    "api_keys", sa.MetaData(),
    sa.Column("id", _UUID, primary_key=True), sa.Column("name", sa.Text), sa.Column("key_hash", sa.Text),
    sa.Column("scopes", sa.Text), sa.Column("created_at", _TS), sa.Column("revoked_at", _TS),
    sa.Column("origins", sa.Text),
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime | None
    revoked_at: datetime | None
    origins: tuple[str, ...] | None = None  # None = any caller; else the browser origins allowed to use it

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def allows_origin(self, origin: str | None) -> bool:
        """True for an unbound key; for a bound one, only when ``origin`` is one of its origins."""
        if self.origins is None:
            return True
        return origin is not None and origin.strip().rstrip("/").lower() in self.origins


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> list[str]:
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    parsed = sorted({s.strip().lower() for s in items if s.strip()})
    unknown = [s for s in parsed if s not in SCOPES]
    if unknown or not parsed:
        raise ValueError(f"scopes must be a non-empty comma-separated subset of {','.join(SCOPES)}, got {scopes!r}")
    return parsed


def parse_origins(origins: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Normalised ``scheme://host[:port]`` origins (lower case, no trailing slash); None for no restriction."""
    if origins is None:
        return None
    items = origins.split(",") if isinstance(origins, str) else list(origins)
    parsed = []
    for item in items:
        origin = item.strip().rstrip("/").lower()
        if not origin:
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
            raise ValueError(f"an origin is scheme://host[:port] (http or https, no path), got {item!r}")
        parsed.append(origin)
    if not parsed:
        raise ValueError(f"origins must name at least one origin, got {origins!r}")
    return sorted(set(parsed))


def create_key(store, name: str, scopes, origins=None) -> tuple[str, str]:
    """Store a new key; return ``(id, secret)``. The secret is not recoverable afterwards.

    ``origins`` (a list or a comma-separated string) binds the key to those browser origins; None leaves it usable
    from anywhere.
    """
    if not name or not name.strip():
        raise ValueError("a key needs a name")
    origins = parse_origins(origins)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key_id = str(uuid.uuid4())
    with store.engine.begin() as conn:
        conn.execute(sa.insert(API_KEYS).values(
            id=key_id, name=name.strip(), key_hash=hash_secret(secret), scopes=",".join(parse_scopes(scopes)),
            created_at=_to_db_time(datetime.now(timezone.utc), store.dialect), revoked_at=None,
            origins=",".join(origins) if origins is not None else None))
    return key_id, secret


def _row(r) -> ApiKey:
    return ApiKey(id=str(r.id), name=r.name, scopes=frozenset(s for s in r.scopes.split(",") if s),
                  created_at=_utc(r.created_at), revoked_at=_utc(r.revoked_at),
                  origins=tuple(o for o in r.origins.split(",") if o) if r.origins is not None else None)


def verify(store, secret: str | None) -> ApiKey | None:
    """The active key with this secret, or None (unknown, revoked or empty)."""
    if not secret:
        return None
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(API_KEYS).where(API_KEYS.c.key_hash == hash_secret(secret),
                                                     API_KEYS.c.revoked_at.is_(None))).first()
    return _row(row) if row is not None else None


def list_keys(store) -> list[ApiKey]:
    with store.engine.connect() as conn:
        return [_row(r) for r in conn.execute(sa.select(API_KEYS).order_by(API_KEYS.c.created_at, API_KEYS.c.id))]


def revoke(store, key_id: str) -> bool:
    """Revoke one key; False when no active key has this id."""
    try:
        key_id = str(uuid.UUID(str(key_id)))
    except ValueError:
        return False
    with store.engine.begin() as conn:
        return conn.execute(sa.update(API_KEYS).where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
                            .values(revoked_at=_to_db_time(datetime.now(timezone.utc), store.dialect))).rowcount == 1
