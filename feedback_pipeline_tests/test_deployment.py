"""Deployment files, validated offline against the real libraries and the local PostgreSQL.

- dagster.yaml (one host) and deploy/docker/dagster.yaml (docker-compose, a container per run) open PostgreSQL-backed
  instances with their launcher classes; the training pool really holds a second training step back.
- docker-compose.yaml validates with docker-compose and agrees with the docker instance (network, volume, env, image).
- deploy/k8s/values.yaml: rendered the way the Helm chart renders its instance ConfigMap, it loads a DagsterInstance
  with K8sRunLauncher (a throwaway kubeconfig stands in for the cluster); its keys are the chart's, its Kubernetes
  objects parse as Kubernetes models. The chart itself is not in any reachable registry, so its values.schema.json
  is not used here (README, "Deployment").
- The k8s_job_executor config parses against the executor's schema, and the Job it builds for a training step asks
  for a GPU on a GPU node, away from other training pods.
"""

from __future__ import annotations

import ast
import copy
import os
import shutil
import subprocess
import sys
import threading
import uuid

import dagster as dg
import kubernetes.client as k8s
import pytest
import sqlalchemy as sa
import yaml
from dagster._config import process_config
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from feedback_pipeline import deploy_config
from feedback_pipeline.deploy_config import TRAINING_OPS, TRAINING_POOL
from feedback_pipeline.settings import REPO_ROOT
from feedback_pipeline_tests.conftest import POSTGRES_URL

DOCKER_INSTANCE = REPO_ROOT / "deploy" / "docker" / "dagster.yaml"
K8S_VALUES = REPO_ROOT / "deploy" / "k8s" / "values.yaml"
K8S_PVC = REPO_ROOT / "deploy" / "k8s" / "data-pvc.yaml"


def load_yaml(path):
    return yaml.safe_load(path.read_text())


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


