"""DPO preference pairs from feedback: two answers to the same prompt, one preferred over the other.

Rows are first merged into answers (``build.aggregate_answers``: the same history + query + response, compared
lower-cased with whitespace collapsed; one vote per rater), so copies of an answer make one pair, never several.
Each pair of answers then gets votes for a direction from two sources:

- ``rank``: oasst1-style sibling ranks. Replies to the same parent message (``metadata["parent_id"]``, and hence
  the same prompt) carry ``metadata["rank"]``, 0 = best. Two siblings with different ranks give one vote to the
  better-ranked; two rows of the same answer in one ranking are not compared.
- ``thumbs``: two answers to the same prompt whose raters' verdicts differ by level (liked > tie or neutral >
  disliked; a tie is an answer as often liked as disliked), the higher one chosen. Each rater's thumb is a vote:
  for the direction are the chosen's likes and the rejected's dislikes, against it the chosen's dislikes and the
  rejected's likes; the agreement is the share for. Two answers both liked (or both disliked) are not paired.

A pair ranked directly is decided by its rank votes only (a ranking compares the two, thumbs do not). A pair is
emitted once, in its majority direction, when that direction has a strict majority and at least ``min_agreement``
(default 0.6: 2 of 3 raters pass, 3 of 5 just do) of the votes; otherwise it is dropped, never emitted both ways.
An answer is never paired with itself. The manifest's ``stats["pairs"]`` counts the votes, the distinct pairs,
those dropped as ties or for low agreement and those decided against a minority of reversed votes.

Record format (trl's conversational preference format plus provenance)::

    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}],
     "chosen_id": id, "rejected_id": id, "source": "rank" | "thumbs", "votes": n, "agreement": share,
     "feedback_id": "<chosen_id>><rejected_id>", "feedback_ids": [every merged row of both answers]}
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from feedback_pipeline.datasets.build import (
    BuiltDataset, Chunks, DatasetWriter, _digest, _scan_rows, _split_stats, _watermark, aggregate_answers, answer_key,
    prompt_messages, split_rows, usable_rows, write_dataset,
)

MIN_AGREEMENT = 0.6
# Thumbs pair an answer with one a level below: liked > tie or neutral (as many likes as dislikes, or only
# neutral votes) > disliked. Two liked (or two disliked) answers are not compared: both were judged alike.
_LEVEL = {"liked": 2, "tie": 1, "neutral": 1, "disliked": 0}


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


def _pair(chosen, rejected, source: str, votes: int, agreement: float) -> dict:
    return {"prompt": prompt_messages(chosen),
            "chosen": [{"role": "assistant", "content": chosen.response}],
            "rejected": [{"role": "assistant", "content": rejected.response}],
            "chosen_id": chosen.id, "rejected_id": rejected.id, "source": source,
            "votes": votes, "agreement": round(agreement, 4),
            "feedback_id": f"{chosen.id}>{rejected.id}",
            "feedback_ids": sorted({*chosen.feedback_ids, *rejected.feedback_ids})}


def _answers(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every usable row merged into its answer (rated or not: a ranked sibling needs no thumb); row id -> answer."""
    answers, _ = aggregate_answers(df if "rating" in df else df.assign(rating=math.nan))
    if "label" not in df:  # no thumbs to pair
        answers["label"] = None
    keys = {answer_key(r): r.id for r in answers.itertuples(index=False)}
    return answers, {str(r.id): keys[answer_key(r)] for r in df.itertuples(index=False)}


def _new_counts() -> dict[str, int]:
    return {"rank_votes": 0, "thumbs_pairs": 0, "distinct_pairs": 0, "emitted": 0, "dropped_ties": 0,
            "dropped_low_agreement": 0, "decided_over_reversed_votes": 0, "merged_duplicate_votes": 0}


