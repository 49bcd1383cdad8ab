# syntax=docker/dockerfile:1
# Turnout Kubernetes controller (`turnout controller`: kopf and the Kubernetes client).
# Build from the repository root (the context needs constraints.txt, pyproject.toml and the code):
#   docker build -f docker/controller.Dockerfile -t turnout/controller:0.1.0 .
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
    && /opt/turnout/bin/pip install --no-cache-dir -c constraints.txt ".[kube,pipelines]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 turnout \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin turnout
COPY --from=build /opt/turnout /opt/turnout
ENV PATH=/opt/turnout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/turnout
# Metrics (TURNOUT_CONTROLLER_METRICS_PORT, the chart's default) and the optional health port.
EXPOSE 9090 8082
ENTRYPOINT ["turnout"]
CMD ["controller"]
