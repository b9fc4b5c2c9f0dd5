"""Model lifecycle: promotion, approval, rollback, lineage and cleanup of registered model versions.

``models`` moves MLflow aliases and records each decision in ``deployments`` (the ``model_deployments``
table); ``cleanup`` archives old versions and datasets. Plain functions: the CLI and Dagster assets call them.
"""
