"""Experiments, the exposure log and feedback attribution (sql/008) on SQLite and PostgreSQL; the capture
service's attribution over HTTP."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from feedback_pipeline.ingestion.records import FeedbackValidationError
from feedback_pipeline.ingestion.strict import validate_record
from feedback_pipeline.store.experiments import (CHAT_RESPONSES, EXPERIMENTS, OUTCOME_COLUMNS, Arm,
                                                 ExperimentDecided, ServedResponse, arm_outcomes, create_experiment,
                                                 get_experiment, list_experiments, record_response, record_responses,
                                                 stop_experiment)
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import service  # noqa: F401 (fixture)

T0 = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
ARMS = [{"name": "A", "model": "feedback-chat", "alias": "champion", "weight": 0.5},
        {"name": "B", "model": "feedback-chat", "version": "3", "weight": 0.5}]


def _served(i: int, arm: str | None = "A", experiment: str | None = "exp1", **kw) -> ServedResponse:
    return ServedResponse(response_id=f"chatcmpl-{i}", registered_model="feedback-chat",
                          model_version="2" if arm == "A" else "3", served_at=T0 + timedelta(minutes=i),
                          experiment=experiment, arm=arm, **({"user_id": f"u{i}"} | kw))


def test_mirrors_match_the_migration(store):
    inspector = sa.inspect(store.engine)
    for table in (EXPERIMENTS, CHAT_RESPONSES):
        assert [c["name"] for c in inspector.get_columns(table.name)] == [c.name for c in table.columns]
    assert {"ix_feedback_response", "ix_feedback_experiment"} <= {i["name"] for i in inspector.get_indexes("feedback")}


def test_experiment_lifecycle_is_decided_once(store):
    created = create_experiment(store, "exp1", ARMS, eligibility={"intent": ["howto"]}, started_at=T0)
    assert created.baseline_arm == "A" and created.arm("B") == Arm("B", "feedback-chat", 0.5, version="3")
    create_experiment(store, "exp2", [Arm("x", "m", 0.2, alias="champion"), Arm("y", "m", 0.8, alias="challenger")],
                      baseline_arm="y", started_at=T0 + timedelta(hours=1))
    assert get_experiment(store, "exp1") == created and get_experiment(store, "nope") is None
    assert [e.name for e in list_experiments(store, running_only=True)] == ["exp1", "exp2"]
    stopped = stop_experiment(store, "exp1", "deploy_test_model", {"p_value": 0.01, "winner": "B"})
    assert (stopped.decision, stopped.evidence, stopped.running) == ("deploy_test_model", {"p_value": 0.01, "winner": "B"},
                                                                     False)
    with pytest.raises(ExperimentDecided):
        stop_experiment(store, "exp1", "keep_baseline")
    assert get_experiment(store, "exp1").decision == "deploy_test_model"
    assert [e.name for e in list_experiments(store, running_only=True)] == ["exp2"]
    assert len(list_experiments(store)) == 2
    with pytest.raises(KeyError):
        stop_experiment(store, "nope", "aborted")
    with pytest.raises(ValueError, match="decision"):
        stop_experiment(store, "exp2", "continue")


@pytest.mark.parametrize("arms, kwargs, message", [
    (ARMS[:1], {}, "two or more arms"),
    ([ARMS[0], {**ARMS[1], "weight": 0.6}], {}, "sum to 1"),
    (ARMS, {"baseline_arm": "C"}, "baseline arm"),
    (ARMS, {"eligibility": {"country": ["fr"]}}, "eligibility"),
    ([ARMS[0], {**ARMS[1], "alias": "challenger"}], {}, "exactly one of alias or version"),
])
def test_bad_experiments_are_refused(store, arms, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_experiment(store, "bad", arms, **kwargs)
    assert list_experiments(store) == []


def test_arm_outcomes_one_row_per_exposure_with_the_latest_rating(store):
    create_experiment(store, "exp1", ARMS, started_at=T0)
    record_responses(store, [_served(1, "A"), _served(2, "B"), _served(4, "B", user_id=None, session_id="s4"),
                             _served(5, None, experiment=None)])
    record_response(store, _served(3, "A", intent="howto", project="p1"))
    ratings = [(1, "down", 0), (1, "up", 5), (1, None, 9),  # the latest rated record wins; unrated ones do not count
               (2, "down", 0), (5, "up", 0)]
    store.write(validate_record(feedback(response_id=f"chatcmpl-{i}", rating=r, session_id=f"s{i}-{m}",
                                         updated_at=(T0 + timedelta(hours=1, minutes=m)).isoformat(),
                                         created_at=T0.isoformat()), source="test")
                for i, r, m in ratings)
    frame = arm_outcomes(store, "exp1")
    assert list(frame.columns) == OUTCOME_COLUMNS
    assert frame["response_id"].tolist() == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3", "chatcmpl-4"]
    assert frame["arm"].tolist() == ["A", "B", "A", "B"]
    assert frame["unit"].tolist() == ["u1", "u2", "u3", "s4"]
    assert frame["rating_thumb"].tolist()[:2] == [1, -1] and frame["rating_thumb"].isna().tolist()[2:] == [True, True]
    assert (frame.loc[2, "intent"], frame.loc[2, "project"]) == ("howto", "p1")
    assert frame["served_at"].iloc[0] == T0 + timedelta(minutes=1)
    assert arm_outcomes(store, "other").empty


def test_experiment_and_arm_are_never_client_input():
    with pytest.raises(FeedbackValidationError) as err:
        validate_record(feedback(arm="B"), source="test")
    assert err.value.field == "arm"
    assert validate_record(feedback(response_id="chatcmpl-1"), source="test")["response_id"] == "chatcmpl-1"


def test_capture_service_attributes_feedback_to_the_served_variant(service):
    record_response(service.store, _served(1, "B", experiment="exp1"))
    # The client claims another model: the served variant wins.
    status, body = service("POST", "/v1/feedback", feedback(response_id="chatcmpl-1", model_version="v9"),
                           key="writer")
    assert status == 201, body
    stored = service("GET", f"/v1/feedback/{body['id']}", key="reader")[1]
    assert (stored["experiment"], stored["arm"], stored["model_name"], stored["model_version"]) == (
        "exp1", "B", "feedback-chat", "3")
    status, error = service("POST", "/v1/feedback", feedback(response_id="chatcmpl-404"), key="writer")
    assert status == 422 and error["errors"][0]["field"] == "response_id"
    batch = service("POST", "/v1/feedback/batch", {"records": [feedback(response_id="chatcmpl-1", user_id="z"),
                                                               feedback(response_id="chatcmpl-404")]}, key="writer")[1]
    assert [r["status"] for r in batch["results"]] == ["inserted", "rejected"]
    assert batch["results"][1]["errors"][0]["field"] == "records[1].response_id"
    # A re-rating keeps the attribution; a PATCH naming an unserved answer changes nothing.
    status, patched = service("PATCH", f"/v1/feedback/{body['id']}", {"rating": "down"}, key="writer")
    assert status == 200 and (patched["arm"], patched["rating_thumb"]) == ("B", -1)
    assert service("PATCH", f"/v1/feedback/{body['id']}", {"response_id": "chatcmpl-404"}, key="writer")[0] == 422
    assert service("PATCH", f"/v1/feedback/{body['id']}", {"arm": "A"}, key="writer")[0] == 422
    assert service.store.count() == 2
