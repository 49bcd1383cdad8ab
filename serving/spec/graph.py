"""KServe ``serving.kserve.io/v1alpha1`` InferenceGraph, as typed models.

The router runs graphs itself; these models only check the manifest's shape. Deeper checks
(conditions, cycles, names of services) happen when the control plane builds the router's
config, which validates graphs with the router's own rules. Turnout's own group,
``serving.turnout.dev/v1alpha1``, uses the same models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from serving.spec.base import SpecModel, exactly_one
from serving.spec.inferenceservice import ObjectMeta


class InferenceStep(SpecModel):
    model_config = ConfigDict(json_schema_extra=exactly_one("nodeName", "serviceName"))  # _target

    stepName: str | None = None
    nodeName: str | None = None
    serviceName: str | None = None
    serviceUrl: str | None = None
    data: str | None = None
    weight: int | None = Field(None, ge=0)
    condition: str | None = None
    dependency: Literal["Hard", "Soft"] | None = None

    @model_validator(mode="after")
    def _target(self) -> InferenceStep:
        if self.serviceUrl is not None:
            raise ValueError("serviceUrl steps are not supported locally; name a serviceName")
        if (self.nodeName is None) == (self.serviceName is None):
            raise ValueError("a step needs exactly one of nodeName or serviceName")
        return self


class InferenceRouter(SpecModel):
    routerType: Literal["Sequence", "Switch", "Ensemble", "Splitter"]
    steps: list[InferenceStep] = Field(min_length=1)


class InferenceGraphSpec(SpecModel):
    nodes: dict[str, InferenceRouter] = Field(json_schema_extra={"required": ["root"]})  # _root
    timeout: int | None = Field(None, ge=1, description="seconds for the whole graph")
    minReplicas: int | None = None
    maxReplicas: int | None = None
    scaleTarget: int | None = None
    scaleMetric: str | None = None
    resources: Any = None
    affinity: Any = None

    @model_validator(mode="after")
    def _root(self) -> InferenceGraphSpec:
        if "root" not in self.nodes:
            raise ValueError("nodes needs a node named 'root'")
        return self


class InferenceGraph(SpecModel):
    apiVersion: Literal["serving.kserve.io/v1alpha1", "serving.turnout.dev/v1alpha1"]
    kind: Literal["InferenceGraph"]
    metadata: ObjectMeta
    spec: InferenceGraphSpec
    status: Any = None

    @property
    def name(self) -> str:
        return self.metadata.name
