"""Deployment files: the production dagster.yaml really opens a PostgreSQL-backed instance; compose validates."""

import shutil
import subprocess
import uuid

import dagster as dg
import pytest
import sqlalchemy as sa

from feedback_pipeline.settings import REPO_ROOT
from feedback_pipeline_tests.conftest import POSTGRES_URL


@pytest.fixture
def dagster_database():
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield admin.url.set(database=name)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_production_dagster_yaml_runs_on_postgres(dagster_database, tmp_path, monkeypatch):
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    url = dagster_database
    for key, value in {"DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port or 5432),
                       "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                       "DAGSTER_PG_DB": url.database}.items():
        monkeypatch.setenv(key, value)

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([one], instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None


def test_compose_file_is_valid_with_example_env(tmp_path):
    for name in ("docker-compose.yaml", "Dockerfile", "dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env")
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is needed to validate the compose file: apt-get install -y docker-compose"
    done = subprocess.run([compose, "config"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {"postgres", "code", "webserver", "daemon", "mlflow"} <= set(
        subprocess.run([compose, "config", "--services"], cwd=tmp_path, capture_output=True, text=True).stdout.split())
    assert "change-me" not in (REPO_ROOT / "docker-compose.yaml").read_text()  # secrets only via .env
