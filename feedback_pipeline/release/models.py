"""Registered model versions: champion / challenger / previous_champion aliases, release decisions, lineage.

Every function takes an ``MlflowClient`` whose tracking (and registry) URI the caller chose; functions that
decide also take the ``FeedbackStore`` whose ``model_deployments`` table records the decision. The MLflow
registry says what is deployed now (serving loads ``models:/NAME@champion``); the table says how it got there.

Version tags the pipeline sets when it registers a version, all optional here: ``family``,
``dataset_fingerprint``, ``dataset_manifest`` (path of the dataset's manifest.json), ``artifact_dirs`` (JSON list
of local folders of that version), ``gate_decision`` and ``gate_evidence_run`` (an MLflow run id).
"""

from __future__ import annotations

import getpass
import json
import logging
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from feedback_pipeline.release.deployments import Deployment, deployments, latest_decision, record_deployment
from feedback_pipeline.store.repository import FeedbackStore

log = logging.getLogger(__name__)

REWARD_MODEL_NAME = "feedback-reward"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION)
FAMILIES = ("chat_sft", "chat_preference", "embedder", "reward")


class ReleaseError(RuntimeError):
    """A lifecycle action that cannot be done as asked (unknown version, nothing to roll back to, ...)."""


# ---------------------------------------------------------------------------------------------------- reading

