"""SFT and KTO records from cleaned feedback, written as fingerprinted JSONL with a manifest.

SFT (OpenAI chat format): ``{"messages": [...history, user query, assistant response], "weight": w,
"feedback_id": id}``. KTO (trl conversational format): ``{"prompt": [...messages], "completion":
[{"role": "assistant", ...}], "label": bool}``: exactly what a thumb says.

SFT weight policy (:func:`example_weight`), a product of four factors:

- label: ``liked_weight`` (2.0) for a liked response; disliked ones are left out unless ``include_disliked``
  (then ``disliked_weight``, 0.5): imitating a disliked answer only makes sense down-weighted;
- strength, ``|rating|`` on the common [-1, 1] scale, floored at ``min_strength``: a thumb is 1, 5 stars 1 and
  4 stars 0.5; for several raters' votes (oasst1) it is their net agreement (up - down) / (up + down), so 3 up
  and 1 down count 0.5;
- support, ``1 + rater_bonus * log2(raters)`` capped at ``max_support``: raters are the votes cast (or the
  users who sent the identical query+response), so four agreeing raters weigh 1.5x one;
- recency, ``0.5 ** (age / recency_half_life_days)`` floored at ``min_recency``, the age counted back from the
  newest feedback in the frame (not the wall clock, so rebuilding from the same feedback gives the same file).

Weights are rounded to 4 decimals. Both files are capped at ``max_file_mb``: above it the lowest-weight records
are dropped first, and the manifest says how many.

One vote per rater, one example per answer (:func:`aggregate_answers`): the rows rating the same answer (the same
history + query + response, compared lower-cased with whitespace collapsed) are merged before any record is
written. A rater is the row's user, else its session, else the row itself; a rater who rated the answer twice
counts once (the latest rating). A row carrying several raters' votes (oasst1 ``votes_up`` / ``votes_down``)
counts each vote. The answer's net vote is (up - down) / raters, its agreement the majority's share of the raters,
its label the sign of the net vote: ``tie`` when as many liked as disliked it. SFT holds each liked answer once,
with the support bonus from the number of distinct raters; KTO one label per answer, a tie dropped or, with
``tie_policy="neutral"``, written to ``neutral.jsonl`` (``"label": null``, outside train/eval: KTO trains on
booleans only). The manifest's ``stats["aggregation"]`` counts the rows merged into another, repeated votes
dropped, ties and answers rated both ways; its ``feedback_ids`` list every merged row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from feedback_pipeline.datasets.splits import SplitGroups, assign_split, users_on_both_sides

TiePolicy = Literal["drop", "neutral"]


class InsufficientDataError(RuntimeError):
    """Raised instead of training on too little data."""


@dataclass(frozen=True)
class SFTPolicy:
    liked_weight: float = 2.0
    disliked_weight: float = 0.5
    include_disliked: bool = False
    min_strength: float = 0.25
    rater_bonus: float = 0.25
    max_support: float = 2.0
    recency_half_life_days: float | None = 180.0  # None: no decay
    min_recency: float = 0.25
    eval_fraction: float = 0.15
    split_by_user: bool = True
    min_train_examples: int = 20
    max_file_mb: float = 50.0


@dataclass
class BuiltDataset:
    name: str
    directory: Path
    fingerprint: str
    counts: dict[str, int]
    label_balance: dict[str, dict[str, int]]
    feedback_ids: dict[str, list[str]]
    data_watermark: str | None
    params: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # users_on_both_sides, dropped_for_size, weights ...

    def file(self, split: str) -> Path:
        return self.directory / f"{split}.jsonl"

    def manifest(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "counts": self.counts,
                "label_balance": self.label_balance, "data_watermark": self.data_watermark,
                "params": self.params, "stats": self.stats, "feedback_ids": self.feedback_ids}


def prompt_messages(row) -> list[dict[str, str]]:
    return [*(row.history or []), {"role": "user", "content": row.query}]


def usable_rows(cleaned: pd.DataFrame) -> pd.DataFrame:
    """Rows that cleaning did not flag for exclusion (spam, bursts ...)."""
    if "exclude_from_training" in cleaned:
        return cleaned[~cleaned["exclude_from_training"].fillna(False).astype(bool)]
    return cleaned


def split_rows(cleaned: pd.DataFrame, eval_fraction: float, by_user: bool = True) -> pd.DataFrame:
    """Usable rows with their ``split``, computed over all of them (rated or not), so that SFT, KTO and DPO built
    from the same feedback put every row on the same side."""
    rows = usable_rows(cleaned)
    return rows.assign(split=assign_split(rows, eval_fraction, by_user=by_user) if len(rows)
                       else pd.Series(dtype=str))


def trainable_rows(cleaned: pd.DataFrame, eval_fraction: float, by_user: bool = True) -> pd.DataFrame:
    """Rated usable rows with their split (see :func:`split_rows`)."""
    rows = split_rows(cleaned, eval_fraction, by_user)
    return rows[rows["label"].isin(["liked", "disliked"])]


def _norm(text) -> str:
    return " ".join(str(text).lower().split())


def answer_key(row) -> str:
    """Identity of an answer: roles and normalised contents of history + query, then the normalised response."""
    messages = [*prompt_messages(row), {"role": "assistant", "content": row.response}]
    return json.dumps([[m["role"], _norm(m["content"])] for m in messages], ensure_ascii=False)


def _votes(row) -> tuple[int, int, int]:
    """(up, down, neutral) votes one row carries: its metadata's votes when it has them, else its one rating
    (``v_up`` / ``v_down`` / ``v_neutral`` when already counted, as the streaming builder does)."""
    if hasattr(row, "v_up"):
        return int(row.v_up), int(row.v_down), int(row.v_neutral)
    metadata = getattr(row, "metadata", None)
    if isinstance(metadata, dict):
        up, down = int(metadata.get("votes_up") or 0), int(metadata.get("votes_down") or 0)
        if up + down > 0:
            return up, down, 0
    rating = getattr(row, "rating", None)
    if not isinstance(rating, (int, float)) or rating != rating:  # no rating: the label alone, if any
        label = getattr(row, "label", None)
        return int(label == "liked"), int(label == "disliked"), 0
    return int(rating > 0), int(rating < 0), int(rating == 0)


def _rater_keys(rows: pd.DataFrame) -> pd.Series:
    """Who cast a row's vote: the user, else the session, else the row; a row carrying several votes is its own."""
    def key(row) -> str:
        metadata = row.metadata if isinstance(getattr(row, "metadata", None), dict) else {}
        if int(metadata.get("votes_up") or 0) + int(metadata.get("votes_down") or 0) == 0:
            for name in ("user_id", "session_id"):
                value = getattr(row, name, None)
                if isinstance(value, str) and value:
                    return f"{name}:{value}"
        return f"row:{row.id}"
    return pd.Series([key(r) for r in rows.itertuples(index=False)], index=rows.index, dtype=object)


