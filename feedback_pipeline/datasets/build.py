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
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from feedback_pipeline.datasets.splits import assign_split, users_on_both_sides


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


def _raters(row) -> int:
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


def sft_records(rows: pd.DataFrame, policy: SFTPolicy, newest: pd.Timestamp | None = None) -> list[dict]:
    records = []
    for row in rows.itertuples(index=False):
        if row.label == "disliked" and not policy.include_disliked:
            continue
        records.append({"messages": [*prompt_messages(row), {"role": "assistant", "content": row.response}],
                        "weight": example_weight(row, policy, newest), "feedback_id": row.id, "label": row.label})
    return records


def kto_records(rows: pd.DataFrame) -> list[dict]:
    return [{"prompt": prompt_messages(row), "completion": [{"role": "assistant", "content": row.response}],
             "label": row.label == "liked", "feedback_id": row.id}
            for row in rows.itertuples(index=False)]


def cap_size(lines: list[str], records: list[dict], max_bytes: int) -> tuple[list[str], list[dict]]:
    """At most ``max_bytes`` of JSONL: the highest-weight records (ties: file order) kept, in file order."""
    sizes = [len(line.encode("utf-8")) + 1 for line in lines]
    if sum(sizes) <= max_bytes:
        return lines, records
    order = sorted(range(len(lines)), key=lambda i: (-float(records[i].get("weight", 1.0)), i))
    kept, total = [], 0
    for i in order:
        if total + sizes[i] <= max_bytes:
            kept.append(i)
            total += sizes[i]
    kept.sort()
    return [lines[i] for i in kept], [records[i] for i in kept]


def write_dataset(name: str, root: Path, by_split: dict[str, list[dict]], label_of: Callable[[dict], str],
                  params: dict, data_watermark: str | None, min_train_examples: int, max_file_mb: float = 50.0,
                  stats: dict | None = None) -> BuiltDataset:
    """Write ``<root>/<name>/<fingerprint>/{train,eval}.jsonl`` plus ``manifest.json``; content-addressed,
    so rebuilding from the same feedback reuses the same folder. Each file holds at most ``max_file_mb``."""
    if not max_file_mb > 0:
        raise ValueError(f"{name}: max_file_mb must be positive, got {max_file_mb}")
    lines, dropped = {}, {}
    for split, records in by_split.items():
        raw = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]
        lines[split], by_split[split] = cap_size(raw, records, int(max_file_mb * 1024 * 1024))
        dropped[split] = len(raw) - len(lines[split])
    if len(by_split.get("train", [])) < min_train_examples:
        raise InsufficientDataError(
            f"{name}: {len(by_split.get('train', []))} training examples, fewer than the minimum "
            f"{min_train_examples}; collect more rated feedback or lower min_train_examples")
    if not by_split.get("eval"):
        raise InsufficientDataError(f"{name}: the evaluation split is empty; more conversations are needed")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for split in sorted(lines):
        digest.update(f"\n#{split}\n".encode())
        digest.update("\n".join(lines[split]).encode())
    fingerprint = digest.hexdigest()
    directory = root / name / fingerprint[:16]
    directory.mkdir(parents=True, exist_ok=True)
    for split, split_lines in lines.items():
        (directory / f"{split}.jsonl").write_text("\n".join(split_lines) + "\n", encoding="utf-8")
    built = BuiltDataset(
        name=name, directory=directory, fingerprint=fingerprint,
        counts={split: len(records) for split, records in by_split.items()},
        label_balance={split: pd.Series([label_of(r) for r in records]).value_counts().to_dict()
                       for split, records in by_split.items()},
        feedback_ids={split: [r["feedback_id"] for r in records] for split, records in by_split.items()},
        data_watermark=data_watermark, params=params,
        stats={**(stats or {}), "dropped_for_size": dropped,
               "bytes": {split: (directory / f"{split}.jsonl").stat().st_size for split in lines}})
    (directory / "manifest.json").write_text(json.dumps(built.manifest(), indent=1, default=str), encoding="utf-8")
    return built


def _split_stats(rows: pd.DataFrame) -> dict:
    return {"users_on_both_sides": users_on_both_sides(rows, rows["split"]) if len(rows) else 0}


def sft_records_by_split(cleaned: pd.DataFrame, policy: SFTPolicy) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """The trainable rows and their SFT records per split: what ``sft_dataset`` writes and the export streams."""
    rows = trainable_rows(cleaned, policy.eval_fraction, policy.split_by_user)
    newest = _newest(rows)
    return rows, {split: sft_records(rows[rows["split"] == split], policy, newest) for split in ("train", "eval")}


def build_sft_dataset(cleaned: pd.DataFrame, root: Path, policy: SFTPolicy = SFTPolicy(),
                      name: str = "sft") -> BuiltDataset:
    rows, by_split = sft_records_by_split(cleaned, policy)
    weights = pd.Series([r["weight"] for r in by_split["train"]], dtype=float)
    stats = {**_split_stats(rows), "train_weight": {"min": weights.min(), "mean": weights.mean(), "max": weights.max()}
             if len(weights) else {}}
    return write_dataset(name, root, by_split, lambda r: r["label"], asdict(policy), _watermark(cleaned),
                         policy.min_train_examples, policy.max_file_mb, stats)


def build_kto_dataset(cleaned: pd.DataFrame, root: Path, eval_fraction: float = 0.15,
                      min_train_examples: int = 20, split_by_user: bool = True, max_file_mb: float = 50.0,
                      name: str = "kto") -> BuiltDataset:
    rows = trainable_rows(cleaned, eval_fraction, split_by_user)
    by_split = {split: kto_records(rows[rows["split"] == split]) for split in ("train", "eval")}
    return write_dataset(name, root, by_split, lambda r: "liked" if r["label"] else "disliked",
                         {"eval_fraction": eval_fraction, "split_by_user": split_by_user, "max_file_mb": max_file_mb},
                         _watermark(cleaned), min_train_examples, max_file_mb, _split_stats(rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _watermark(cleaned: pd.DataFrame) -> str | None:
    """Newest ingestion time of the feedback a dataset was built from: the retraining sensor counts from it."""
    if "ingested_at" not in cleaned or cleaned.empty:
        return None
    return pd.Timestamp(cleaned["ingested_at"].max()).isoformat()

