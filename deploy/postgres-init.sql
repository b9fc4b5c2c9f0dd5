-- Runs once when the compose PostgreSQL volume is created: separate databases for Dagster and MLflow.
-- The feedback schema itself is created by `feedback-pipeline migrate` (the migrate service) from sql/.
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
