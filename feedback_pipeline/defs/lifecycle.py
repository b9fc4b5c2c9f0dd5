"""Model lifecycle in Dagster: the monthly clean-up and a one-click rollback.

``model_cleanup_report`` archives registered versions older than 90 days that hold no alias and are not among the
newest few (their adapters, checkpoints and exports are deleted from disk) and archives dataset folders older than
six months; ``model_cleanup_schedule`` runs it monthly. ``rollback_job`` moves ``champion`` back to
``previous_champion`` of one registered model, logged in ``model_deployments`` like a promotion.
"""

from typing import Literal

import dagster as dg
import mlflow
from pydantic import Field

from feedback_pipeline.defs.resources import FeedbackStoreResource, MlflowResource, WorkspaceResource
from feedback_pipeline.release.cleanup import cleanup_datasets, cleanup_models, live_fingerprints
from feedback_pipeline.release.deployments import Deployment


class CleanupConfig(dg.Config):
    model_days: int = Field(90, description="Versions older than this (and without an alias) are archived.")
    keep_last: int = Field(3, description="The newest N versions of each model are never archived.")
    dataset_days: int = Field(182, description="Dataset folders older than this (about 6 months) are removed.")
    dataset_mode: Literal["archive", "delete"] = Field("archive", description="archive = pack into a .tar.gz next to "
                                                                              "the folder first; delete = remove.")
    dry_run: bool = Field(False, description="Report what would be removed, remove nothing.")


@dg.asset(group_name="lifecycle", kinds={"mlflow"},
          description="Monthly clean-up: old unaliased model versions archived (their folders deleted), old dataset "
                      "folders archived; what was removed and the space freed.")
def model_cleanup_report(context: dg.AssetExecutionContext, config: CleanupConfig,
                         feedback_store: FeedbackStoreResource, workspace: WorkspaceResource,
                         mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    mlflow_tracking.activate()
    client = mlflow.MlflowClient()
    names = mlflow_tracking.model_names()
    models = cleanup_models(client, feedback_store.store(), names, older_than_days=config.model_days,
                            keep_last=config.keep_last, dry_run=config.dry_run)
    datasets = cleanup_datasets(workspace.path("datasets"), older_than_days=config.dataset_days,
                                mode=config.dataset_mode, protected_fingerprints=live_fingerprints(client, names),
                                dry_run=config.dry_run)
    report = models.to_markdown() + "\n\n" + datasets.to_markdown()
    (workspace.path("reports") / "model_cleanup.md").write_text(report, encoding="utf-8")
    return dg.MaterializeResult(metadata={
        "versions_archived": len(models.archived), "versions_kept": len(models.kept),
        "model_bytes_freed": models.bytes_freed, "datasets_removed": len(datasets.removed),
        "dataset_bytes_freed": datasets.bytes_freed, "dry_run": config.dry_run, "report": dg.MetadataValue.md(report)})


model_cleanup_job = dg.define_asset_job(
    "model_cleanup_job", selection=dg.AssetSelection.assets(model_cleanup_report),
    description="Archive old model versions and dataset folders (never anything an alias points at).")

model_cleanup_schedule = dg.ScheduleDefinition(
    name="model_cleanup_schedule", job=model_cleanup_job, cron_schedule="0 4 1 * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED, description="Model and dataset clean-up, the 1st of each month.")


class RollbackConfig(dg.Config):
    model_name: str = Field(description="Registered model whose champion goes back to previous_champion.")
    reason: str = Field(description="Why (kept in model_deployments and on the version).")


@dg.op(description="Move champion back to previous_champion, logged like a promotion.")
def rollback_champion(context: dg.OpExecutionContext, config: RollbackConfig, feedback_store: FeedbackStoreResource,
                      mlflow_tracking: MlflowResource) -> Deployment:
    from feedback_pipeline.release.models import rollback

    mlflow_tracking.activate()
    row = rollback(mlflow.MlflowClient(), feedback_store.store(), config.model_name, actor="dagster",
                   reason=config.reason)
    context.log.info(row.line())
    return row  # the model_deployments row: model_name, the restored champion version, previous_champion_version


@dg.job(description="Roll a registered model back to its previous champion (launch with the model name and a reason).")
def rollback_job():
    rollback_champion()
