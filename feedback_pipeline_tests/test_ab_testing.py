"""ab_test_results and ab_test_sensor on real stores: experiments, served answers and feedback written through
store/experiments.py and the feedback table (SQLite and PostgreSQL), promotion in a temp MLflow registry."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from feedback_pipeline.defs.ab_testing import ab_test_results, build_ab_test_sensor, experiments_partitions
from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource, WorkspaceResource
from feedback_pipeline.ingestion.records import normalise_record
from feedback_pipeline.release.deployments import deployments
from feedback_pipeline.release.models import aliases_of, promote
from feedback_pipeline.store.experiments import (ExperimentDecided, ServedResponse, create_experiment, get_experiment,
                                                 record_responses, stop_experiment)
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_release_models import _name, register, registry  # noqa: F401 (fixture)

T0 = datetime(2026, 11, 2, 9, tzinfo=timezone.utc)


def seed(store, name: str, model: str, versions: dict[str, str], likes: dict[str, float],
         units: dict[str, int], days: int = 3) -> None:
    """An experiment A (champion, baseline) vs B (a pinned version); per arm ``units[arm]`` users a day, each served
    one answer and rating it, the first ``likes[arm]`` share liked; plus one unrated answer per arm and day."""
    create_experiment(store, name, [{"name": "A", "model": model, "alias": "champion", "weight": 0.5},
                                    {"name": "B", "model": model, "version": versions["B"], "weight": 0.5}],
                      started_at=T0)
    served, rows = [], []
    for day in range(days):
        for arm, n in units.items():
            for i in range(n + 1):
                rid = f"{name}-{arm}-{day}-{i}"
                served.append(ServedResponse(rid, model, versions[arm], T0 + timedelta(days=day, minutes=i),
                                             experiment=name, arm=arm, user_id=f"{arm}{day}-{i}",
                                             intent="howto" if i % 2 else "debug", project="p1"))
                if i < n:  # the last answer of each day stays unrated
                    row = normalise_record(feedback(query=f"q {rid}", user_id=f"{arm}{day}-{i}",
                                                    rating="up" if i < likes[arm] * n else "down",
                                                    response_id=rid), "test")
                    rows.append({**row, "experiment": name, "arm": arm})  # as the capture service attributes it
    record_responses(store, served)
    store.write(rows)


def _materialize(store, name, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(experiments_partitions.name, [name])
    result = dg.materialize([ab_test_results], partition_key=name, instance=instance, resources={
        "feedback_store": FeedbackStoreResource(db_url=store.url),
        "workspace": WorkspaceResource(data_dir=str(tmp_path))})
    assert result.success
    return result.asset_materializations_for_node("ab_test_results")[0].metadata


def test_asset_reports_a_clear_winner(store, tmp_path):
    seed(store, "exp-win", "feedback-chat", {"A": "1", "B": "2"}, {"A": 0.6, "B": 0.9}, {"A": 100, "B": 100})
    meta = _materialize(store, "exp-win", tmp_path)
    assert meta["decision"].value == "deploy_test_model" and meta["status"].value == "running"
    assert "| A " in meta["arms"].value and "300" in meta["arms"].value  # 300 rated answers per arm
    assert meta["difference"].value == pytest.approx(0.3) and meta["msprt_pvalue"].value < 1e-6
    assert not meta["srm_flagged"].value and meta["min_rated_per_arm_for_mde"].value > 1000
    assert "howto" in meta["segments"].value and meta["plot"].value.startswith("![like rate per arm")
    evidence = json.loads((tmp_path / "reports" / "ab_tests" / "exp-win.json").read_text())
    assert evidence["winner_arm"] == "B" and evidence["arms"][1]["responses"] == 303
    assert (tmp_path / "reports" / "ab_tests" / "exp-win.png").stat().st_size > 10_000


def test_sample_ratio_mismatch_blocks_the_decision(store, tmp_path):
    seed(store, "exp-srm", "feedback-chat", {"A": "1", "B": "2"}, {"A": 0.6, "B": 0.9}, {"A": 80, "B": 120})
    meta = _materialize(store, "exp-srm", tmp_path)
    assert meta["srm_flagged"].value and meta["srm_pvalue"].value < 0.001
    assert meta["decision"].value == "continue" and "sample-ratio mismatch" in meta["reasons"].value
    assert meta["msprt_pvalue"].value < 1e-6  # the outcome alone would have deployed


def test_an_experiment_without_answers_reports_continue(store, tmp_path):
    create_experiment(store, "exp-new", [{"name": "A", "model": "m", "alias": "champion", "weight": 0.5},
                                         {"name": "B", "model": "m", "version": "2", "weight": 0.5}], started_at=T0)
    meta = _materialize(store, "exp-new", tmp_path)
    assert meta["decision"].value == "continue" and not meta["srm_flagged"].value
    assert (tmp_path / "reports" / "ab_tests" / "exp-new.png").is_file()


def _tick(sensor, store, registry_uri, tmp_path, instance, cursor=None):
    resources = {"feedback_store": FeedbackStoreResource(db_url=store.url),
                 "mlflow_tracking": MlflowResource(tracking_uri=registry_uri, artifact_root=str(tmp_path / "art"))}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def test_sensor_promotes_the_winner_once(store, registry, tmp_path):
    uri, client, _ = registry
    model = _name("chat")
    v1, v2 = register(registry, model), register(registry, model)
    promote(client, store, model, v1, reason="first champion", source="manual")
    seed(store, "exp-deploy", model, {"A": v1, "B": v2}, {"A": 0.6, "B": 0.9}, {"A": 100, "B": 100})
    sensor, instance = build_ab_test_sensor(), dg.DagsterInstance.ephemeral()

    result = _tick(sensor, store, uri, tmp_path, instance)
    assert aliases_of(client, model) == {"champion": v2, "previous_champion": v1}
    stopped = get_experiment(store, "exp-deploy")
    assert stopped.decision == "deploy_test_model" and stopped.evidence["winner_arm"] == "B"
    row = deployments(store, model, v2, actions=("promote",))[0]
    assert row.decision_source == "ab_test" and row.evidence["experiment"] == "exp-deploy"
    assert result.dynamic_partitions_requests[0].partition_keys == ["exp-deploy"]
    [request] = result.run_requests
    assert request.partition_key == "exp-deploy" and request.tags["ab_decision"] == "deploy_test_model"

    # The next tick finds no running experiment: nothing is promoted or requested again.
    again = _tick(sensor, store, uri, tmp_path, instance, cursor=result.cursor)
    assert not again.run_requests and len(deployments(store, model, v2, actions=("promote",))) == 1
    with pytest.raises(ExperimentDecided):
        stop_experiment(store, "exp-deploy", "keep_baseline")


def test_sensor_keeps_the_baseline_when_the_test_arm_is_worse(store, registry, tmp_path):
    uri, client, _ = registry
    model = _name("chat")
    v1, v2 = register(registry, model), register(registry, model)
    promote(client, store, model, v1, reason="first champion", source="manual")
    seed(store, "exp-keep", model, {"A": v1, "B": v2}, {"A": 0.9, "B": 0.6}, {"A": 100, "B": 100})
    _tick(build_ab_test_sensor(), store, uri, tmp_path, dg.DagsterInstance.ephemeral())
    assert aliases_of(client, model)["champion"] == v1
    assert get_experiment(store, "exp-keep").decision == "keep_baseline"
    assert deployments(store, model, v2)[0].action == "keep"


def test_sensor_waits_and_requests_a_reading_only_when_data_changed(store, registry, tmp_path):
    uri, client, _ = registry
    model = _name("chat")
    v1, v2 = register(registry, model), register(registry, model)
    seed(store, "exp-wait", model, {"A": v1, "B": v2}, {"A": 0.8, "B": 0.8}, {"A": 60, "B": 60}, days=1)
    sensor, instance = build_ab_test_sensor(), dg.DagsterInstance.ephemeral()
    first = _tick(sensor, store, uri, tmp_path, instance)
    assert [r.tags["ab_decision"] for r in first.run_requests] == ["continue"]
    assert get_experiment(store, "exp-wait").running and "champion" not in aliases_of(client, model)
    instance.add_dynamic_partitions(experiments_partitions.name, ["exp-wait"])
    second = _tick(sensor, store, uri, tmp_path, instance, cursor=first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests


def test_a_win_measured_on_several_versions_is_not_promoted(store, registry, tmp_path):
    uri, client, _ = registry
    model = _name("chat")
    v1, v2, v3 = (register(registry, model) for _ in range(3))
    promote(client, store, model, v1, reason="first champion", source="manual")
    seed(store, "exp-mixed", model, {"A": v1, "B": v2}, {"A": 0.6, "B": 0.9}, {"A": 100, "B": 100})
    # the test arm's alias moved mid-experiment: some of its answers came from v3
    record_responses(store, [ServedResponse("late", model, v3, T0, experiment="exp-mixed", arm="B", user_id="z")])
    _tick(build_ab_test_sensor(), store, uri, tmp_path, dg.DagsterInstance.ephemeral())
    assert aliases_of(client, model)["champion"] == v1 and get_experiment(store, "exp-mixed").running