def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` -> (name, None, alias); ``NAME/VERSION`` -> (name, version, None); ``models:/`` is optional."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ReleaseError(f"model reference {ref!r}: use NAME@ALIAS (e.g. feedback-chat@champion) or NAME/VERSION")


def alias_target(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    return alias_target(client, name, CHAMPION)


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        raise ReleaseError(f"{name}/{version} is not a registered model version") from err


def show(client: MlflowClient, name: str, version_or_alias: str | int) -> ModelVersion:
    """One version by number or alias (``show(c, "feedback-chat", "champion")``)."""
    if str(version_or_alias).isdigit():
        return get_version(client, name, version_or_alias)
    found = alias_target(client, name, str(version_or_alias))
    if found is None:
        raise ReleaseError(f"{name}@{version_or_alias}: no such alias")
    return found


def resolve(client: MlflowClient, ref: str) -> ModelVersion:
    """A ``NAME@ALIAS`` or ``NAME/VERSION`` reference as its model version."""
    name, version, alias = parse_ref(ref)
    return show(client, name, version or alias)


def aliases_of(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of one registered model; empty when the model is not registered."""
    try:
        return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of one model, newest first, with its aliases (empty list when the model is not registered)."""
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    aliased = set(aliases_of(client, name).values())
    # search_model_versions leaves ``aliases`` empty: re-read the few aliased versions to carry them.
    found = [client.get_model_version(name, str(v.version)) if str(v.version) in aliased else v for v in found]
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def artifact_dirs(version: ModelVersion) -> list[Path]:
    """The local folders tagged as belonging to a version (``artifact_dirs``: a JSON list, or one plain path)."""
    raw = (version.tags or {}).get("artifact_dirs")
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return [Path(p) for p in ([value] if isinstance(value, str) else value) if p]


def is_archived(version: ModelVersion) -> bool:
    return (version.tags or {}).get("archived") == "true"


def describe(version: ModelVersion) -> str:
    tags = version.tags or {}
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc)
    aliases = ",".join(version.aliases or []) or "-"
    return (f"{version.name}/{version.version}  aliases={aliases}  family={tags.get('family', '-')}  "
            f"gate={tags.get('gate_decision', '-')}  created={created:%Y-%m-%d %H:%M}"
            f"{'  ARCHIVED' if is_archived(version) else ''}")


# ---------------------------------------------------------------------------------------------------- deciding

def current_user() -> str:
    """The login name, or "unknown" where there is none (a container running under an anonymous uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _restore_aliases(client: MlflowClient, name: str, snapshot: dict[str, str]) -> None:
    """Put the lifecycle aliases back as they were (best effort: the original error is the one that matters)."""
    for alias in ALIASES:
        try:
            if alias in snapshot:
                client.set_registered_model_alias(name, alias, snapshot[alias])
            else:
                client.delete_registered_model_alias(name, alias)
        except MlflowException:
            log.exception("could not restore alias %s@%s to %s", name, alias, snapshot.get(alias))


def set_version_tags(client: MlflowClient, name: str, version: str, tags: dict) -> None:
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, str(version), key, str(value))


def _make_champion(client, store, name, version, action, source, family, evidence, reason, actor, mlflow_run_id):
    version = str(version)
    target = get_version(client, name, version)
    if is_archived(target):
        raise ReleaseError(f"{name}/{version} was archived by cleanup (its artifacts are deleted): register it again")
    snapshot = aliases_of(client, name)
    old = snapshot.get(CHAMPION)
    actor = actor or current_user()
    # Registry first, table second. The registry is what serving loads, so a row is written only once the
    # aliases really moved: a failed alias move raises before any row exists, and a failed insert puts the
    # aliases back, so the table never claims a promotion that did not happen (and vice versa).
    # previous_champion moves before champion: a failure between the two leaves champion where it was.
    try:
        if old is not None and old != version:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
        client.set_registered_model_alias(name, CHAMPION, version)
        if snapshot.get(CHALLENGER) == version:  # the challenger won: it is no longer a challenger
            client.delete_registered_model_alias(name, CHALLENGER)
        row = record_deployment(
            store, name, version, action, source, family=family or (target.tags or {}).get("family"),
            previous_champion_version=old, evidence=evidence, actor=actor, reason=reason,
            mlflow_run_id=mlflow_run_id or (target.tags or {}).get("gate_evidence_run"))
    except Exception:
        _restore_aliases(client, name, snapshot)
        raise
    tags = {"promoted_at": _now(), "promoted_by": actor, "promotion_source": source, "promotion_reason": reason}
    if source == "gate":
        tags["gate_decision"] = "promote"
    if action == "approve":
        tags.update(approved_at=tags["promoted_at"], approved_by=actor)
    set_version_tags(client, name, version, tags)
    return row


def promote(client: MlflowClient, store: FeedbackStore, name: str, version: str | int, family: str | None = None,
            evidence: dict | None = None, reason: str | None = None, actor: str | None = None,
            source: str = "gate", mlflow_run_id: str | None = None) -> Deployment:
    """Make ``version`` the champion; the champion it replaces becomes ``previous_champion``. Returns the row."""
    return _make_champion(client, store, name, version, "promote", source, family, evidence, reason, actor,
                          mlflow_run_id)


def record_decision(client: MlflowClient, store: FeedbackStore, name: str, version: str | int, decision: str,
                    family: str | None = None, evidence: dict | None = None, reason: str | None = None,
                    actor: str | None = None, source: str = "gate", mlflow_run_id: str | None = None) -> Deployment:
    """Record a ``keep`` or ``needs_review`` decision (tags + row); aliases stay where they are."""
    if decision not in ("keep", "needs_review"):
        raise ValueError(f"decision must be keep or needs_review (promote() promotes), got {decision!r}")
    target = get_version(client, name, version)
    tags = target.tags or {}
    row = record_deployment(store, name, version, decision, source, family=family or tags.get("family"),
                            previous_champion_version=aliases_of(client, name).get(CHAMPION), evidence=evidence,
                            mlflow_run_id=mlflow_run_id or tags.get("gate_evidence_run"),
                            actor=actor or current_user(), reason=reason)
    set_version_tags(client, name, version, {"gate_decision": decision, "gate_decided_at": _now(),
                                      "gate_decision_source": source})
    return row


def approve(client: MlflowClient, store: FeedbackStore, name: str, version: str | int, actor: str | None = None,
            reason: str | None = None) -> Deployment:
    """Promote a version the gate sent to review (its latest decision is needs_review); source ``manual``."""
    latest = latest_decision(store, name, version)
    # Without any recorded decision the gate's version tag is the only word on it.
    state = latest.action if latest else (get_version(client, name, version).tags or {}).get("gate_decision")
    if state != "needs_review":
        raise ReleaseError(f"{name}/{version}: latest decision is {state or 'none'}; approve is only for a version "
                           f"whose latest decision is needs_review (use promote to override)")
    evidence = {"approved_decision": latest.id, "gate_evidence": latest.evidence} if latest else None
    return _make_champion(client, store, name, version, "approve", "manual", None, evidence, reason, actor,
                          latest.mlflow_run_id if latest else None)


def _champion_before(client: MlflowClient, store: FeedbackStore, name: str, version: str, exclude: set[str]):
    """The champion that ``version`` replaced when it was last promoted, if it is still usable."""
    rows = [r for r in deployments(store, name, version, actions=("promote", "approve"))
            if r.previous_champion_version != version]  # a re-promotion of the champion says nothing
    candidate = rows[0].previous_champion_version if rows else None
    if candidate is None or candidate in exclude:
        return None
    try:
        return None if is_archived(client.get_model_version(name, candidate)) else candidate
    except MlflowException:
        return None


def rollback(client: MlflowClient, store: FeedbackStore, name: str, actor: str | None = None,
             reason: str | None = None, source: str = "manual") -> Deployment:
    """``champion`` goes back to ``previous_champion``; the rolled-back version is tagged ``rolled_back_at``.

    ``previous_champion`` then points at the champion before the restored one (from the deployment history), or
    is removed when the history does not know one.
    """
    snapshot = aliases_of(client, name)
    current, target = snapshot.get(CHAMPION), snapshot.get(PREVIOUS_CHAMPION)
    if current is None:
        raise ReleaseError(f"{name} has no champion: nothing to roll back")
    if target is None or target == current:
        raise ReleaseError(f"{name} has no previous_champion to roll back to (champion is {current})")
    restored = get_version(client, name, target)
    if is_archived(restored):
        raise ReleaseError(f"{name}/{target} was archived by cleanup; promote another version instead")
    before = _champion_before(client, store, name, target, exclude={current, target})
    actor = actor or current_user()
    try:  # same order and reasoning as _make_champion: registry first, row once the aliases moved
        client.set_registered_model_alias(name, CHAMPION, target)
        if before is None:
            client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
        else:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, before)
        row = record_deployment(store, name, target, "rollback", source, family=(restored.tags or {}).get("family"),
                                previous_champion_version=current, actor=actor, reason=reason,
                                evidence={"rolled_back_version": current, "previous_champion_now": before})
    except Exception:
        _restore_aliases(client, name, snapshot)
        raise
    now = _now()
    set_version_tags(client, name, current,
                     {"rolled_back_at": now, "rolled_back_by": actor, "rolled_back_reason": reason})
    set_version_tags(client, name, target, {"restored_at": now, "restored_by": actor})
    return row


# ---------------------------------------------------------------------------------------------------- lineage

def _tag_or_run_value(client: MlflowClient, version: ModelVersion, key: str) -> str | None:
    """A version tag, else the same key among its run's tags or params."""
    if (version.tags or {}).get(key):
        return version.tags[key]
    run = _run(client, version.run_id)
    return (run.data.tags.get(key) or run.data.params.get(key)) if run else None


def _run(client: MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def read_manifest(path: str | Path) -> tuple[dict | None, str]:
    """A dataset manifest and where it came from: ``present``, ``archived in <tar.gz>`` (packed by
    cleanup_datasets) or ``missing``."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), "present"
    archive = path.parent.parent / f"{path.parent.name}.tar.gz"
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            try:
                member = tar.extractfile(f"{path.parent.name}/{path.name}")
            except KeyError:
                member = None
            if member is not None:
                return json.loads(member.read().decode("utf-8")), f"archived in {archive}"
    return None, "missing"


@dataclass
class Lineage:
    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    family: str | None
    dataset_fingerprint: str | None
    manifest_path: str | None
    manifest_state: str  # present | archived in ... | missing | not recorded
    counts: dict = field(default_factory=dict)
    feedback_id_counts: dict = field(default_factory=dict)
    data_watermark: str | None = None
    params: dict = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"{self.name}/{self.version}  aliases={','.join(self.aliases) or '-'}  family={self.family or '-'}",
                 f"run: {self.run_id or '-'}",
                 f"dataset fingerprint: {self.dataset_fingerprint or '-'}",
                 f"feedback-id manifest: {self.manifest_path or '-'} ({self.manifest_state})"]
        if self.manifest_state == "missing":
            lines.append("  the manifest file is gone: row counts and feedback ids of this version are unknown")
        if self.counts:
            lines.append("rows: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()))
            lines.append("feedback ids: " + ", ".join(f"{k}={v}" for k, v in self.feedback_id_counts.items()))
        if self.data_watermark:
            lines.append(f"data watermark: {self.data_watermark}")
        lines.extend(f"param {k} = {v}" for k, v in sorted(self.params.items()))
        return "\n".join(lines)


def lineage(client: MlflowClient, ref: str) -> Lineage:
    """Where a version (``NAME@ALIAS`` or ``NAME/VERSION``) came from: run, dataset, rows, feedback-id manifest."""
    version = resolve(client, ref)
    run = _run(client, version.run_id)
    manifest_path = _tag_or_run_value(client, version, "dataset_manifest")
    manifest, state = read_manifest(manifest_path) if manifest_path else (None, "not recorded")
    manifest = manifest or {}
    return Lineage(
        name=version.name, version=str(version.version), aliases=list(version.aliases or []), run_id=version.run_id,
        family=(version.tags or {}).get("family"),
        dataset_fingerprint=_tag_or_run_value(client, version, "dataset_fingerprint") or manifest.get("fingerprint"),
        manifest_path=manifest_path, manifest_state=state, counts=manifest.get("counts", {}),
        feedback_id_counts={k: len(v) for k, v in manifest.get("feedback_ids", {}).items()},
        data_watermark=manifest.get("data_watermark"), params=dict(run.data.params) if run else {})


@dataclass
class TrainedOnScan:
    feedback_id: str
    matches: list[tuple[str, str, str]]  # (name, version, split)
    unknown: list[tuple[str, str, str]]  # (name, version, why): versions whose training ids cannot be read


def _ids_by_split(manifest: dict) -> dict[str, set[str]]:
    """Feedback ids per split; a DPO pair id ``<chosen>><rejected>`` counts for both of its ids."""
    out = {}
    for split, ids in (manifest.get("feedback_ids") or {}).items():
        found = set()
        for item in ids:
            found.add(str(item))
            found.update(str(item).split(">"))
        out[split] = found
    return out


def scan_trained_on(client: MlflowClient, names: list[str], feedback_id: str) -> TrainedOnScan:
    """Every version of ``names`` whose training dataset lists ``feedback_id``, and the versions nobody can tell."""
    cache: dict[str, tuple[dict | None, str]] = {}
    scan = TrainedOnScan(feedback_id, [], [])
    for name in names:
        for version in list_versions(client, name):
            path = _tag_or_run_value(client, version, "dataset_manifest")
            if not path:
                scan.unknown.append((name, str(version.version), "no dataset_manifest tag"))
                continue
            if path not in cache:
                manifest, state = read_manifest(path)
                cache[path] = (_ids_by_split(manifest) if manifest else None, state)
            ids, state = cache[path]
            if ids is None:
                scan.unknown.append((name, str(version.version), f"manifest {path} is {state}"))
                continue
            scan.matches.extend((name, str(version.version), split) for split, found in ids.items()
                                if feedback_id in found)
    return scan


def trained_on(client: MlflowClient, names: list[str], feedback_id: str) -> list[tuple[str, str, str]]:
    """(name, version, split) of every version whose dataset manifest lists ``feedback_id`` (erasure requests).
    Versions whose manifest is gone are not listed here: ``scan_trained_on`` names them."""
    return scan_trained_on(client, names, feedback_id).matches
