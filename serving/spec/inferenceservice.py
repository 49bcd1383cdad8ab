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


class TransformerTurnout(SpecModel):
    """``spec.transformer.turnout``: the transformer as a Python class (docs/transformers.md),
    run by ``turnout serve --transformer-for`` locally and by the controller on Kubernetes."""

    modelClass: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                            description="module:Class, a subclass of runtimes.python.Model")
    storageUri: str = Field(min_length=1, description="The folder holding the class's module")
    protocol: Literal["v1", "v2", "grpc-v2"] | None = Field(
        None, description="How the transformer calls the predictor (KServe's --protocol); "
        "default: the containers' --protocol, else v2")


class TransformerSpec(SpecModel):
    """KServe's ``spec.transformer``: ``containers`` (an image with KServe's transformer
    arguments, rendered on Kubernetes) and/or Turnout's ``turnout`` form (what runs locally)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["containers"]},
                                                           {"required": ["turnout"]}]})

    containers: list[_Container] | None = None
    turnout: TransformerTurnout | None = None
    minReplicas: int | None = Field(None, ge=0)
    maxReplicas: int | None = Field(None, ge=0)
    timeout: int | None = Field(None, ge=1, description="seconds per predictor call")
    # Kubernetes pod and scaling fields, accepted and ignored locally.
    scaleTarget: int | None = None
    scaleMetric: str | None = None
    containerConcurrency: int | None = None
    serviceAccountName: str | None = None
    nodeSelector: dict[str, str] | None = None
    tolerations: list[Any] | None = None
    affinity: Any = None
    volumes: list[Any] | None = None
    imagePullSecrets: list[Any] | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    logger: Any = None

    @model_validator(mode="after")
    def _something_to_run(self) -> TransformerSpec:
        if not self.containers and self.turnout is None:
            raise ValueError("transformer needs containers (KServe's image form) or turnout "
                             "(modelClass + storageUri)")
        return self

    def argument(self, *names: str) -> str | None:
        """A KServe transformer argument of the first container (``--name v`` or
        ``--name=v``), under any of ``names``."""
        args = list((self.containers[0].args or []) if self.containers else [])
        for i, arg in enumerate(args):
            flag, eq, value = arg.partition("=")
            if flag in names:
                return value if eq else (args[i + 1] if i + 1 < len(args) else None)
        return None

    def predictor_protocol(self) -> str:
        """How the transformer calls the predictor: turnout.protocol, else the container's
        ``--protocol`` / ``--predictor_protocol``, else v2."""
        if self.turnout is not None and self.turnout.protocol is not None:
            return self.turnout.protocol
        given = self.argument("--predictor_protocol", "--protocol") or "v2"
        return given if given in ("v1", "v2", "grpc-v2") else "v2"


class InferenceServiceSpec(SpecModel):
    predictor: PredictorSpec
    transformer: TransformerSpec | None = None
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
        transformer = self.spec.transformer
        if transformer is not None and transformer.turnout is None:
            notes.append("spec.transformer.containers (an image runs only on Kubernetes; add "
                         "spec.transformer.turnout with modelClass and storageUri to run the "
                         "transformer locally: without it requests go to the predictor)")
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
