"""SFT and KTO records from cleaned feedback, written as fingerprinted JSONL with a manifest.

SFT (OpenAI chat format): ``{"messages": [...history, user query, assistant response], "weight": w,
"feedback_id": id}``. Liked responses get ``liked_weight``; disliked ones are left out unless
``include_disliked`` (then ``disliked_weight``): imitating a disliked answer only makes sense down-weighted.
KTO (trl conversational format): ``{"prompt": [...messages], "completion": [{"role": "assistant", ...}],
"label": bool}``: exactly what a thumb says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from feedback_pipeline.datasets.splits import assign_split


class InsufficientDataError(RuntimeError):
    """Raised instead of training on too little data."""


@dataclass(frozen=True)
class SFTPolicy:
    liked_weight: float = 2.0
    disliked_weight: float = 0.5
    include_disliked: bool = False
    eval_fraction: float = 0.15
    min_train_examples: int = 20


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

    def file(self, split: str) -> Path:
        return self.directory / f"{split}.jsonl"

    def manifest(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "counts": self.counts,
                "label_balance": self.label_balance, "data_watermark": self.data_watermark,
                "params": self.params, "feedback_ids": self.feedback_ids}


def prompt_messages(row) -> list[dict[str, str]]:
    return [*(row.history or []), {"role": "user", "content": row.query}]


def trainable_rows(cleaned: pd.DataFrame, eval_fraction: float) -> pd.DataFrame:
    """Rated rows that cleaning did not flag for exclusion, with their split."""
    rows = cleaned[cleaned["label"].isin(["liked", "disliked"])]
    if "exclude_from_training" in rows:
        rows = rows[~rows["exclude_from_training"].astype(bool)]
    return rows.assign(split=assign_split(rows, eval_fraction) if len(rows) else pd.Series(dtype=str))


def sft_records(rows: pd.DataFrame, policy: SFTPolicy) -> list[dict]:
    records = []
    for row in rows.itertuples(index=False):
        if row.label == "disliked" and not policy.include_disliked:
            continue
        weight = policy.liked_weight if row.label == "liked" else policy.disliked_weight
        records.append({"messages": [*prompt_messages(row), {"role": "assistant", "content": row.response}],
                        "weight": weight, "feedback_id": row.id, "label": row.label})
    return records


def kto_records(rows: pd.DataFrame) -> list[dict]:
    return [{"prompt": prompt_messages(row), "completion": [{"role": "assistant", "content": row.response}],
             "label": row.label == "liked", "feedback_id": row.id}
            for row in rows.itertuples(index=False)]


def write_dataset(name: str, root: Path, by_split: dict[str, list[dict]], label_of, params: dict,
                  data_watermark: str | None, min_train_examples: int) -> BuiltDataset:
    """Write ``<root>/<name>/<fingerprint>/{train,eval}.jsonl`` plus ``manifest.json``; content-addressed,
    so rebuilding from the same feedback reuses the same folder."""
    if len(by_split.get("train", [])) < min_train_examples:
        raise InsufficientDataError(
            f"{name}: {len(by_split.get('train', []))} training examples, fewer than the minimum "
            f"{min_train_examples}; collect more rated feedback or lower min_train_examples")
    if not by_split.get("eval"):
        raise InsufficientDataError(f"{name}: the evaluation split is empty; more conversations are needed")
    lines = {split: [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records]
             for split, records in by_split.items()}
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
        data_watermark=data_watermark, params=params)
    (directory / "manifest.json").write_text(json.dumps(built.manifest(), indent=1, default=str), encoding="utf-8")
    return built


def build_sft_dataset(cleaned: pd.DataFrame, root: Path, policy: SFTPolicy = SFTPolicy()) -> BuiltDataset:
    rows = trainable_rows(cleaned, policy.eval_fraction)
    by_split = {split: sft_records(rows[rows["split"] == split], policy) for split in ("train", "eval")}
    return write_dataset("sft", root, by_split, lambda r: r["label"], asdict(policy), _watermark(cleaned),
                         policy.min_train_examples)


def build_kto_dataset(cleaned: pd.DataFrame, root: Path, eval_fraction: float = 0.15,
                      min_train_examples: int = 20) -> BuiltDataset:
    rows = trainable_rows(cleaned, eval_fraction)
    by_split = {split: kto_records(rows[rows["split"] == split]) for split in ("train", "eval")}
    return write_dataset("kto", root, by_split, lambda r: "liked" if r["label"] else "disliked",
                         {"eval_fraction": eval_fraction}, _watermark(cleaned), min_train_examples)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _watermark(cleaned: pd.DataFrame) -> str | None:
    """Newest ingestion time of the feedback a dataset was built from: the retraining sensor counts from it."""
    if "ingested_at" not in cleaned or cleaned.empty:
        return None
    return pd.Timestamp(cleaned["ingested_at"].max()).isoformat()

