"""ab_test_results (one dynamic partition per experiment), ab_test_job and ab_test_sensor: A/B tests that decide.

Why one partition per experiment: each experiment gets its own materialization history in the UI (the daily
reading of one test is one timeline), a run evaluates only the experiment whose data changed, and a new experiment
joins by adding a partition key instead of a code change. The sensor adds the keys of running experiments.

The asset only reads and reports. The sensor acts: when an experiment's decision is ``deploy_test_model`` it moves
``champion`` to the test arm's version with the release gate's ``promote`` (a row in model_deployments, source
``ab_test``), then stops the experiment with the decision and evidence; ``keep_baseline`` records ``keep`` and stops.
``stop_experiment`` refuses a second decision and the sensor reads running experiments only, so an experiment is
decided once; promote-then-stop is re-runnable (a champion that already is the test version is not promoted twice).
"""

import json
import re
from dataclasses import dataclass, fields

import dagster as dg
import sqlalchemy as sa
from mlflow.tracking import MlflowClient
from pydantic import Field

from feedback_pipeline.analysis.plots import png_markdown
from feedback_pipeline.defs.release import json_safe
from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource, WorkspaceResource
from feedback_pipeline.evaluation.ab_stats import (DEPLOY, KEEP, AbDecision, AbPolicy, AbResult, evaluate,
                                                   like_rate_plot)
from feedback_pipeline.release.models import CHAMPION, alias_target, promote, record_decision
from feedback_pipeline.store.experiments import (CHAT_RESPONSES, Experiment, arm_outcomes, get_experiment,
                                                 list_experiments, stop_experiment)
from feedback_pipeline.store.repository import FeedbackStore

AB_ACTOR = "ab-test"
experiments_partitions = dg.DynamicPartitionsDefinition(name="experiments")
_POLICY = {f.name: f.default for f in fields(AbPolicy)}


class AbTestConfig(dg.Config):
    """The A/B policy (defaults from ``AbPolicy``, which the sensor uses too)."""

    alpha: float = Field(_POLICY["alpha"], description="Level of the mSPRT always-valid p-value (split over test "
                                                       "arms).")
    mde: float = Field(_POLICY["mde"], description="Minimum detectable effect (absolute like-rate) for power figures.")
    power: float = Field(_POLICY["power"], description="Target power of the fixed-horizon sample size.")
    mixing_variance: float | None = Field(_POLICY["mixing_variance"], description="mSPRT mixing variance tau^2; "
                                                                                  "None = mde^2.")
    min_rated_per_arm: int = Field(_POLICY["min_rated_per_arm"], description="No decision below this many rated "
                                                                             "answers in an arm.")
    max_rated_per_arm: int | None = Field(_POLICY["max_rated_per_arm"], description="keep_baseline at this many "
                                          "rated per arm without significance; None = 2 x fixed-horizon n.")
    srm_threshold: float = Field(_POLICY["srm_threshold"], description="SRM chi-square p below this blocks decisions.")

    def policy(self) -> AbPolicy:
        return AbPolicy(**{k: getattr(self, k) for k in _POLICY})


def served_versions(store: FeedbackStore, name: str) -> dict[str, set[tuple[str, str]]]:
    """arm -> the (registered model, version) pairs that really answered in experiment ``name``."""
    c = CHAT_RESPONSES.c
    query = sa.select(c.arm, c.registered_model, c.model_version).where(c.experiment == name).distinct()
    found: dict[str, set[tuple[str, str]]] = {}
    with store.engine.connect() as conn:
        for arm, model, version in conn.execute(query):
            found.setdefault(arm, set()).add((model, str(version)))
    return found


def evaluate_experiment(store: FeedbackStore, experiment: Experiment, policy: AbPolicy) -> AbResult:
    return evaluate(arm_outcomes(store, experiment.name), {a.name: a.weight for a in experiment.arms},
                    experiment.baseline_arm, policy)