@pytest.fixture
def pg_env(dagster_database, monkeypatch):
    """The DAGSTER_PG_* variables the instance files read, pointing at a fresh database."""
    url = dagster_database
    for key, value in {"DAGSTER_PG_HOST": url.host, "DAGSTER_PG_PORT": str(url.port or 5432),
                       "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                       "DAGSTER_PG_DB": url.database}.items():
        monkeypatch.setenv(key, value)
    return url


@dg.asset(pool=TRAINING_POOL)
def pooled_training() -> int:
    return 1


def test_production_dagster_yaml_runs_on_postgres(pg_env, tmp_path):
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 1
        assert concurrency.pool_config.default_pool_limit == 1
        result = dg.materialize([one], instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None


def docker_instance_dir(tmp_path):
    """deploy/docker/dagster.yaml with its artifact directory (/data/dagster in the containers) moved to tmp_path."""
    config = load_yaml(DOCKER_INSTANCE)
    config["local_artifact_storage"]["config"]["base_dir"] = str(tmp_path / "data" / "dagster")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_docker_instance_loads_docker_run_launcher_on_postgres(pg_env, tmp_path):
    with dg.DagsterInstance.from_config(str(docker_instance_dir(tmp_path))) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "DockerRunLauncher"
        assert launcher.networks == ["feedback-pipeline"]
        assert launcher.container_kwargs["volumes"] == ["feedback-pipeline-data:/data"]
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs > 1  # other runs may overlap a training

        assert dg.materialize([pooled_training], instance=instance).success
        # Step outputs land on the shared data volume, where the next run's container finds them.
        assert (tmp_path / "data" / "dagster" / "storage" / "pooled_training").exists()


def test_training_pool_holds_a_second_training_until_the_first_ends(pg_env, tmp_path):
    """Another training (here: a slot claimed for another run) holds the pool's one slot; ours waits, then runs."""
    with dg.DagsterInstance.from_config(str(docker_instance_dir(tmp_path))) as instance:
        events = instance.event_log_storage
        # What a running training step holds: the pool's slots created at the default limit, one claimed.
        events.initialize_concurrency_limit_to_default(TRAINING_POOL)
        assert events.claim_concurrency_slot(TRAINING_POOL, "other-run", "chat_adapter").is_claimed
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.update(result=dg.materialize([pooled_training], instance=instance)))
        worker.start()
        worker.join(3)
        assert worker.is_alive(), "the second training ran while the first held the pool's slot"
        info = events.get_concurrency_info(TRAINING_POOL)
        assert info.slot_count == 1 and [s.run_id for s in info.claimed_slots] == ["other-run"]
        assert "pooled_training" in [step.step_key for step in info.pending_steps]

        events.free_concurrency_slots_for_run("other-run")
        worker.join(60)
        assert not worker.is_alive() and outcome["result"].success


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory):
    """`docker-compose config` of the repository's compose file with .env.example as .env, parsed."""
    workdir = tmp_path_factory.mktemp("compose")
    for name in ("docker-compose.yaml", "Dockerfile", "dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO_ROOT / name, workdir / name)
    shutil.copytree(REPO_ROOT / "deploy", workdir / "deploy")
    shutil.copy(REPO_ROOT / ".env.example", workdir / ".env")
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is needed to validate the compose file: apt-get install -y docker-compose"
    done = subprocess.run([compose, "config"], cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_is_valid_with_example_env(compose_config):
    assert {"postgres", "migrate", "code", "webserver", "daemon", "mlflow", "feedback-api"} <= set(compose_config["services"])
    assert "change-me" not in (REPO_ROOT / "docker-compose.yaml").read_text()  # secrets only via .env


def test_compose_matches_the_docker_run_launcher(compose_config):
    services = compose_config["services"]
    launcher = load_yaml(DOCKER_INSTANCE)["run_launcher"]["config"]
    # Run containers join the compose network and mount the data volume by their fixed names.
    assert compose_config["networks"]["default"]["name"] == launcher["network"]
    volume, mount = launcher["container_kwargs"]["volumes"][0].split(":")[:2]
    assert compose_config["volumes"]["feedback-data"]["name"] == volume
    for name in ("code", "webserver", "daemon"):
        assert f"feedback-data:{mount}:rw" in services[name]["volumes"], name
    # The daemon starts the containers (and the webserver stops them) through the host's Docker socket.
    for name in ("daemon", "webserver"):
        assert any(v.startswith("/var/run/docker.sock:") for v in services[name]["volumes"]), name
    # Runs use the image the code server reports, which is the image compose builds.
    assert services["code"]["environment"]["DAGSTER_CURRENT_IMAGE"] == services["code"]["image"]
    # Every variable passed on to run containers is set in the daemon's environment (else launching fails).
    assert set(launcher["env_vars"]) <= set(services["daemon"]["environment"])
    # Migrations run once, before the services that use the database.
    for name in ("code", "webserver", "daemon", "feedback-api"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_image_carries_the_compose_instance_and_the_deploy_extra():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY deploy/docker/dagster.yaml workspace.yaml /opt/dagster_home/" in dockerfile
    assert '-e ".[deploy]"' in dockerfile
    assert any(dep.startswith("dagster-docker==") for dep in _deploy_extra())
    assert any(dep.startswith("dagster-k8s==") for dep in _deploy_extra())


def _deploy_extra():
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]


# --- Kubernetes (Helm chart values) --------------------------------------------------------------------------------

# Value names of Dagster's Helm chart 1.13 (helm/dagster/schema in the Dagster repository), for the sections used here.
CHART_TOP_LEVEL = {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
                   "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
                   "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox",
                   "migrate", "telemetry", "serviceAccount", "global", "retention", "additionalInstanceConfig"}
CHART_GLOBAL = {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"}
CHART_POSTGRESQL = {"postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
                    "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service"}
CHART_USER_DEPLOYMENTS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
CHART_USER_DEPLOYMENT = {"name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
                         "deploymentNamespace", "port", "replicaCount", "env", "envConfigMaps", "envSecrets",
                         "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
                         "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels",
                         "volumeMounts", "volumes", "schedulerName", "initContainers", "sidecarContainers",
                         "deploymentStrategy"}
CHART_K8S_RUN_LAUNCHER = {"image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
                          "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
                          "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig"}
CHART_RUN_K8S_CONFIG = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"}
PULL_POLICIES = {"Always", "IfNotPresent", "Never"}


def k8s_object(model, data):
    """Parse a Kubernetes object written in YAML's camelCase; unknown or misspelt fields raise."""
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, data))


def test_k8s_values_use_the_charts_value_names():
    values = load_yaml(K8S_VALUES)
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL
    assert set(values["global"]) <= CHART_GLOBAL
    assert set(values["postgresql"]) <= CHART_POSTGRESQL
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""  # the password only lives in the secret

    user = values["dagster-user-deployments"]
    assert set(user) <= CHART_USER_DEPLOYMENTS and user["enabled"] and user["enableSubchart"]
    [deployment] = user["deployments"]
    assert set(deployment) <= CHART_USER_DEPLOYMENT, set(deployment) - CHART_USER_DEPLOYMENT
    assert {"repository", "tag", "pullPolicy"} == set(deployment["image"])
    assert deployment["image"]["pullPolicy"] in PULL_POLICIES
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "feedback_pipeline.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}

    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s_launcher = launcher["config"]["k8sRunLauncher"]
    assert set(k8s_launcher) <= CHART_K8S_RUN_LAUNCHER, set(k8s_launcher) - CHART_K8S_RUN_LAUNCHER
    assert set(k8s_launcher["runK8sConfig"]) <= CHART_RUN_K8S_CONFIG
    assert k8s_launcher["imagePullPolicy"] in PULL_POLICIES

    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "CustomRunCoordinator"
    assert set(coordinator["config"]["customRunCoordinator"]) == {"module", "class", "config"}


def test_k8s_values_kubernetes_objects_are_valid():
    values = load_yaml(K8S_VALUES)
    [deployment] = values["dagster-user-deployments"]["deployments"]
    env = [k8s_object(k8s.V1EnvVar, item) for item in deployment["env"]]
    assert {"name": "FEEDBACK_EXECUTOR", "value": "k8s"} in [{"name": e.name, "value": e.value} for e in env]
    for secret in deployment["envSecrets"]:
        k8s_object(k8s.V1SecretEnvSource, secret)
    volumes = [k8s_object(k8s.V1Volume, v) for v in deployment["volumes"]]
    mounts = [k8s_object(k8s.V1VolumeMount, m) for m in deployment["volumeMounts"]]
    assert {m.name for m in mounts} <= {v.name for v in volumes}
    assert [m.mount_path for m in mounts] == ["/data"]
    k8s_object(k8s.V1ResourceRequirements, deployment["resources"])
    [migrate] = [k8s_object(k8s.V1Container, c) for c in deployment["initContainers"]]
    image = deployment["image"]
    assert migrate.image == f"{image['repository']}:{image['tag']}"
    assert migrate.command == ["feedback-pipeline", "migrate"]
    k8s_object(k8s.V1Container, {"name": "run", **values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
                                 ["containerConfig"]})

    # The claim the pods mount is the one deploy/k8s/data-pvc.yaml creates, shared across nodes.
    pvc = k8s_object(k8s.V1PersistentVolumeClaim, load_yaml(K8S_PVC))
    assert [v.persistent_volume_claim.claim_name for v in volumes] == [pvc.metadata.name]
    assert pvc.spec.access_modes == ["ReadWriteMany"]


def render_chart_instance(values, release_namespace):
    """The dagster.yaml the chart's instance ConfigMap renders from these values (for the sections set here)."""
    pg = values["postgresql"]
    postgres = {"postgres_db": {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
                                "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
                                "port": pg["service"]["port"], "params": pg["postgresqlParams"],
                                "scheme": pg["postgresqlScheme"]}}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher_config = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace") or release_namespace,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": "feedback-dagster",
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}],
        "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
        "run_k8s_config": {"container_config": launcher["runK8sConfig"]["containerConfig"]},
    }
    if launcher.get("kubeconfigFile"):
        launcher_config["kubeconfig_file"] = launcher["kubeconfigFile"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    return {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": postgres},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": postgres},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": postgres},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config},
        "run_coordinator": {"module": coordinator["module"], "class": coordinator["class"],
                            "config": coordinator["config"]},
        "telemetry": values["telemetry"],
        **values["additionalInstanceConfig"],
    }


