# syntax=docker/dockerfile:1
# Turnout model server for scikit-learn, XGBoost and LightGBM (with `compile: onnx` support).
# Build from the repository root (the context needs constraints.txt, pyproject.toml and the code):
#   docker build -f docker/server-sklearn.Dockerfile -t turnout/server-sklearn:0.1.0 .
# See docs/kubernetes.md, "Helm chart and images".
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
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
    && /opt/turnout/bin/pip install --no-cache-dir -c constraints.txt ".[sklearn,sklearn-onnx,xgboost,xgboost-onnx,lightgbm,s3,gcs]"

FROM ${PYTHON_IMAGE}
# libgomp1: the OpenMP runtime XGBoost and LightGBM's wheels link against (not in -slim).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 turnout \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin turnout
COPY --from=build /opt/turnout /opt/turnout
# Listens on 0.0.0.0 inside the container without authentication (*_INSECURE) unless keys
# are given (TURNOUT_API_KEYS_FILE or TURNOUT_JWKS; docs/security.md).
# Publish the ports only on a protected network (in a cluster: a NetworkPolicy or a mesh).
ENV PATH=/opt/turnout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TURNOUT_HOST=0.0.0.0 \
    TURNOUT_INSECURE=true
USER 10001:10001
WORKDIR /home/turnout
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ENTRYPOINT ["turnout"]
# docker run -p 8080:8080 -p 8081:8081 -v $PWD/models:/models:ro IMAGE  (or: serve s3://bucket/model ...)
CMD ["serve", "/models"]