@dataclass(frozen=True)
class AbAction:
    experiment: str
    decision: AbDecision
    acted: bool  # the experiment was stopped (and promoted on deploy)
    model: str | None = None
    version: str | None = None
    note: str = ""


def act_on_ab_decision(store: FeedbackStore, client: MlflowClient, experiment: Experiment,
                       result: AbResult) -> AbAction:
    """Promote / keep and stop, for a decided result; ``continue`` does nothing."""
    decision = result.decision
    if decision.decision not in (DEPLOY, KEEP):
        return AbAction(experiment.name, decision.decision, False, note="; ".join(decision.reasons))
    evidence = json_safe({"experiment": experiment.name, **result.evidence()})
    test_arms = [a.name for a in experiment.arms if a.name != experiment.baseline_arm]
    arm = decision.winner_arm or (test_arms[0] if len(test_arms) == 1 else None)
    served = served_versions(store, experiment.name).get(arm, set()) if arm else set()
    registered = {(m, v) for m, v in served if m != "base"}
    if decision.decision == DEPLOY and len(registered) != 1:
        # An alias arm whose alias moved mid-experiment measured a mix of versions: no version earned the win.
        return AbAction(experiment.name, decision.decision, False, note=(
            f"arm {arm} served {sorted(served) or 'nothing'}: promote needs exactly one registered version; "
            "stop the experiment by hand (decision 'aborted') or restart it on one version"))
    model, version = next(iter(registered)) if len(registered) == 1 else (None, None)
    reason = f"A/B experiment {experiment.name}: " + "; ".join(decision.reasons)
    if decision.decision == DEPLOY:
        current = alias_target(client, model, CHAMPION)
        if current is None or str(current.version) != version:  # re-run after a failed stop: already promoted
            promote(client, store, model, version, evidence=evidence, reason=reason, actor=AB_ACTOR, source="ab_test")
    elif model is not None:
        record_decision(client, store, model, version, "keep", evidence=evidence, reason=reason, actor=AB_ACTOR,
                        source="ab_test")
    stop_experiment(store, experiment.name, decision.decision, evidence)
    return AbAction(experiment.name, decision.decision, True, model, version, reason)


# ------------------------------------------------------------------------------------------------ the asset

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _comparisons_markdown(result: AbResult) -> str:
    rows = ["| test vs baseline | difference (95% CI) | z p | chi-square p | Fisher p | mSPRT always-valid p |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {c.test_arm} vs {c.baseline_arm} | {c.difference:+.4f} ({c.ci_low:+.4f} .. {c.ci_high:+.4f}) | "
             f"{c.z_pvalue:.3g} | {c.chi2_pvalue:.3g} | {c.fisher_pvalue:.3g} | {c.msprt_pvalue:.3g} |"
             for c in result.comparisons]
    return "\n".join(rows)


@dg.asset(partitions_def=experiments_partitions, group_name="ab_testing", kinds={"pandas", "scipy", "matplotlib"},
          description="One A/B experiment read now: per-arm like-rates, difference, z/chi-square/Fisher and the "
                      "always-valid mSPRT p-value, sample-ratio mismatch, power, segments, decision and a plot.")