def test_k8s_values_render_an_instance_with_k8s_run_launcher(pg_env, tmp_path, monkeypatch):
    """The chart's instance from deploy/k8s/values.yaml loads: K8sRunLauncher, PostgreSQL storage, the pools.

    Changed for the offline run only: the database (the local test one) and, instead of the in-cluster service
    account, a throwaway kubeconfig (K8sRunLauncher loads the Kubernetes client config when it is built).
    """
    values = copy.deepcopy(load_yaml(K8S_VALUES))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
        "users": [{"name": "offline", "user": {"token": "offline"}}]}))
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["loadInclusterConfig"] is True  # the real deployment talks to its own cluster
    launcher.update(loadInclusterConfig=False, kubeconfigFile=str(kubeconfig))
    values["postgresql"].update(postgresqlHost=pg_env.host, postgresqlUsername=pg_env.username,
                                postgresqlDatabase=pg_env.database)
    values["postgresql"]["service"]["port"] = pg_env.port or 5432
    storage = values["additionalInstanceConfig"]["local_artifact_storage"]["config"]
    assert storage["base_dir"].startswith("/data/")  # on the shared volume every pod mounts
    storage["base_dir"] = str(tmp_path / "data" / "dagster")
    for key, value in {"DAGSTER_HOME": "/opt/dagster/dagster_home",
                       "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "feedback-dagster-instance",
                       "DAGSTER_K8S_PG_PASSWORD_SECRET": values["global"]["postgresqlSecretName"],
                       "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "feedback-dagster-pipeline-env"}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(render_chart_instance(values, "feedback")))

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        run_launcher = instance.run_launcher
        assert type(run_launcher).__name__ == "K8sRunLauncher"
        assert run_launcher.job_namespace == "feedback"
        assert run_launcher.postgres_password_secret == "dagster-postgresql-secret"
        assert run_launcher.fail_pod_on_run_failure is True
        assert run_launcher.run_k8s_config["container_config"]["resources"]["requests"]["cpu"] == "250m"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert concurrency.run_queue_config.max_concurrent_runs == 10
        assert dg.materialize([pooled_training], instance=instance).success
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).slot_count == 1


