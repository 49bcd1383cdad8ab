# syntax=docker/dockerfile:1
# Turnout pipeline tasks on a Kubeflow Pipelines cluster: the training components (every
# framework, CPU torch and tensorflow-cpu), kfp and MLflow. The components' base_image
# (upstream/pipelines/components.py, TURNOUT_PIPELINE_IMAGE) names this image.
# Build from the repository root (the context needs constraints.txt, pyproject.toml and the code):
#   docker build -f docker/pipelines.Dockerfile -t turnout/pipelines:0.1.0 .
# See docs/pipelines.md.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# CPU-only PyTorch first, so the constrained install keeps it (see server.Dockerfile).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY serving/ serving/
COPY router/ router/
COPY runtimes/ runtimes/
COPY upstream/ upstream/
# Versions pinned by the project's constraints.txt (what the test suite last passed with).
RUN python -m venv /opt/turnout \
    && /opt/turnout/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && /opt/turnout/bin/pip install --no-cache-dir -c constraints.txt ".[all,pipelines,gcs]"

FROM ${PYTHON_IMAGE}
# libgomp1: the OpenMP runtime XGBoost and LightGBM's wheels link against (not in -slim).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 turnout \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin turnout
COPY --from=build /opt/turnout /opt/turnout
# kfp runs each task as `python3 -m kfp.dsl.executor_main` (or `sh -c` with python3): the venv
# comes first on PATH, so its python3 is the one with Turnout and kfp.
ENV PATH=/opt/turnout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true
USER 10001:10001
WORKDIR /home/turnout
ENTRYPOINT ["turnout"]
CMD ["pipeline", "--help"]