def label_of_votes(up: int, down: int) -> str:
    return "liked" if up > down else "disliked" if down > up else "tie" if up else "neutral"


def aggregate_answers(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per answer (see the module docstring) and the counts of what merging did: ``merged_duplicates``
    rows folded into another row's answer (repeated votes of one rater among them, also counted on their own).

    The answer row is its first row (lowest id) with ``id`` that row's id, ``feedback_ids`` every merged row's id,
    ``created_at`` the newest, ``votes_up`` / ``votes_down`` / ``votes_neutral``, ``raters``, ``net_vote``,
    ``agreement``, ``rating`` (the raters' mean rating) and ``label`` (liked, disliked, tie or neutral). Rows of one
    answer share their prompt, hence their split (``split`` is kept and checked)."""
    stats = {"rows": len(rows), "answers": 0, "merged_duplicates": 0, "repeat_votes_dropped": 0, "ties": 0,
             "answers_rated_both_ways": 0}
    if rows.empty:
        return rows.assign(feedback_ids=pd.Series(dtype=object), raters=pd.Series(dtype="int64")), stats
    order = [c for c in ("updated_at", "ingested_at", "created_at") if c in rows] + ["id"]
    if all(c in rows for c in ("_answer", "_rater", "v_up", "v_down", "v_neutral", "rating")):
        return _aggregate_counted(rows, order, stats)
    # The streaming builder passes the keys already computed (``_answer`` then holds a digest of the key).
    keyed = rows.assign(_answer=rows["_answer"] if "_answer" in rows else
                        [answer_key(r) for r in rows.itertuples(index=False)],
                        _rater=rows["_rater"] if "_rater" in rows else _rater_keys(rows))
    keyed = keyed.sort_values(order, na_position="first", kind="stable")
    counted = ~keyed.duplicated(["_answer", "_rater"], keep="last")  # one vote per rater: the latest
    stats["repeat_votes_dropped"] = int((~counted).sum())
    answers = []
    for _, group in keyed.assign(_counted=counted).groupby("_answer", sort=True):
        group = group.sort_values("id", kind="stable")
        if "split" in group and group["split"].nunique() > 1:
            raise AssertionError(f"answer {group['id'].iloc[0]} straddles the split")
        voters = group[group["_counted"]]
        votes = [_votes(r) for r in voters.itertuples(index=False)]
        up, down, neutral = (sum(v[i] for v in votes) for i in range(3))
        raters = up + down + neutral
        weighted = [(float(r), sum(v)) for r, v in zip(voters["rating"], votes) if sum(v) and r == r]
        first = group.iloc[0].to_dict()
        first.update(
            feedback_ids=sorted(str(i) for i in group["id"]), votes_up=up, votes_down=down, votes_neutral=neutral,
            raters=raters, net_vote=(up - down) / raters if raters else float("nan"),
            agreement=max(up, down, neutral) / raters if raters else float("nan"),
            rating=sum(r * n for r, n in weighted) / sum(n for _, n in weighted) if weighted else float("nan"),
            label=label_of_votes(up, down))
        if "created_at" in group:
            first["created_at"] = group["created_at"].max()
        answers.append(first)
        stats["ties"] += first["label"] == "tie"
        stats["answers_rated_both_ways"] += bool(up and down)
    out = pd.DataFrame(answers).drop(columns=["_answer", "_rater", "_counted"])
    stats["answers"] = len(out)
    stats["merged_duplicates"] = len(keyed) - len(out)
    return out, stats


def _aggregate_counted(rows: pd.DataFrame, order: list[str], stats: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """:func:`aggregate_answers` of rows that carry their keys and votes (``_answer``, ``_rater``, ``v_up`` ...,
    as the streaming builders pass them), in arrays: the same answers, columns and counts without a frame per
    answer. An answer of one row (the usual case) is computed at once; answers of several rows one by one, as
    :func:`aggregate_answers` does."""
    perm = rows[order].reset_index(drop=True).sort_values(order, na_position="first", kind="stable").index.to_numpy()

    def column(name: str, dtype=None) -> np.ndarray:  # in the order above, without copying the frame
        return rows[name].to_numpy(dtype)[perm]

    answer = column("_answer")
    counted = ~pd.DataFrame({"a": answer, "r": column("_rater")}).duplicated(keep="last").to_numpy()
    stats["repeat_votes_dropped"] = int((~counted).sum())
    answer_code, _ = pd.factorize(answer, sort=True)  # groupby's order; -1: no key, no answer
    ids = column("id")
    id_code, _ = pd.factorize(ids, sort=True)
    seq = np.lexsort((id_code, answer_code))  # stable: by answer, then id, then the order above
    seq = seq[answer_code[seq] >= 0]
    codes = answer_code[seq]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(seq) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(seq)])
    first = seq[starts]
    n_row = column("v_up", np.int64) + column("v_down", np.int64) + column("v_neutral", np.int64)
    votes = [np.add.reduceat(np.where(counted, column(c, np.int64), 0)[seq], starts) if len(seq)
             else np.zeros(0, np.int64) for c in ("v_up", "v_down", "v_neutral")]
    up, down, neutral = votes
    raters = up + down + neutral
    rating = column("rating", float)
    with np.errstate(invalid="ignore", divide="ignore"):
        single = rating[first] * n_row[first] / n_row[first]
        net = np.where(raters > 0, (up - down) / np.where(raters > 0, raters, 1), np.nan)
        agreement = np.where(raters > 0, np.maximum(np.maximum(up, down), neutral) / np.where(raters > 0, raters, 1),
                             np.nan)
    out_rating = np.where(counted[first] & (n_row[first] > 0) & ~np.isnan(rating[first]), single, np.nan)
    feedback_ids = [[str(ids[i])] for i in first]
    split = column("split") if "split" in rows else None
    times = rows["created_at"] if "created_at" in rows else None
    newest = {}
    for k in np.flatnonzero(sizes > 1).tolist():
        members = seq[starts[k]:starts[k] + sizes[k]]
        if split is not None and pd.Series(split[members]).nunique() > 1:
            raise AssertionError(f"answer {ids[members[0]]} straddles the split")
        weighted = [(float(rating[i]), int(n_row[i])) for i in members
                    if counted[i] and n_row[i] and rating[i] == rating[i]]
        out_rating[k] = (sum(r * n for r, n in weighted) / sum(n for _, n in weighted) if weighted
                         else float("nan"))
        feedback_ids[k] = sorted(str(i) for i in ids[members])
        if times is not None:
            newest[k] = times.iloc[perm[members]].max()
    label = [label_of_votes(u, d) for u, d in zip(up.tolist(), down.tolist())]
    out = rows.iloc[perm[first]].reset_index(drop=True).assign(
        feedback_ids=feedback_ids, votes_up=up, votes_down=down, votes_neutral=neutral, raters=raters,
        net_vote=net, agreement=agreement, rating=out_rating, label=label)
    if newest:
        created = out["created_at"].copy()
        for k, value in newest.items():
            created.iat[k] = value
        out["created_at"] = created
    out = out.drop(columns=["_answer", "_rater"])
    stats["ties"] = label.count("tie")
    stats["answers_rated_both_ways"] = int(((up > 0) & (down > 0)).sum())
    stats["answers"] = len(out)
    stats["merged_duplicates"] = len(rows) - len(out)
    return out, stats


def _raters(row) -> int:
    raters = getattr(row, "raters", None)  # an aggregated answer: its distinct raters
    if isinstance(raters, (int, float)) and not isinstance(raters, bool) and raters == raters and raters >= 1:
        return int(raters)
    metadata = getattr(row, "metadata", None)
    if isinstance(metadata, dict):
        votes = sum(int(metadata.get(k) or 0) for k in ("votes_up", "votes_down"))
        if votes > 0:
            return votes
    duplicates = getattr(row, "duplicate_count", None)
    return int(duplicates) if isinstance(duplicates, (int, float)) and duplicates == duplicates and duplicates > 1 else 1


def example_weight(row, policy: SFTPolicy, newest: pd.Timestamp | None) -> float:
    """The SFT loss weight of one rated row (the policy is in the module docstring)."""
    label = policy.liked_weight if row.label == "liked" else policy.disliked_weight
    rating = getattr(row, "rating", None)
    strength = abs(float(rating)) if isinstance(rating, (int, float)) and rating == rating else 1.0
    strength = max(policy.min_strength, min(1.0, strength))
    support = min(policy.max_support, 1.0 + policy.rater_bonus * math.log2(_raters(row)))
    recency = 1.0
    created = getattr(row, "created_at", None)
    if policy.recency_half_life_days and newest is not None and created is not None and not pd.isna(created):
        age_days = max(0.0, (newest - pd.Timestamp(created)).total_seconds() / 86400)
        recency = max(policy.min_recency, 0.5 ** (age_days / policy.recency_half_life_days))
    return round(label * strength * support * recency, 4)


def _newest(rows: pd.DataFrame) -> pd.Timestamp | None:
    if "created_at" not in rows or rows["created_at"].isna().all():
        return None
    return pd.Timestamp(rows["created_at"].max())


def _ids(row) -> list[str]:
    ids = getattr(row, "feedback_ids", None)
    return list(ids) if isinstance(ids, (list, tuple)) and len(ids) else [str(row.id)]


def sft_records(rows: pd.DataFrame, policy: SFTPolicy, newest: pd.Timestamp | None = None) -> list[dict]:
    """One record per liked row (and disliked, with ``include_disliked``); pass answers from
    :func:`aggregate_answers` for one record per answer. Ties and neutral rows never teach."""
    records = []
    for row in rows.itertuples(index=False):
        if row.label not in ("liked", "disliked") or (row.label == "disliked" and not policy.include_disliked):
            continue
        records.append({"messages": [*prompt_messages(row), {"role": "assistant", "content": row.response}],
                        "weight": example_weight(row, policy, newest), "feedback_id": row.id, "label": row.label,
                        "feedback_ids": _ids(row)})
    return records


def kto_records(rows: pd.DataFrame, tie_policy: TiePolicy = "drop") -> list[dict]:
    """One record per liked/disliked row (answer); a tie only with ``tie_policy="neutral"``, labelled ``None``."""
    if tie_policy not in ("drop", "neutral"):
        raise ValueError(f"tie_policy must be 'drop' or 'neutral', got {tie_policy!r}")
    keep = ("liked", "disliked", "tie") if tie_policy == "neutral" else ("liked", "disliked")
    return [{"prompt": prompt_messages(row), "completion": [{"role": "assistant", "content": row.response}],
             "label": None if row.label == "tie" else row.label == "liked", "feedback_id": row.id,
             "feedback_ids": _ids(row)}
            for row in rows.itertuples(index=False) if row.label in keep]


def cap_size(lines: list[str], records: list[dict], max_bytes: int) -> tuple[list[str], list[dict]]:
    """At most ``max_bytes`` of JSONL: the highest-weight records (ties: file order) kept, in file order."""
    kept = _kept_within([len(line.encode("utf-8")) + 1 for line in lines],
                        [float(r.get("weight", 1.0)) for r in records], max_bytes)
    return [lines[i] for i in kept], [records[i] for i in kept]


def _kept_within(sizes: list[int], weights: list[float], max_bytes: int) -> list[int]:
    if sum(sizes) <= max_bytes:
        return list(range(len(sizes)))
    order = sorted(range(len(sizes)), key=lambda i: (-weights[i], i))
    kept, total = [], 0
    for i in order:
        if total + sizes[i] <= max_bytes:
            kept.append(i)
            total += sizes[i]
    return sorted(kept)


class DatasetWriter:
    """Writes a dataset record by record, so a build streams: each record becomes one JSON line in a temporary
    file per split, and only its size, weight, label and feedback ids stay in memory. ``finish`` applies the size
    cap, fingerprints the kept lines and moves the files to ``<root>/<name>/<fingerprint[:16]>/`` (the same bytes
    and fingerprint as writing the lists at once)."""

    def __init__(self, root: Path, name: str, splits: tuple[str, ...] = ("train", "eval")):
        self.root, self.name = Path(root), name
        self.work = Path(tempfile.mkdtemp(prefix=".building-", dir=self._ensure(self.root / name)))
        self.files = {split: open(self.work / f"{split}.part", "w", encoding="utf-8") for split in splits}
        self.meta: dict[str, list[tuple[int, float, str, list[str]]]] = {split: [] for split in splits}

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, split: str, record: dict, label: str) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        self.files[split].write(line + "\n")
        self.meta[split].append((len(line.encode("utf-8")) + 1, float(record.get("weight", 1.0)), label,
                                 list(record.get("feedback_ids") or [record["feedback_id"]])))

    def abort(self) -> None:
        for handle in self.files.values():
            handle.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, params: dict, data_watermark: str | None, min_train_examples: int, max_file_mb: float = 50.0,
               stats: dict | None = None) -> BuiltDataset:
        try:
            return self._finish(params, data_watermark, min_train_examples, max_file_mb, stats)
        finally:
            self.abort()

    def _finish(self, params, data_watermark, min_train_examples, max_file_mb, stats) -> BuiltDataset:
        if not max_file_mb > 0:
            raise ValueError(f"{self.name}: max_file_mb must be positive, got {max_file_mb}")
        for handle in self.files.values():
            handle.close()
        kept = {split: _kept_within([m[0] for m in meta], [m[1] for m in meta], int(max_file_mb * 1024 * 1024))
                for split, meta in self.meta.items()}
        n_train = len(kept.get("train", []))
        if n_train < min_train_examples:
            raise InsufficientDataError(
                f"{self.name}: {n_train} training examples, fewer than the minimum {min_train_examples}; collect "
                "more rated feedback or lower min_train_examples")
        if not kept.get("eval"):
            raise InsufficientDataError(f"{self.name}: the evaluation split is empty; more conversations are needed")
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
        for split in sorted(self.meta):
            digest.update(f"\n#{split}\n".encode())
            wanted, out = set(kept[split]), open(self.work / f"{split}.jsonl", "w", encoding="utf-8")
            with open(self.work / f"{split}.part", encoding="utf-8") as lines, out:
                first = True
                for i, line in enumerate(lines):
                    if i in wanted:
                        digest.update((("" if first else "\n") + line[:-1]).encode())
                        out.write(line)
                        first = False
                if first:
                    out.write("\n")  # an empty split is one empty line, as "\n".join([]) + "\n"
        fingerprint = digest.hexdigest()
        directory = self.root / self.name / fingerprint[:16]
        directory.mkdir(parents=True, exist_ok=True)
        for split in self.meta:
            os.replace(self.work / f"{split}.jsonl", directory / f"{split}.jsonl")
        chosen = {split: [self.meta[split][i] for i in kept[split]] for split in self.meta}
        built = BuiltDataset(
            name=self.name, directory=directory, fingerprint=fingerprint,
            counts={split: len(meta) for split, meta in chosen.items()},
            label_balance={split: pd.Series([m[2] for m in meta], dtype=object).value_counts().to_dict()
                           for split, meta in chosen.items()},
            feedback_ids={split: [i for m in meta for i in m[3]] for split, meta in chosen.items()},
            data_watermark=data_watermark, params=params,
            stats={**(stats or {}), "dropped_for_size": {s: len(self.meta[s]) - len(kept[s]) for s in self.meta},
                   "bytes": {split: (directory / f"{split}.jsonl").stat().st_size for split in self.meta}})
        (directory / "manifest.json").write_text(json.dumps(built.manifest(), indent=1, default=str), encoding="utf-8")
        return built


def write_dataset(name: str, root: Path, by_split: dict[str, list[dict]], label_of: Callable[[dict], str],
                  params: dict, data_watermark: str | None, min_train_examples: int, max_file_mb: float = 50.0,
                  stats: dict | None = None) -> BuiltDataset:
    """Write ``<root>/<name>/<fingerprint>/{train,eval}.jsonl`` plus ``manifest.json``; content-addressed,
    so rebuilding from the same feedback reuses the same folder. Each file holds at most ``max_file_mb``."""
    if not max_file_mb > 0:
        raise ValueError(f"{name}: max_file_mb must be positive, got {max_file_mb}")
    writer = DatasetWriter(root, name, tuple(by_split))
    for split, records in by_split.items():
        for record in records:
            writer.add(split, record, label_of(record))
    return writer.finish(params, data_watermark, min_train_examples, max_file_mb, stats)


def _split_stats(rows: pd.DataFrame) -> dict:
    return {"users_on_both_sides": users_on_both_sides(rows, rows["split"]) if len(rows) else 0}


def rated_answers(cleaned: pd.DataFrame, eval_fraction: float, by_user: bool = True) -> tuple[
        pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The rated usable rows with their split, and their answers (:func:`aggregate_answers`, neutral votes
    included in each answer's raters) with the merge counts."""
    rows = split_rows(cleaned, eval_fraction, by_user)
    rated = rows[rows["label"].isin(["liked", "disliked", "neutral"])] if "label" in rows else rows.iloc[:0]
    answers, stats = aggregate_answers(rated)
    return rated[rated["label"].isin(["liked", "disliked"])], answers, stats


def sft_records_by_split(cleaned: pd.DataFrame, policy: SFTPolicy) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """The trainable rows and their SFT records per split (one per answer): what ``sft_dataset`` writes and the
    export streams."""
    rows, answers, _ = rated_answers(cleaned, policy.eval_fraction, policy.split_by_user)
    newest = _newest(rows)
    return rows, {split: sft_records(answers[answers["split"] == split], policy, newest) if len(answers) else []
                  for split in ("train", "eval")}


# --- streaming builds: two passes over chunks of cleaned rows, text never held for more than one chunk ----------

Chunks = Callable[[], Iterable[pd.DataFrame]]
# What the first pass needs of each row (the text only to compute its answer key, then dropped).
SCAN_COLUMNS = ("id", "session_id", "user_id", "query", "history", "response", "label", "rating", "metadata",
                "created_at", "updated_at", "ingested_at", "duplicate_count", "exclude_from_training")
_KEEP = ("id", "session_id", "user_id", "query", "label", "rating", "created_at", "updated_at", "ingested_at",
         "duplicate_count")
_LABELLED = ("liked", "disliked", "neutral")


@dataclass
class _Answers:
    rows: pd.DataFrame  # rated (liked / disliked) usable rows with their split, no text: split stats, newest
    answers: pd.DataFrame  # one row per answer (aggregate_answers), in stream order of its first row
    aggregation: dict
    watermark: str | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _answer_digest(key: str) -> bytes:
    """An answer's identity in pass 1: the sha256 of its key, as bytes (ordered as :func:`_digest`'s hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _scan_rows(chunks: Chunks, eval_fraction: float, by_user: bool, answered: tuple[str, ...] | None = _LABELLED,
               extra: Callable[[pd.DataFrame], dict[str, list]] | None = None) -> tuple[pd.DataFrame, str | None]:
    """Pass 1 over the stream: per usable row only what the split and the merge into answers need (ids, users,
    a digest of the answer key of rows labelled ``answered`` (None: every row), the rater, the votes, times,
    plus the columns ``extra(usable chunk)`` computes), then the split over every usable row as
    :func:`split_rows` computes it (its groups fed a chunk at a time: no query kept). Returns those rows (no text)
    and the data watermark. Repeated strings (users, raters, labels) are held once."""
    parts, newest, position, groups, shared = [], None, 0, SplitGroups(), {}

    def once(values) -> list:
        return [shared.setdefault(v, v) if isinstance(v, str) else v for v in values]

    for chunk in chunks():
        if "ingested_at" in chunk and chunk["ingested_at"].notna().any():
            top = pd.Timestamp(chunk["ingested_at"].max())
            newest = top if newest is None else max(newest, top)
        usable = usable_rows(chunk)
        if len(usable):
            groups.add(usable)
        meta = usable[[c for c in _KEEP if c in usable and c not in ("session_id", "query")]].copy()
        for name in ("user_id", "label"):
            if name in meta:
                meta[name] = once(meta[name])
        meta["stream_pos"] = np.arange(position, position + len(usable))
        position += len(usable)
        if answered is None:
            keyed = np.ones(len(usable), bool)
        elif "label" in usable:
            keyed = usable["label"].isin(answered).to_numpy()
        else:
            keyed = np.zeros(len(usable), bool)
        meta["_answer"] = [_answer_digest(answer_key(r)) if ok else None
                           for r, ok in zip(usable.itertuples(index=False), keyed)]
        meta["_rater"] = once(_rater_keys(usable)) if len(usable) else pd.Series(dtype=object)
        votes = np.array([_votes(r) for r in usable.itertuples(index=False)], dtype=np.int64).reshape(-1, 3)
        for i, name in enumerate(("v_up", "v_down", "v_neutral")):
            meta[name] = votes[:, i]
        for name, values in (extra(usable) if extra else {}).items():
            meta[name] = values
        parts.append(meta)
    if not parts:
        return pd.DataFrame(columns=[*_KEEP, "stream_pos"]).assign(split=pd.Series(dtype=str)).drop(
            columns=["query"]), None
    rows = pd.concat(parts, ignore_index=True)
    del parts
    rows["split"] = groups.sides(eval_fraction, by_user=by_user) if len(rows) else pd.Series(dtype=str)
    return rows, newest.isoformat() if newest is not None else None


def _scan(chunks: Chunks, eval_fraction: float, by_user: bool) -> _Answers:
    """Pass 1 (:func:`_scan_rows`), then the answers as :func:`rated_answers` computes them. Memory: a few short
    fields per row, no answer text."""
    rows, watermark = _scan_rows(chunks, eval_fraction, by_user)
    rated = rows[rows["label"].isin(_LABELLED)] if "label" in rows else rows.iloc[:0]
    del rows  # the rated rows are a copy
    answers, aggregation = aggregate_answers(rated)
    if len(answers):
        answers = answers.sort_values("stream_pos", kind="stable", ignore_index=True)
    slim = [c for c in ("user_id", "created_at", "split") if c in rated]  # what split stats and recency read
    trained = rated.loc[rated["label"].isin(["liked", "disliked"]).to_numpy(), slim]
    return _Answers(trained, answers, aggregation, watermark)


def _emit(chunks: Chunks, wanted: pd.DataFrame, write: Callable[[object, object], None]) -> None:
    """Pass 2: stream the rows again and hand each wanted answer's first row (its text) with the answer (a row of
    ``wanted``, looked up by id) to ``write``, in stream order."""
    ids = pd.Index(wanted["id"].astype(str).to_numpy(), dtype=object)
    if not ids.is_unique:  # as a dict by id would: the last answer of an id
        keep = ~ids.duplicated(keep="last")
        wanted, ids = wanted[keep], ids[keep]
    for chunk in chunks():
        where = ids.get_indexer(chunk["id"].astype(str).to_numpy())
        hits = np.flatnonzero(where >= 0)
        if not len(hits):
            continue
        rows = chunk.iloc[hits].itertuples(index=False)
        for row, answer in zip(rows, wanted.iloc[where[hits]].itertuples(index=False)):
            write(row, answer)


def _stream_sft(chunks: Chunks, root: Path, policy: SFTPolicy, name: str) -> BuiltDataset:
    scanned = _scan(chunks, policy.eval_fraction, policy.split_by_user)
    newest = _newest(scanned.rows)
    teach = ("liked", "disliked") if policy.include_disliked else ("liked",)
    answers = scanned.answers
    wanted = answers[answers["label"].isin(teach)] if len(answers) else answers.assign(id=pd.Series(dtype=object))
    writer, train_weights = DatasetWriter(root, name), []

    def write(row, answer) -> None:
        record = {"messages": [*prompt_messages(row), {"role": "assistant", "content": row.response}],
                  "weight": example_weight(answer, policy, newest), "feedback_id": answer.id,
                  "label": answer.label, "feedback_ids": _ids(answer)}
        if answer.split == "train":
            train_weights.append(record["weight"])
        writer.add(answer.split, record, record["label"])

    try:
        _emit(chunks, wanted, write)
    except BaseException:
        writer.abort()
        raise
    weights = pd.Series(train_weights, dtype=float)
    stats = {**_split_stats(scanned.rows), "aggregation": scanned.aggregation,
             "train_weight": {"min": weights.min(), "mean": weights.mean(), "max": weights.max()}
             if len(weights) else {}}
    return writer.finish(asdict(policy), scanned.watermark, policy.min_train_examples, policy.max_file_mb, stats)


def _stream_kto(chunks: Chunks, root: Path, eval_fraction: float, min_train_examples: int, split_by_user: bool,
                max_file_mb: float, name: str, tie_policy: TiePolicy) -> BuiltDataset:
    if tie_policy not in ("drop", "neutral"):
        raise ValueError(f"tie_policy must be 'drop' or 'neutral', got {tie_policy!r}")
    scanned = _scan(chunks, eval_fraction, split_by_user)
    keep = ("liked", "disliked", "tie") if tie_policy == "neutral" else ("liked", "disliked")
    answers = scanned.answers
    wanted = answers[answers["label"].isin(keep)] if len(answers) else answers.assign(id=pd.Series(dtype=object))
    splits = ("train", "eval", "neutral") if tie_policy == "neutral" else ("train", "eval")
    writer, ties = DatasetWriter(root, name, splits), 0

    def write(row, answer) -> None:
        nonlocal ties
        record = {"prompt": prompt_messages(row), "completion": [{"role": "assistant", "content": row.response}],
                  "label": None if answer.label == "tie" else answer.label == "liked", "feedback_id": answer.id,
                  "feedback_ids": _ids(answer)}
        if record["label"] is None:
            ties += 1
            writer.add("neutral", {**record, "split": answer.split}, "neutral")
        else:
            writer.add(answer.split, record, "liked" if record["label"] else "disliked")

    try:
        _emit(chunks, wanted, write)
    except BaseException:
        writer.abort()
        raise
    aggregation = scanned.aggregation
    stats = {**_split_stats(scanned.rows), "aggregation": {**aggregation, "ties_dropped": 0 if tie_policy == "neutral"
                                                           else aggregation["ties"], "ties_neutral": ties}}
    params = {"eval_fraction": eval_fraction, "split_by_user": split_by_user, "max_file_mb": max_file_mb,
              "tie_policy": tie_policy}
    return writer.finish(params, scanned.watermark, min_train_examples, max_file_mb, stats)


def _frame_chunks(cleaned: pd.DataFrame) -> Chunks:
    """A frame as the one chunk of a stream, in the store's (created_at, id) order."""
    order = [c for c in ("created_at", "id") if c in cleaned]
    ordered = cleaned.sort_values(order, kind="stable") if order and len(cleaned) else cleaned
    return lambda: [ordered]


def build_sft_dataset(cleaned: pd.DataFrame, root: Path, policy: SFTPolicy = SFTPolicy(),
                      name: str = "sft") -> BuiltDataset:
    """One record per liked answer (see the module docstring), from a frame of cleaned rows; the pipeline streams
    the same build from the store (:func:`build_sft_dataset_from_chunks`)."""
    return _stream_sft(_frame_chunks(cleaned), root, policy, name)


def build_kto_dataset(cleaned: pd.DataFrame, root: Path, eval_fraction: float = 0.15,
                      min_train_examples: int = 20, split_by_user: bool = True, max_file_mb: float = 50.0,
                      name: str = "kto", tie_policy: TiePolicy = "drop") -> BuiltDataset:
    """One labelled record per answer; ties per ``tie_policy`` ('drop', or 'neutral': kept in ``neutral.jsonl``)."""
    return _stream_kto(_frame_chunks(cleaned), root, eval_fraction, min_train_examples, split_by_user, max_file_mb,
                       name, tie_policy)


def build_sft_dataset_from_chunks(chunks: Chunks, root: Path, policy: SFTPolicy = SFTPolicy(),
                                  name: str = "sft") -> BuiltDataset:
    """:func:`build_sft_dataset` over a stream: ``chunks()`` yields frames of cleaned rows (``SCAN_COLUMNS``) in
    (created_at, id) order and is called twice (the answers, then their text); memory holds one chunk and a few
    short fields per row."""
    return _stream_sft(chunks, root, policy, name)


def build_kto_dataset_from_chunks(chunks: Chunks, root: Path, eval_fraction: float = 0.15,
                                  min_train_examples: int = 20, split_by_user: bool = True,
                                  max_file_mb: float = 50.0, name: str = "kto",
                                  tie_policy: TiePolicy = "drop") -> BuiltDataset:
    return _stream_kto(chunks, root, eval_fraction, min_train_examples, split_by_user, max_file_mb, name, tie_policy)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _watermark(cleaned: pd.DataFrame) -> str | None:
    """Newest ingestion time of the feedback a dataset was built from: the retraining sensor counts from it."""
    if "ingested_at" not in cleaned or cleaned.empty:
        return None
    return pd.Timestamp(cleaned["ingested_at"].max()).isoformat()

