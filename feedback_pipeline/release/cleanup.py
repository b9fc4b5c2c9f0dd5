"""The monthly lifecycle: archive old model versions nobody uses (deleting their local folders) and old datasets.

MLflow 3 has no stages: an archived version keeps its registry entry and gets the tags ``archived=true`` and
``archived_at``. Nothing an alias points at and nothing among a model's last ``keep_last`` versions is touched.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mlflow.tracking import MlflowClient

from feedback_pipeline.release.deployments import record_deployment
from feedback_pipeline.release.models import set_version_tags, artifact_dirs, is_archived, list_versions
from feedback_pipeline.store.repository import FeedbackStore


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        total += sum((Path(folder) / f).lstat().st_size for f in files)
    return total


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@dataclass(frozen=True)
class ArchivedVersion:
    name: str
    version: str
    created_at: datetime
    removed_dirs: list[str]
    bytes_freed: int


@dataclass
class CleanupReport:
    dry_run: bool
    cutoff: datetime
    archived: list[ArchivedVersion] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (name, version, why)
    skipped_dirs: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def bytes_freed(self) -> int:
        return sum(a.bytes_freed for a in self.archived)

    def to_markdown(self) -> str:
        verb = "Would archive" if self.dry_run else "Archived"
        lines = [f"### Model cleanup{' (dry run)' if self.dry_run else ''}",
                 f"{verb} {len(self.archived)} versions created before {self.cutoff:%Y-%m-%d}, "
                 f"{_mb(self.bytes_freed)} freed; kept {len(self.kept)}.", "",
                 "| model | version | created | folders | freed |", "|---|---|---|---|---|"]
        lines += [f"| {a.name} | {a.version} | {a.created_at:%Y-%m-%d} | {'<br>'.join(a.removed_dirs) or '-'} | "
                  f"{_mb(a.bytes_freed)} |" for a in self.archived]
        lines += ["", "| kept | version | why |", "|---|---|---|"]
        lines += [f"| {name} | {version} | {why} |" for name, version, why in self.kept]
        if self.skipped_dirs:
            lines += ["", "Folders left in place:"] + [f"- `{path}`: {why}" for path, why in self.skipped_dirs]
        return "\n".join(lines)


def _unsafe(path: Path, protected: list[Path]) -> str | None:
    """Why a tagged folder must not be deleted, or None."""
    if not path.is_absolute():
        return "not an absolute path"
    resolved = path.resolve()
    if len(resolved.parts) < 3:
        return "too close to the filesystem root"
    for keep in protected:
        if resolved == keep or keep in resolved.parents or resolved in keep.parents:
            return f"shared with a kept version ({keep})"
    return None


def cleanup_models(client: MlflowClient, store: FeedbackStore | None, names: list[str], older_than_days: int = 90,
                   keep_last: int = 3, now: datetime | None = None, dry_run: bool = False,
                   actor: str = "cleanup") -> CleanupReport:
    """Archive versions older than ``older_than_days`` that hold no alias and are not among the last ``keep_last``:
    delete their ``artifact_dirs``, tag them ``archived``, and log an ``archive`` row (when ``store`` is given)."""
    now = now or datetime.now(timezone.utc)
    report = CleanupReport(dry_run=dry_run, cutoff=now - timedelta(days=older_than_days))
    candidates, protected = [], []
    for name in names:
        for rank, version in enumerate(list_versions(client, name)):  # newest first
            created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc)
            why = (f"alias {','.join(version.aliases)}" if version.aliases
                   else f"among the last {keep_last}" if rank < keep_last
                   else "already archived" if is_archived(version)
                   else f"newer than {older_than_days} days" if created > report.cutoff else None)
            if why is None:
                candidates.append((version, created))
            else:
                report.kept.append((name, str(version.version), why))
                if not is_archived(version):
                    protected.extend(p.resolve() for p in artifact_dirs(version) if p.is_absolute())
    for version, created in candidates:
        name, number = version.name, str(version.version)
        if client.get_model_version(name, number).aliases:  # promoted since we listed: leave it alone
            report.kept.append((name, number, "got an alias during cleanup"))
            continue
        removed, freed = [], 0
        for path in artifact_dirs(version):
            problem = _unsafe(path, protected) or (None if path.exists() or path.is_symlink() else "already gone")
            if problem:
                report.skipped_dirs.append((str(path), problem))
                continue
            size = _size(path)
            if not dry_run:
                _remove(path)
            removed.append(str(path))
            freed += size
        if not dry_run:
            # Folders first, tags second: a failure in between leaves an untagged version that the next run
            # retries, never a version tagged archived whose folders still take the space.
            set_version_tags(client, name, number, {"archived": "true", "archived_bytes_freed": freed,
                                                    "archived_at": now.isoformat(timespec="seconds")})
            if store is not None:
                record_deployment(store, name, number, "archive", "cleanup", family=(version.tags or {}).get("family"),
                                  evidence={"removed_dirs": removed, "bytes_freed": freed,
                                            "created_at": created.isoformat()}, actor=actor,
                                  reason=f"older than {older_than_days} days, no alias, not among the last {keep_last}")
        report.archived.append(ArchivedVersion(name, number, created, removed, freed))
    return report


def live_fingerprints(client: MlflowClient, names: list[str]) -> set[str]:
    """Dataset fingerprints (full, or the 16-character folder name) that aliased versions were trained on."""
    found = set()
    for name in names:
        for version in list_versions(client, name):
            if not version.aliases:
                continue
            tags = version.tags or {}
            if tags.get("dataset_fingerprint"):
                found.add(tags["dataset_fingerprint"])
            if tags.get("dataset_manifest"):
                found.add(Path(tags["dataset_manifest"]).parent.name)
    return found


@dataclass(frozen=True)
class RemovedDataset:
    name: str
    fingerprint: str
    path: str
    modified: datetime
    bytes: int
    archive: str | None
    bytes_freed: int


@dataclass
class DatasetCleanupReport:
    mode: str
    dry_run: bool
    cutoff: datetime
    removed: list[RemovedDataset] = field(default_factory=list)
    protected: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.removed)

    def to_markdown(self) -> str:
        verb = {"archive": "Packed and removed", "delete": "Deleted"}[self.mode]
        lines = [f"### Dataset cleanup ({self.mode}{', dry run' if self.dry_run else ''})",
                 f"{'Would process' if self.dry_run else verb} {len(self.removed)} dataset folders last built before "
                 f"{self.cutoff:%Y-%m-%d}, {_mb(self.bytes_freed)} freed"
                 f"{' (at most: packing not done)' if self.dry_run and self.mode == 'archive' else ''}.", "",
                 "| dataset | fingerprint | last built | size | archive |", "|---|---|---|---|---|"]
        lines += [f"| {r.name} | {r.fingerprint} | {r.modified:%Y-%m-%d} | {_mb(r.bytes)} | {r.archive or '-'} |"
                  for r in self.removed]
        if self.protected:
            lines += ["", "Kept although old:"] + [f"- `{path}`: {why}" for path, why in self.protected]
        return "\n".join(lines)


def _pack(folder: Path, archive: Path) -> None:
    """``folder`` as ``archive`` (members under the folder's name), written atomically and read back."""
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    expected = {f"{folder.name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()}
    with tarfile.open(partial, "r:gz") as tar:
        missing = expected - {m.name for m in tar.getmembers() if m.isfile()}
    if missing:
        partial.unlink()
        raise RuntimeError(f"packing {folder} lost {sorted(missing)[:5]}; nothing was removed")
    os.replace(partial, archive)


def cleanup_datasets(datasets_root: str | Path, older_than_days: int = 182, mode: str = "archive",
                     now: datetime | None = None, protected_fingerprints: set[str] = frozenset(),
                     dry_run: bool = False) -> DatasetCleanupReport:
    """Dataset folders ``<root>/<name>/<fingerprint16>/`` whose manifest.json is older than ``older_than_days`` are
    packed into ``<fingerprint16>.tar.gz`` next to them and removed (``archive``), or removed (``delete``).
    A folder whose fingerprint is in ``protected_fingerprints`` (see ``live_fingerprints``) is never touched."""
    if mode not in ("archive", "delete"):
        raise ValueError(f"mode must be archive or delete, got {mode!r}")
    now = now or datetime.now(timezone.utc)
    report = DatasetCleanupReport(mode=mode, dry_run=dry_run, cutoff=now - timedelta(days=older_than_days))
    protected = {p[:16] for p in protected_fingerprints}
    for manifest in sorted(Path(datasets_root).glob("*/*/manifest.json")):
        folder = manifest.parent
        modified = datetime.fromtimestamp(manifest.stat().st_mtime, timezone.utc)
        if modified > report.cutoff:
            continue
        if folder.name in protected:
            report.protected.append((str(folder), "a live (aliased) model version was trained on it"))
            continue
        size = _size(folder)
        archive = folder.parent / f"{folder.name}.tar.gz" if mode == "archive" else None
        freed = size
        if not dry_run:
            if archive is not None:
                _pack(folder, archive)
                freed = size - archive.stat().st_size
            shutil.rmtree(folder)
        report.removed.append(RemovedDataset(folder.parent.name, folder.name, str(folder), modified, size,
                                             str(archive) if archive else None, freed))
    return report
