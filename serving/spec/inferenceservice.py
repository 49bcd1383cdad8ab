"""KServe ``serving.kserve.io/v1beta1`` InferenceService, as typed models.

Accepts KServe's YAML unchanged: the ``predictor.model`` form (``modelFormat``, ``storageUri``,
``runtime``, ``protocolVersion``) and the older per-framework form (``predictor.sklearn``,
``predictor.xgboost``...), with the component scaling and traffic fields. Kubernetes pod fields
(``resources``, ``serviceAccountName``, ``nodeSelector``...) are accepted and ignored locally.
Turnout's own additions sit in ``spec.turnout`` (see :mod:`serving.spec.turnout`).

The same models read Turnout's own group, ``serving.turnout.dev/v1alpha1``, whose CRDs
(:mod:`serving.spec.crd`) are generated from them; ``json_schema_extra`` carries the rules of the
validators that a schema can state (exactly one model form, ``storageUri`` required).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from serving.spec.base import SpecModel, exactly_one, requires
from serving.spec.turnout import TurnoutSpec

DNS_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow", "triton",
              "pmml", "paddle", "huggingface")
ProtocolVersion = Literal["v1", "v2", "grpc-v1", "grpc-v2"]


class ObjectMeta(SpecModel):
    name: str = Field(pattern=DNS_NAME, max_length=63)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Set by a cluster, harmless in a manifest copied out of one.
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: Any = None
    managedFields: Any = None
    finalizers: Any = None


class ModelFormat(SpecModel):
    name: str = Field(min_length=1)
    version: str | None = None


class _Container(SpecModel):
    """Container fields KServe allows on a model; only the storage and protocol matter here."""

    storageUri: str | None = None
    runtimeVersion: str | None = None
    protocolVersion: ProtocolVersion | None = None
    # Kubernetes container fields, accepted and ignored locally.
    name: str | None = None
    image: str | None = None
    args: list[str] | None = None
    command: list[str] | None = None
    env: list[Any] | None = None
    resources: dict[str, Any] | None = None
    ports: list[Any] | None = None
    volumeMounts: list[Any] | None = None
    readinessProbe: Any = None
    livenessProbe: Any = None
    securityContext: Any = None
    imagePullPolicy: str | None = None


class ModelSpec(_Container):
    """``predictor.model``: the format decides the runtime unless ``runtime`` names one."""

    model_config = ConfigDict(json_schema_extra=requires("storageUri"))  # the predictor's rule
    modelFormat: ModelFormat
    runtime: str | None = None
    storage: Any = None


class FrameworkSpec(_Container):
    """The older ``predictor.<framework>`` form."""

    model_config = ConfigDict(json_schema_extra=requires("storageUri"))  # the predictor's rule


class Batcher(SpecModel):
    maxBatchSize: int | None = Field(None, ge=1)
    maxLatency: int | None = Field(None, ge=0, description="milliseconds")
    timeout: int | None = Field(None, ge=0, description="seconds")


class Logger(SpecModel):
    """Payload logging: the router sends each request and response to ``url`` as a CloudEvent
    (docs/observability.md); without ``url``, turnout up writes <state folder>/payloads.jsonl."""

    url: str | None = None
    mode: Literal["all", "request", "response"] = "all"
    metadataHeaders: list[str] | None = None


class PredictorSpec(SpecModel):
    model_config = ConfigDict(json_schema_extra=exactly_one("model", *FRAMEWORKS))  # _one_model

    model: ModelSpec | None = None
    sklearn: FrameworkSpec | None = None
    xgboost: FrameworkSpec | None = None
    lightgbm: FrameworkSpec | None = None
    onnx: FrameworkSpec | None = None
    pytorch: FrameworkSpec | None = None
    tensorflow: FrameworkSpec | None = None
    triton: FrameworkSpec | None = None
    pmml: FrameworkSpec | None = None
    paddle: FrameworkSpec | None = None
    huggingface: FrameworkSpec | None = None
    # KServe ComponentExtensionSpec
    minReplicas: int | None = Field(None, ge=0)
    maxReplicas: int | None = Field(None, ge=0)
    scaleTarget: int | None = Field(None, ge=1)
    scaleMetric: Literal["cpu", "memory", "concurrency", "rps"] | None = None
    containerConcurrency: int | None = Field(None, ge=0)
    timeout: int | None = Field(None, ge=1, description="seconds per request")
    canaryTrafficPercent: int | None = Field(None, ge=0, le=100)
    batcher: Batcher | None = None
    logger: Logger | None = None
    deploymentStrategy: Any = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    # Kubernetes pod fields, accepted and ignored locally.
    serviceAccountName: str | None = None
    nodeSelector: dict[str, str] | None = None
    tolerations: list[Any] | None = None
    affinity: Any = None
    volumes: list[Any] | None = None
    containers: list[Any] | None = None
    imagePullSecrets: list[Any] | None = None
    priorityClassName: str | None = None
    workerSpec: Any = None

    @model_validator(mode="after")
    def _one_model(self) -> PredictorSpec:
        given = [f for f in ("model", *FRAMEWORKS) if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("predictor needs exactly one of model or a framework "
                             f"({', '.join(FRAMEWORKS)}); got {given or 'none'}")
        model = self.resolved()
        if not model.storageUri:
            raise ValueError(f"predictor.{given[0]}.storageUri is required")
        if self.maxReplicas and self.minReplicas and self.maxReplicas < self.minReplicas:
            raise ValueError(f"maxReplicas {self.maxReplicas} is below minReplicas "
                             f"{self.minReplicas}")
        return self

    def resolved(self) -> ModelSpec:
        """The model in the ``predictor.model`` form, whichever form the manifest used."""
        if self.model is not None:
            return self.model
        for framework in FRAMEWORKS:
            old: FrameworkSpec | None = getattr(self, framework)
            if old is not None:
                data = old.model_dump(exclude_none=True)
                return ModelSpec(modelFormat=ModelFormat(name=framework), **data)
        raise ValueError("predictor has no model")  # unreachable after validation


class InferenceServiceSpec(SpecModel):
    predictor: PredictorSpec
    transformer: Any = None
    explainer: Any = None
    turnout: TurnoutSpec | None = None


class InferenceService(SpecModel):
    apiVersion: Literal["serving.kserve.io/v1beta1", "serving.turnout.dev/v1alpha1"]
    kind: Literal["InferenceService"]
    metadata: ObjectMeta
    spec: InferenceServiceSpec
    status: Any = None

    @property
    def name(self) -> str:
        return self.metadata.name

    def ignored_locally(self) -> list[str]:
        """Fields that are valid KServe but have no local effect, for a warning."""
        notes = []
        if self.spec.transformer is not None:
            notes.append("spec.transformer (transformers are not run locally)")
        if self.spec.explainer is not None:
            notes.append("spec.explainer (explainers are not run locally)")
        logger = self.spec.predictor.logger
        if logger is not None and logger.url and not logger.url.startswith(
                ("http://", "https://", "file://", "/")):
            notes.append(f"spec.predictor.logger.url {logger.url!r} (events go to http(s):// "
                         "URLs or .jsonl files: none are logged)")
        predictor = self.spec.predictor
        if predictor.scaleMetric in ("cpu", "memory"):
            notes.append("spec.predictor.scaleMetric cpu/memory (local autoscaling uses "
                         "concurrency)")
        if predictor.deploymentStrategy is not None:
            notes.append("spec.predictor.deploymentStrategy (replicas are replaced by the "
                         "plane: a new one is ready before an old one drains)")
        for name in _POD_FIELDS:
            if getattr(predictor, name) is not None:
                notes.append(f"spec.predictor.{name} (a Kubernetes field: no local effect)")
        model = predictor.resolved()
        where = "spec.predictor.model" if predictor.model is not None else \
            f"spec.predictor.{model.modelFormat.name}"
        if model.protocolVersion == "grpc-v1":  # v1, v2, grpc-v2: all served at once
            notes.append(f"{where}.protocolVersion grpc-v1 (TensorFlow Serving's gRPC API is "
                         "not served; V1 REST, V2 REST and V2 gRPC are)")
        if model.modelFormat.version is not None:
            notes.append(f"{where}.modelFormat.version (the installed framework serves it)")
        if model.runtimeVersion is not None:
            notes.append(f"{where}.runtimeVersion (the installed Turnout runs it)")
        for name in _CONTAINER_FIELDS:
            if getattr(model, name) is not None:
                notes.append(f"{where}.{name} (a Kubernetes field: no local effect)")
        return notes


_POD_FIELDS = ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "volumes",
               "containers", "imagePullSecrets", "priorityClassName", "workerSpec", "labels",
               "annotations")
_CONTAINER_FIELDS = ("name", "image", "args", "command", "env", "resources", "ports",
                     "volumeMounts", "readinessProbe", "livenessProbe", "securityContext",
                     "imagePullPolicy")
