"""DPO preference pairs from feedback: two responses to the same prompt, one preferred over the other.

Two sources of "A is better than B":

- ``rank``: oasst1-style sibling ranks. Replies to the same parent message (``metadata["parent_id"]``, and hence
  the same history and query) carry ``metadata["rank"]``, 0 = best. Every two siblings with different ranks give a
  pair, the better-ranked one chosen.
- ``thumbs``: a liked and a disliked response to the same normalised prompt (history + query, compared after
  lower-casing and collapsing whitespace). Every liked x disliked combination gives a pair.

A couple of responses already paired by rank is not paired again by thumbs (rank wins, even when the thumbs
disagree: a ranking compares the two directly, thumbs do not). Identical responses are never paired.

Record format (trl's conversational preference format plus provenance)::

    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}],
     "chosen_id": id, "rejected_id": id, "source": "rank" | "thumbs", "feedback_id": "<chosen_id>><rejected_id>"}
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from feedback_pipeline.datasets.build import (
    BuiltDataset, _split_stats, _watermark, prompt_messages, split_rows, usable_rows, write_dataset,
)


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def prompt_key(messages: list[dict[str, str]]) -> str:
    """Normalised identity of a prompt: roles and lower-cased, whitespace-collapsed contents."""
    return json.dumps([[m["role"], _norm(m["content"])] for m in messages], ensure_ascii=False)


def _rank_of(metadata) -> float | None:
    rank = (metadata or {}).get("rank") if isinstance(metadata, dict) else None
    if rank is None or isinstance(rank, bool):
        return None
    try:
        value = float(rank)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pair(prompt, chosen, rejected, source: str) -> dict:
    return {"prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen.response}],
            "rejected": [{"role": "assistant", "content": rejected.response}],
            "chosen_id": chosen.id, "rejected_id": rejected.id, "source": source,
            "feedback_id": f"{chosen.id}>{rejected.id}"}


def dpo_pairs(df: pd.DataFrame) -> list[dict]:
    """Chosen/rejected pairs between responses to the same prompt (see the module docstring), in a stable order.

    ``df`` needs ``id``, ``query``, ``history``, ``response``; ``metadata`` (with ``rank``/``parent_id``) for rank
    pairs and ``label`` ('liked'/'disliked') for thumbs pairs. Rows flagged ``exclude_from_training`` are skipped.
    """
    df = usable_rows(df)
    rows = list(df.itertuples(index=False))
    prompts = [prompt_messages(r) for r in rows]
    keys = [prompt_key(p) for p in prompts]
    pairs: list[dict] = []
    paired: set[frozenset] = set()

    # Siblings: same parent message and, as a guard against inconsistent data, the same prompt text. Ranks without
    # a parent are not comparable with anything (they come from different ranking tasks).
    siblings: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        metadata = getattr(row, "metadata", None)
        if _rank_of(metadata) is None or not metadata.get("parent_id"):
            continue
        siblings[(str(metadata["parent_id"]), keys[i])].append(i)
    for group in sorted(siblings):
        members = sorted(siblings[group], key=lambda i: (_rank_of(rows[i].metadata), str(rows[i].id)))
        for a, i in enumerate(members):
            for j in members[a + 1:]:
                better, worse = rows[i], rows[j]
                tied = _rank_of(better.metadata) == _rank_of(worse.metadata)
                if tied or _norm(better.response) == _norm(worse.response):
                    continue
                pairs.append(_pair(prompts[i], better, worse, "rank"))
                paired.add(frozenset((better.id, worse.id)))

    if "label" in df:
        by_prompt: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"liked": [], "disliked": []})
        for i, row in enumerate(rows):
            if row.label in ("liked", "disliked"):
                by_prompt[keys[i]][row.label].append(i)
        for key in sorted(by_prompt):
            liked = sorted(by_prompt[key]["liked"], key=lambda i: str(rows[i].id))
            disliked = sorted(by_prompt[key]["disliked"], key=lambda i: str(rows[i].id))
            for i in liked:
                for j in disliked:
                    good, bad = rows[i], rows[j]
                    if frozenset((good.id, bad.id)) in paired or _norm(good.response) == _norm(bad.response):
                        continue
                    pairs.append(_pair(prompts[i], good, bad, "thumbs"))
                    paired.add(frozenset((good.id, bad.id)))
    return pairs


def split_pairs(rows: pd.DataFrame, pairs: list[dict]) -> dict[str, list[dict]]:
    """Train/eval pairs, each on the side of its rows (``rows`` from :func:`build.split_rows`, the split SFT and
    KTO use too).

    Both responses of a pair share the query, so they always fall in the same group; a pair whose two rows
    disagree would mean a bug and raises.
    """
    side = dict(zip(rows["id"], rows["split"])) if len(rows) else {}
    by_split: dict[str, list[dict]] = {"train": [], "eval": []}
    for pair in pairs:
        chosen, rejected = side[pair["chosen_id"]], side[pair["rejected_id"]]
        if chosen != rejected:
            raise AssertionError(f"pair {pair['feedback_id']} straddles the split ({chosen} / {rejected})")
        by_split[chosen].append(pair)
    return by_split


def build_dpo_dataset(cleaned_df: pd.DataFrame, root: Path, eval_fraction: float = 0.15,
                      min_train_examples: int = 20, split_by_user: bool = True, max_file_mb: float = 50.0,
                      name: str = "dpo") -> BuiltDataset:
    """Write ``<root>/dpo/<fingerprint>/{train,eval}.jsonl`` of preference pairs, split by prompt group.

    Unrated rows stay in: a ranked sibling needs no thumb. The split is :func:`build.split_rows` over every usable
    row, as for SFT and KTO, so a prompt's side does not depend on which of its responses happened to be paired.
    """
    rows = split_rows(cleaned_df, eval_fraction, split_by_user)
    by_split = split_pairs(rows, dpo_pairs(rows))
    return write_dataset(name, Path(root), by_split, lambda r: r["source"],
                         {"eval_fraction": eval_fraction, "split_by_user": split_by_user, "max_file_mb": max_file_mb},
                         _watermark(cleaned_df), min_train_examples, max_file_mb, _split_stats(rows))