def ab_test_results(context: dg.AssetExecutionContext, config: AbTestConfig, feedback_store: FeedbackStoreResource,
                    workspace: WorkspaceResource) -> dg.MaterializeResult:
    store = feedback_store.store()
    experiment = get_experiment(store, context.partition_key)
    if experiment is None:
        raise dg.Failure(f"no experiment {context.partition_key!r} in the experiments table")
    result = evaluate_experiment(store, experiment, config.policy())
    folder = workspace.path("reports", "ab_tests")
    png = like_rate_plot(result, experiment.name)
    plot_path, json_path = folder / f"{_slug(experiment.name)}.png", folder / f"{_slug(experiment.name)}.json"
    plot_path.write_bytes(png)
    evidence = json_safe({"experiment": experiment.name, **result.evidence()})
    json_path.write_text(json.dumps(evidence, indent=1), encoding="utf-8")
    srm, power = result.srm, result.power
    best = min(result.comparisons, key=lambda c: c.msprt_pvalue, default=None)
    return dg.MaterializeResult(metadata={
        "decision": result.decision.decision,
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in result.decision.reasons)),
        "status": "running" if experiment.running else f"stopped: {experiment.decision} at {experiment.decided_at}",
        "arms": dg.MetadataValue.md(result.arms.to_markdown(index=False, floatfmt=".4f")),
        "comparisons": dg.MetadataValue.md(_comparisons_markdown(result)),
        "difference": dg.MetadataValue.float(best.difference) if best else None,
        "msprt_pvalue": dg.MetadataValue.float(best.msprt_pvalue) if best else None,
        "srm_flagged": srm.flagged, "srm_pvalue": dg.MetadataValue.float(srm.pvalue),
        "srm_units": dg.MetadataValue.json(srm.observed),
        "min_rated_per_arm_for_mde": power.min_rated_per_arm, "achieved_power": power.achieved_power,
        "max_rated_per_arm": result.max_rated_per_arm, "units_in_several_arms": result.units_in_several_arms,
        "segments": dg.MetadataValue.md(result.segments.to_markdown(index=False, floatfmt=".4f")
                                        if len(result.segments) else "no segments"),
        "plot": dg.MetadataValue.md(png_markdown(png, f"like rate per arm, {experiment.name}")),
        "plot_file": dg.MetadataValue.path(str(plot_path)), "evidence_file": dg.MetadataValue.path(str(json_path)),
    })


ab_test_job = dg.define_asset_job("ab_test_job", selection=dg.AssetSelection.assets(ab_test_results),
                                  description="Read one A/B experiment (a partition of ab_test_results).")


# ------------------------------------------------------------------------------------------------ the sensor

def build_ab_test_sensor(policy: AbPolicy = AbPolicy(), minimum_interval_seconds: int = 3600) -> dg.SensorDefinition:
    @dg.sensor(name="ab_test_sensor", job=ab_test_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Evaluates running A/B experiments: refreshes ab_test_results when their data changed; "
                           "on deploy_test_model promotes the test arm's version to champion and stops the "
                           "experiment, on keep_baseline stops it.")
    def ab_test_sensor(context: dg.SensorEvaluationContext, feedback_store: FeedbackStoreResource,
                       mlflow_tracking: MlflowResource):
        store = feedback_store.store()
        client = MlflowClient(mlflow_tracking.tracking_uri)
        seen = json.loads(context.cursor) if context.cursor else {}  # experiment -> data fingerprint last requested
        running = list_experiments(store, running_only=True)
        known = set(context.instance.get_dynamic_partitions(experiments_partitions.name))
        new_keys = [e.name for e in running if e.name not in known]
        requests, notes = [], []
        for experiment in running:
            result = evaluate_experiment(store, experiment, policy)
            action = act_on_ab_decision(store, client, experiment, result)
            notes.append(f"{experiment.name}: {action.decision}" + (f" ({action.note})" if action.note else ""))
            rated = result.arms["rated"].sum()
            fingerprint = f"{result.arms['responses'].sum()}-{rated}-{result.arms['liked'].sum()}"
            fingerprint += "-stopped" if action.acted else ""
            if seen.get(experiment.name) != fingerprint:  # read it again only when its data (or state) changed
                seen[experiment.name] = fingerprint
                requests.append(dg.RunRequest(run_key=f"{experiment.name}:{fingerprint}",
                                              partition_key=experiment.name,
                                              tags={"ab_decision": action.decision}))
        context.log.info("; ".join(notes) or "no running experiment")
        seen = {k: v for k, v in seen.items() if k in {e.name for e in running}}  # stopped ones leave the cursor
        return dg.SensorResult(
            run_requests=requests, cursor=json.dumps(seen, sort_keys=True),
            dynamic_partitions_requests=[experiments_partitions.build_add_request(new_keys)] if new_keys else [])

    return ab_test_sensor