def _plan(ranked: Iterable[tuple[str, float, str]], answers: pd.DataFrame, answer_of: dict[str, str],
          prompt_of: dict[str, str], min_agreement: float, counts: dict) -> list[tuple]:
    """The pairs to emit, as (chosen answer id, rejected answer id, source, votes, agreement, prompt group) in their
    file order: rank pairs by answer ids, then thumbs pairs by prompt group and member ids. ``ranked`` holds
    (row id, rank, parent id) of each ranked row, ``answers`` one row per answer (:func:`build.aggregate_answers`),
    ``answer_of`` row id -> answer id, ``prompt_of`` answer id -> its prompt's group key."""
    # votes[(a, b)] with a < b: [votes for a over b, votes for b over a]
    rank_votes: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    siblings: dict[tuple, list] = defaultdict(list)
    for row_id, rank, parent in ranked:
        answer = answer_of[row_id]
        siblings[(parent, prompt_of[answer])].append((rank, answer))
    for group in sorted(siblings):
        members = siblings[group]
        for i, (rank_i, a) in enumerate(members):
            for rank_j, b in members[i + 1:]:
                if a == b or rank_i == rank_j:
                    continue
                better, worse = (a, b) if rank_i < rank_j else (b, a)
                key = tuple(sorted((better, worse)))
                rank_votes[key][0 if better == key[0] else 1] += 1
                counts["rank_votes"] += 1

    plan: list[tuple] = []

    def decide(key: tuple[str, str], for_first: int, for_second: int, source: str, group: str | None) -> None:
        counts["distinct_pairs"] += 1
        total = for_first + for_second
        if for_first == for_second:
            counts["dropped_ties"] += 1
            return
        agreement = max(for_first, for_second) / total
        if agreement < min_agreement:
            counts["dropped_low_agreement"] += 1
            return
        counts["decided_over_reversed_votes"] += bool(min(for_first, for_second))
        chosen, rejected = key if for_first > for_second else key[::-1]
        plan.append((chosen, rejected, source, total, agreement, group))

    for key in sorted(rank_votes):
        counts["merged_duplicate_votes"] += sum(rank_votes[key]) - 1
        decide(key, *rank_votes[key], "rank", None)

    by_prompt: dict[str, list] = defaultdict(list)
    for answer in answers.itertuples(index=False):
        if answer.label in _LEVEL and (answer.label != "neutral" or answer.raters):
            by_prompt[prompt_of[answer.id]].append(answer)
    for prompt in sorted(by_prompt):
        members = sorted(by_prompt[prompt], key=lambda a: str(a.id))
        for good in members:
            for bad in members:
                if _LEVEL[good.label] <= _LEVEL[bad.label] or (key := tuple(sorted((good.id, bad.id)))) in rank_votes:
                    continue
                counts["thumbs_pairs"] += 1
                agree = good.votes_up + bad.votes_down
                against = good.raters + bad.raters - agree
                decide(key, *((agree, against) if key[0] == good.id else (against, agree)), "thumbs", prompt)
    counts["emitted"] = len(plan)
    return plan


def _ranked_row(row_id, metadata) -> tuple[str, float, str] | None:
    rank = _rank_of(metadata)
    return (str(row_id), rank, str(metadata["parent_id"])) if rank is not None and metadata.get("parent_id") else None


def dpo_pairs(df: pd.DataFrame, min_agreement: float = MIN_AGREEMENT, stats: dict | None = None) -> list[dict]:
    """Chosen/rejected pairs between answers to the same prompt (see the module docstring), in a stable order.

    ``df`` needs ``id``, ``query``, ``history``, ``response``; ``metadata`` (with ``rank``/``parent_id``) for rank
    pairs and ``label`` + ``rating`` for thumbs pairs. Rows flagged ``exclude_from_training`` are skipped. Pass a
    dict as ``stats`` to receive the counts.
    """
    df = usable_rows(df)
    counts = _new_counts()
    if stats is not None:
        stats.update(counts)
    if df.empty:
        return []
    answers, answer_of = _answers(df)
    by_id = {r.id: r for r in answers.itertuples(index=False)}
    prompt_of = {r.id: prompt_key(prompt_messages(r)) for r in answers.itertuples(index=False)}
    ranked = filter(None, (_ranked_row(row.id, getattr(row, "metadata", None)) for row in df.itertuples(index=False)))
    plan = _plan(ranked, answers, answer_of, prompt_of, min_agreement, counts)
    pairs = [_pair(by_id[chosen], by_id[rejected], source, votes, agreement)
             for chosen, rejected, source, votes, agreement, _ in plan]
    if stats is not None:
        stats.update(counts)
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
                      name: str = "dpo", min_agreement: float = MIN_AGREEMENT) -> BuiltDataset:
    """Write ``<root>/dpo/<fingerprint>/{train,eval}.jsonl`` of preference pairs, split by prompt group.

    Unrated rows stay in: a ranked sibling needs no thumb. The split is :func:`build.split_rows` over every usable
    row, as for SFT and KTO, so a prompt's side does not depend on which of its responses happened to be paired.
    """
    rows = split_rows(cleaned_df, eval_fraction, split_by_user)
    counts: dict = {}
    by_split = split_pairs(rows, dpo_pairs(rows, min_agreement, counts))
    return write_dataset(name, Path(root), by_split, lambda r: r["source"],
                         {"eval_fraction": eval_fraction, "split_by_user": split_by_user, "max_file_mb": max_file_mb,
                          "min_agreement": min_agreement},
                         _watermark(cleaned_df), min_train_examples, max_file_mb, {**_split_stats(rows), "pairs": counts})


# --- the streaming build: the rows stay in the store, the text of a paired answer is fetched when it is written ---

Fetch = Callable[[list[str]], Iterable[pd.DataFrame]]
TEXT_COLUMNS = ["id", "history", "query", "response"]
_BATCH = 1000