# --- The Kubernetes step executor ----------------------------------------------------------------------------------

def test_k8s_executor_config_parses_against_the_executor_schema():
    result = process_config(k8s_job_executor.config_schema.config_type, deploy_config.k8s_executor_config())
    assert result.success, result.errors
    assert set(result.value["per_step_k8s_config"]) == set(TRAINING_OPS)


def test_deployment_executor_is_chosen_by_the_environment(monkeypatch):
    assert deploy_config.deployment_executor(choice="") is None  # make run, compose: Dagster's default executor
    assert deploy_config.deployment_executor(dg.in_process_executor, choice="") is dg.in_process_executor
    executor = deploy_config.deployment_executor(dg.in_process_executor, choice="k8s")
    job = dg.Definitions(assets=[pooled_training], executor=executor,
                         jobs=[dg.define_asset_job("train_job", selection=[pooled_training])]).resolve_job_def("train_job")
    assert job.executor_def.name == "k8s_gpu_aware"
    execution = dg.validate_run_config(job, {})["execution"]["k8s_gpu_aware"]
    assert execution["per_step_k8s_config"]["chat_adapter"]["container_config"]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"
    with pytest.raises(ValueError):
        deploy_config.deployment_executor(choice="celery")
    monkeypatch.setenv("FEEDBACK_EXECUTOR", "k8s")  # what values.yaml sets on the code location
    assert deploy_config.deployment_executor().name == "k8s_gpu_aware"
    monkeypatch.delenv("FEEDBACK_EXECUTOR")
    assert deploy_config.deployment_executor() is None


