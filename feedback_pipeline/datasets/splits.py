"""Train/evaluation split that never lets a prompt leak across the boundary.

Rows are joined into groups when they share a conversation or the same (normalised) query; a whole group
goes to one side. The side is chosen by hashing the group's smallest key, so a row keeps its side as new
feedback arrives (evaluation sets stay comparable between runs).
"""

from __future__ import annotations

import hashlib

import pandas as pd


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _query_key(query: str) -> str:
    return "q:" + " ".join(str(query).lower().split())


def leakage_groups(df: pd.DataFrame) -> pd.Series:
    """A group id per row: rows in one conversation or with the same query share a group."""
    uf = _UnionFind()
    keys = []
    for row in df.itertuples(index=False):
        conversation = f"s:{row.session_id}" if isinstance(row.session_id, str) and row.session_id else f"r:{row.id}"
        query = _query_key(row.query)
        uf.union(conversation, query)
        keys.append(conversation)
    return pd.Series([uf.find(k) for k in keys], index=df.index, name="group")


def assign_split(df: pd.DataFrame, eval_fraction: float = 0.15, seed: str = "feedback-split-v1") -> pd.Series:
    """'train' or 'eval' per row, stable under new data, with no group on both sides."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    groups = leakage_groups(df)

    def side(group: str) -> str:
        bucket = int.from_bytes(hashlib.sha256(f"{seed}|{group}".encode()).digest()[:8], "big") / 2**64
        return "eval" if bucket < eval_fraction else "train"

    return groups.map(side).rename("split")


def leaked_prompts(train_prompts, eval_prompts) -> set[str]:
    """Normalised prompts present on both sides of a split (must be empty)."""
    return {_query_key(p) for p in train_prompts} & {_query_key(p) for p in eval_prompts}