def _dpo_fields(usable: pd.DataFrame) -> dict[str, list]:
    """What pass 1 keeps per row beyond the split and the answer: its prompt's digest and its rank, if ranked."""
    metadata = usable["metadata"] if "metadata" in usable else [None] * len(usable)
    ranked = [_ranked_row(i, m) for i, m in zip(usable["id"], metadata)]
    return {"_prompt": [_digest(prompt_key(prompt_messages(r))) for r in usable.itertuples(index=False)],
            "_rank": [r[1] if r else None for r in ranked], "_parent": [r[2] if r else None for r in ranked]}


class _Answer:
    """A fetched row with its answer's merged feedback ids: what :func:`_pair` reads."""

    def __init__(self, row, feedback_ids: list[str]):
        self.id, self.history, self.query, self.response = str(row.id), row.history, row.query, row.response
        self.feedback_ids = feedback_ids


def _texts(fetch: Fetch, ids: Iterable[str]) -> dict[str, object]:
    return {str(r.id): r for frame in fetch(list(dict.fromkeys(ids))) for r in frame.itertuples(index=False)}


def _in_file_order(plan: list[tuple], fetch: Fetch, batch: int) -> list[tuple]:
    """Thumbs pairs ordered by their prompt's key, as :func:`dpo_pairs` orders them (the plan grouped them by the
    key's digest): the key of each paired prompt is computed from one fetched row, a batch at a time."""
    thumbs = [p for p in plan if p[2] == "thumbs"]
    first_of = {p[5]: p[0] for p in reversed(thumbs)}
    key_of: dict[str, str] = {}
    groups = list(first_of)
    for start in range(0, len(groups), batch):
        part = groups[start:start + batch]
        texts = _texts(fetch, [first_of[g] for g in part])
        key_of.update({g: prompt_key(prompt_messages(texts[first_of[g]])) for g in part})
    return [p for p in plan if p[2] != "thumbs"] + sorted(thumbs, key=lambda p: key_of[p[5]])


def build_dpo_dataset_from_chunks(chunks: Chunks, fetch: Fetch, root: Path, eval_fraction: float = 0.15,
                                  min_train_examples: int = 20, split_by_user: bool = True, max_file_mb: float = 50.0,
                                  name: str = "dpo", min_agreement: float = MIN_AGREEMENT,
                                  batch: int = _BATCH) -> BuiltDataset:
    """:func:`build_dpo_dataset` over a stream: ``chunks()`` yields frames of cleaned rows (``SCAN_COLUMNS``) in
    (created_at, id) order (one pass: split, answers, ranks, prompt digests; no text kept); ``fetch(ids)`` yields
    the rows (``id``, ``history``, ``query``, ``response``) of the answers a batch of pairs needs. Memory: a few
    short fields per row, the plan of pairs (ids and counts) and the key of each prompt a thumbs pair is made of
    (to order them as the frame builder does); text is held for one batch of pairs at a time."""
    rows, watermark = _scan_rows(chunks, eval_fraction, split_by_user, answered=None, extra=_dpo_fields)
    counts, plan, feedback_ids = _new_counts(), [], {}
    if len(rows):
        answers, _ = aggregate_answers(rows)
        feedback_ids = dict(zip(answers["id"], answers["feedback_ids"]))
        answer_of = {row_id: answer for answer, ids in feedback_ids.items() for row_id in ids}
        ranked = [(i, r, p) for i, r, p in zip(rows["id"], rows["_rank"], rows["_parent"]) if p is not None]
        plan = _in_file_order(_plan(ranked, answers, answer_of, dict(zip(answers["id"], answers["_prompt"])),
                                    min_agreement, counts), fetch, batch)
    side = dict(zip(rows["id"], rows["split"]))
    writer = DatasetWriter(root, name)
    try:
        for start in range(0, len(plan), batch):
            part = plan[start:start + batch]
            texts = _texts(fetch, [i for p in part for i in p[:2]])
            for chosen, rejected, source, votes, agreement, _ in part:
                if side[chosen] != side[rejected]:
                    raise AssertionError(f"pair {chosen}>{rejected} straddles the split "
                                         f"({side[chosen]} / {side[rejected]})")
                pair = _pair(_Answer(texts[chosen], feedback_ids[chosen]),
                             _Answer(texts[rejected], feedback_ids[rejected]), source, votes, agreement)
                writer.add(side[chosen], pair, source)
    except BaseException:
        writer.abort()
        raise
    return writer.finish({"eval_fraction": eval_fraction, "split_by_user": split_by_user, "max_file_mb": max_file_mb,
                          "min_agreement": min_agreement}, watermark, min_train_examples, max_file_mb,
                         {**_split_stats(rows), "pairs": counts})
