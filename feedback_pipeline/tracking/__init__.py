"""MLflow: experiments, runs, and the model registry (no Dagster import)."""