def step_job(op_name):
    """The Kubernetes Job the k8s_job_executor builds for one step: the run launcher's pod config from the values,
    then the executor's default step config, then the op's own (the order K8sStepHandler merges them in)."""
    run_k8s = load_yaml(K8S_VALUES)["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    config = deploy_config.k8s_executor_config()
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
        {"container_config": run_k8s["containerConfig"]}))
    for layer in (config["step_k8s_config"], config["per_step_k8s_config"].get(op_name, {})):
        context = context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(layer)))
    job_config = DagsterK8sJobConfig(job_image="registry.example.com/feedback-pipeline:0.1.0",
                                     dagster_home="/opt/dagster/dagster_home")
    return construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"],
                                     f"dagster-step-{op_name.replace('_', '-')}", component="step_worker",
                                     user_defined_k8s_config=context.run_k8s_config)


@pytest.mark.parametrize("op_name", TRAINING_OPS)
def test_training_steps_get_a_gpu_node_of_their_own(op_name):
    template = step_job(op_name).spec.template
    pod = template.spec
    resources = pod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == "1" and resources.requests["nvidia.com/gpu"] == "1"
    assert resources.requests["cpu"] == "4"
    assert pod.node_selector == deploy_config.GPU_NODE_SELECTOR
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    [rule] = pod.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution
    assert rule.topology_key == "kubernetes.io/hostname"
    assert rule.label_selector.match_labels.items() <= template.metadata.labels.items()  # repels its own kind


def test_other_steps_get_small_cpu_pods():
    pod = step_job("cleaned_feedback").spec.template.spec
    resources = pod.containers[0].resources
    assert "nvidia.com/gpu" not in (resources.limits or {}) and resources.requests["cpu"] == "500m"
    assert pod.node_selector is None and pod.affinity is None


def test_training_assets_are_in_the_training_pool():
    """The op names the executor config targets exist, and each training asset is in the training pool."""
    from feedback_pipeline.definitions import defs

    ops = {node.name: node for job in defs.resolve_all_job_defs() for node in job.graph.node_defs}
    for op_name in TRAINING_OPS:
        assert op_name in ops, f"no op {op_name!r}: update deploy_config.TRAINING_OPS"
        assert ops[op_name].pool == TRAINING_POOL, (
            f"add pool=TRAINING_POOL (feedback_pipeline.deploy_config) to the @dg.asset of {op_name}")


def test_definitions_use_the_k8s_executor_when_the_deployment_asks():
    """FEEDBACK_EXECUTOR=k8s (values.yaml) puts every job on the k8s step executor, read when the code location
    starts (a fresh process, as in a pod); without it each job keeps its own executor."""
    probe = ("from feedback_pipeline.definitions import defs\n"
             "print(sorted({j.executor_def.name for j in defs.resolve_all_job_defs() if not j.name.startswith('__')}))")
    names = {}
    for choice in ("k8s", ""):
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "FEEDBACK_EXECUTOR": choice}, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        names[choice] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert names["k8s"] == ["k8s_gpu_aware"], (
        "pass executor=deployment_executor() to dg.Definitions (definitions.py) and wrap each job's own executor: "
        "executor_def=deployment_executor(dg.in_process_executor) (defs/automation.py)")
    assert "k8s_gpu_aware" not in names[""]
