"""A sqlite-backed embedding cache, so rows whose text did not change are never embedded twice."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# SQLite caps the number of "?" parameters in one statement (999 on old builds).
_SQL_CHUNK = 500


def cache_key(model_id: str, text: str) -> str:
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.sha256(f"{model_id}\x00{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """float32 vectors in a sqlite file, keyed by :func:`cache_key` (sha256 of model id + text)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL)"
        )
        self._conn.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(f"SELECT key, dim, vector FROM embeddings WHERE key IN ({marks})", chunk)
            for key, dim, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (dim,):  # a truncated blob is treated as a miss, not returned
                    found[key] = vector
        return found

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in vectors.items()]
        with self._conn:  # one transaction: all or nothing
            self._conn.executemany("INSERT OR REPLACE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_identifier(model: Any) -> str:
    """A cache namespace for a SentenceTransformer: its source path plus a hash of its weights.

    Hashing the weights (about 0.25 s for MiniLM) means a model fine-tuned and saved under the same
    name never reads its predecessor's vectors. Sequence length and truncation change the output
    too, so they are part of the id.
    """
    if not hasattr(model, "state_dict"):
        raise ValueError("cannot identify this model; pass model_id= to encode_cached")
    import torch  # lazily: the rest of this module needs no torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        # Raw bytes via uint8 so bf16/fp16 weights hash too (numpy has no bfloat16).
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    try:
        source = model[0].auto_model.name_or_path
    except (AttributeError, IndexError, TypeError, KeyError):
        source = type(model).__name__
    length, dim = getattr(model, "max_seq_length", None), getattr(model, "truncate_dim", None)
    return f"{source}|max_seq_length={length},truncate_dim={dim}|{digest.hexdigest()[:16]}"


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def encode_cached(
    model: Any,
    texts: Sequence[str],
    cache: EmbeddingCache,
    batch_size: int = 64,
    model_id: str | None = None,
) -> np.ndarray:
    """Embeddings of ``texts`` (one L2-normalised float32 row each), encoding only what the cache lacks.

    Identical texts within the call are encoded once. ``model`` needs only an ``encode`` method;
    ``model_id`` defaults to :func:`model_identifier` and must be given for objects it cannot hash.
    """
    texts = [str(t) for t in texts]
    model_id = model_id if model_id is not None else model_identifier(model)
    keys = [cache_key(model_id, t) for t in texts]
    known = cache.get_many(keys)
    todo = {k: t for k, t in zip(keys, texts) if k not in known}  # dict: dedups, keeps order
    if todo:
        encoded = model.encode(
            list(todo.values()),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        fresh = dict(zip(todo, _normalise(np.asarray(encoded, dtype=np.float32))))
        cache.put_many(fresh)
        known.update(fresh)
    if not texts:
        dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else 0
        return np.zeros((0, dim or 0), dtype=np.float32)
    return _normalise(np.stack([known[k] for k in keys]))
