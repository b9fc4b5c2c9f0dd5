"""What every family's promotion_decision asset shares: the gate policy as config, and acting on a decision.

A decision moves the ``champion`` alias only when the gate says promote; keep and needs_review are recorded (a row in
``model_deployments`` and tags on the version) and the champion stays. ``feedback-pipeline models approve`` is how a
person promotes a needs_review version.
"""

import dataclasses
import json
import math

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.defs.handoffs import Family, ReleaseDecision
from feedback_pipeline.evaluation.gate import GateDecision, GatePolicy
from feedback_pipeline.release.models import CHAMPION, alias_target, promote, record_decision
from feedback_pipeline.store.repository import FeedbackStore

GATE_ACTOR = "release-gate"


class GateConfig(dg.Config):
    """The promotion policy of one family (defaults per family in each decision asset)."""

    primary_metric: str = Field(description="Metric whose paired 95% interval (challenger - champion) must lie above "
                                            "the margin.")
    margin: float = Field(0.0, description="0 = the challenger must be better; negative = non-inferiority margin.")
    segment_tolerance: float = Field(0.05, description="A segment may regress by at most this much (and not "
                                                       "significantly) before the decision goes to review.")
    min_segment_size: int = Field(30, description="Segments with fewer examples are listed but not judged.")
    require_review: bool = Field(False, description="Every promotion waits for `feedback-pipeline models approve`.")
    min_examples: int = Field(20, description="Fewer paired examples on the primary metric decide nothing (keep).")

    def policy(self) -> GatePolicy:
        return GatePolicy(self.primary_metric, self.margin, self.segment_tolerance, self.min_segment_size,
                          self.require_review, self.min_examples)


def json_safe(value):
    """NaN/Infinity become None: PostgreSQL's JSONB (and strict JSON readers) reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def act_on_decision(context: dg.AssetExecutionContext, store: FeedbackStore, name: str, version: str,
                    family: Family, decision: GateDecision, run_id: str, expected_champion: str | None,
                    extra: dict | None = None) -> ReleaseDecision:
    """Record the decision (and promote when it says so); log it to the candidate's MLflow run; return the hand-off.

    ``expected_champion``: the champion version the evaluation compared against. If another decision moved the
    champion in the meantime, this evidence is stale: the version goes to review instead of being promoted."""
    client = mlflow.MlflowClient()
    current = alias_target(client, name, CHAMPION)
    current_version = None if current is None else str(current.version)
    if decision.decision == "promote" and current_version != expected_champion:
        decision = dataclasses.replace(decision, decision="needs_review", reasons=decision.reasons + (
            f"the champion moved to {current_version} during evaluation (compared with "
            f"{expected_champion or 'version 0'}): re-evaluate or approve by hand",))
    outcome, reasons = decision.decision, list(decision.reasons)
    evidence = json_safe({**decision.to_dict(), "compared_with": expected_champion, **(extra or {})})
    reason = "; ".join(reasons)
    client.set_model_version_tag(name, version, "gate_evidence_run", run_id)
    if outcome == "promote":
        row = promote(client, store, name, version, family=family, evidence=evidence, reason=reason,
                      actor=GATE_ACTOR, source="gate", mlflow_run_id=run_id)
    else:
        row = record_decision(client, store, name, version, outcome, family=family, evidence=evidence, reason=reason,
                              actor=GATE_ACTOR, source="gate", mlflow_run_id=run_id)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags({"gate_decision": outcome, "gate_compared_with": expected_champion or "version 0"})
        mlflow.log_text(json.dumps(evidence, indent=1), "gate/decision.json")
        mlflow.log_text(decision.markdown(), "gate/decision.md")
    champion_now = alias_target(client, name, CHAMPION)
    result = ReleaseDecision(name=name, version=version, family=family, decision=outcome, reasons=tuple(reasons),
                             deployment_id=row.id,
                             champion=None if champion_now is None else str(champion_now.version),
                             compared_with=expected_champion, mlflow_run_id=run_id)
    context.add_output_metadata({
        "decision": outcome, "registered_model": name, "version": version,
        "champion_now": result.champion or "none (version 0 serves)",
        "compared_with": expected_champion or "version 0",
        "evidence": dg.MetadataValue.md(decision.markdown()),
        "mlflow_run_id": run_id, "deployment_id": row.id})
    return result


def decision_check(decision: ReleaseDecision) -> dg.AssetCheckResult:
    """The registry agrees with the decision: after promote the champion is the candidate, otherwise it is not."""
    promoted = decision.decision == "promote"
    consistent = (decision.champion == decision.version) if promoted else (
        decision.champion == decision.compared_with)
    return dg.AssetCheckResult(passed=consistent, metadata={
        "decision": decision.decision, "candidate": decision.version,
        "champion_now": decision.champion or "none (version 0 serves)",
        "compared_with": decision.compared_with or "version 0",
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons))})
