"""The right to erasure: one user's feedback removed from every copy the pipeline keeps.

``erase_user`` is what ``feedback-pipeline erase-user`` and ``DELETE /v1/users/{id}/feedback`` run:

1. **database**, one transaction: the user's rows of ``feedback``, ``cleaned_feedback`` (the redacted copy),
   ``rejected_feedback`` (ids and reasons), ``chat_responses`` (the exposure log), and every artifact that quotes
   one of their rows (``feedback_quotes``): the improvement_suggestions rows of those analysis runs;
2. **files** under the data directory: the report files that quote their rows (error patterns, suggestions and the
   analysis state behind them; the next analysis run writes them again), every dataset folder whose manifest lists
   one of their feedback ids (``datasets/**/manifest.json``: SFT, KTO, DPO, embedding pairs, weekly sets; the next
   build writes them again without the user), and the lines of other JSONL files naming one of their ids (the gold
   set);
3. **SQLite**: deleted content is overwritten with zeros (``secure_delete``, set on every connection) and the WAL
   is checkpointed and truncated, so the file keeps no old page image of the rows.

Nothing text-bearing is kept elsewhere: table assets hand over references (nothing pickled under DAGSTER_HOME),
Dagster's metadata holds counts and reports without quoted texts, the rejected-rows report holds ids and reasons.
Not reached: model weights trained before the erasure (the next retraining replaces them) and the MLflow runs of
those trainings (their evaluation examples; ``mlflow gc`` after deleting the runs removes them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from feedback_pipeline.store.repository import FeedbackStore


@dataclass(frozen=True)
class ErasureReport:
    user_id: str
    feedback_rows: int
    cleaned_rows: int
    rejected_rows: int
    exposures: int
    suggestion_runs: tuple[str, ...] = ()
    files_removed: tuple[str, ...] = ()  # relative to the data directory
    datasets_removed: tuple[str, ...] = ()
    jsonl_lines_removed: int = 0

    def summary(self) -> str:
        return (f"erased user {self.user_id}: {self.feedback_rows} feedback rows, {self.cleaned_rows} cleaned, "
                f"{self.rejected_rows} rejected, {self.exposures} exposures; {len(self.suggestion_runs)} suggestion "
                f"runs, {len(self.files_removed)} report files, {len(self.datasets_removed)} dataset folders, "
                f"{self.jsonl_lines_removed} JSONL lines removed")

    def as_dict(self) -> dict:
        return {"user_id": self.user_id, "deleted": self.feedback_rows, "cleaned": self.cleaned_rows,
                "rejected": self.rejected_rows, "exposures": self.exposures,
                "suggestion_runs": list(self.suggestion_runs), "files_removed": list(self.files_removed),
                "datasets_removed": list(self.datasets_removed), "jsonl_lines_removed": self.jsonl_lines_removed}


def erase_user(store: FeedbackStore, user_id: str, data_dir: Path | None = None) -> ErasureReport:
    """Erase one user everywhere (see the module docstring); ``data_dir`` None erases the database only."""
    rows = store.erase_rows(user_id)
    files, datasets, lines = [], [], 0
    if data_dir is not None and Path(data_dir).is_dir():
        root = Path(data_dir)
        for artifact in rows.artifacts:
            path = root / artifact.removeprefix("file:")
            if path.is_file():
                path.unlink()
                files.append(artifact.removeprefix("file:"))
        datasets = _remove_datasets(root / "datasets", set(rows.feedback_ids), root)
        lines = _remove_jsonl_lines(root, set(rows.feedback_ids))
    return ErasureReport(user_id, rows.feedback_rows, rows.cleaned_rows, rows.rejected_rows, rows.exposures,
                         rows.suggestion_runs, tuple(files), tuple(datasets), lines)


def _manifest_ids(manifest: dict) -> set[str]:
    found = manifest.get("feedback_ids") or {}
    values = found.values() if isinstance(found, dict) else [found]
    return {str(i) for ids in values for i in (ids or [])}


def _remove_datasets(datasets: Path, ids: set[str], root: Path) -> list[str]:
    """Dataset folders (a ``manifest.json`` with ``feedback_ids`` under ``datasets/``) built from any of ``ids``:
    removed whole (their fingerprint names their content; the next build writes the set again without them)."""
    removed = []
    for manifest in sorted(datasets.rglob("manifest.json")) if datasets.is_dir() else []:
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and _manifest_ids(data) & ids:
            shutil.rmtree(manifest.parent, ignore_errors=True)
            removed.append(str(manifest.parent.relative_to(root)))
    return removed


def _names(record: dict, ids: set[str]) -> bool:
    named = {str(record.get("feedback_id"))} | {str(i) for i in (record.get("feedback_ids") or [])}
    return bool(named & ids)


def _remove_jsonl_lines(root: Path, ids: set[str]) -> int:
    """Lines naming one of ``ids`` (``feedback_id`` / ``feedback_ids``) in the remaining JSONL files (the gold set),
    each file rewritten atomically."""
    removed = 0
    for path in sorted(root.rglob("*.jsonl")):
        if not path.is_file():
            continue
        keep, dropped = [], 0
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    keep.append(line)
                    continue
                if isinstance(record, dict) and _names(record, ids):
                    dropped += 1
                else:
                    keep.append(line)
        if dropped:
            temporary = path.with_name(path.name + ".erasing")
            with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.writelines(keep)
            os.replace(temporary, path)
            removed += dropped
    return removed
