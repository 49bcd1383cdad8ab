"""Turnout's additions to an InferenceService, under ``spec.turnout``.

KServe has no field for header rules, stickiness, mirrors, progressive rollout or the
autoscaler's windows, so they live in one clearly named block. In Turnout's own API group
(``serving.turnout.dev/v1alpha1``, whose CRDs are generated from these models) ``spec.turnout`` is
a first-class field. Under KServe's group on a cluster (where KServe's CRD would prune an unknown
``spec.turnout``) the same block can be written as YAML in the annotation
``serving.turnout.dev/spec``; :func:`serving.spec.load` accepts either, and ``turnout convert``
moves the annotation into ``spec.turnout``.

Variant names in rules and mirrors are the roles ``stable`` and ``canary``: which revision plays
each role changes as rollouts proceed, the rules do not have to.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from serving.spec.base import Seconds, SpecModel, exactly_one

Role = Literal["stable", "canary"]


class TrafficRule(SpecModel):
    """Requests whose headers/cookies all match go to ``variant``, before weights."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [  # _not_empty
        {"required": [key], "properties": {key: {"minProperties": 1}}}
        for key in ("header", "cookie")]})

    header: dict[str, str] = Field(default_factory=dict)
    cookie: dict[str, str] = Field(default_factory=dict)
    variant: Role

    @model_validator(mode="after")
    def _not_empty(self) -> TrafficRule:
        if not self.header and not self.cookie:
            raise ValueError("a rule needs a header or cookie to match")
        return self


class Sticky(SpecModel):
    model_config = ConfigDict(json_schema_extra=exactly_one("header", "cookie"))  # _one

    header: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("sticky needs exactly one of header or cookie")
        return self


class Mirror(SpecModel):
    """Copies of live requests sent to the canary; its answers are compared, never returned."""

    percent: float = Field(100, ge=0, le=100)
    maxInFlight: int = Field(64, ge=1)


class Analysis(SpecModel):
    """Thresholds a canary must meet over one interval to advance a step.

    Absolute limits bound the canary on its own; relative ones compare it with the stable
    revision over the same interval, so a shared slow dependency does not fail the canary.
    """

    minRequests: int = Field(20, ge=0, description="canary requests needed for a verdict")
    maxErrorRate: float | None = Field(0.05, ge=0, le=1, description="5xx share, absolute")
    maxErrorRateIncrease: float | None = Field(
        0.02, ge=0, le=1, description="canary error rate minus stable's")
    maxP99Seconds: Seconds | None = Field(None, gt=0, description="absolute p99 latency")
    maxP99Ratio: float | None = Field(2.0, gt=0, description="canary p99 / stable p99")
    p99FloorSeconds: Seconds = Field(
        0.01, ge=0, description="p99s below this compare as equal: the ratio of two "
        "sub-millisecond latencies is noise")
    minAgreement: float | None = Field(None, ge=0, le=1, description="share of mirrored class "
                                       "outputs equal to stable's; needs mirror")
    maxHolds: int = Field(10, ge=1, description="intervals without enough requests before the "
                          "rollout gives up and rolls back")


class Rollout(SpecModel):
    """Progressive rollout: the canary's share walks ``steps`` while the analysis passes."""

    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1,
                             json_schema_extra={"items": {"type": "integer", "minimum": 1,
                                                          "maximum": 100}})  # _steps, in part
    interval: Seconds = Field(30.0, gt=0)
    readyTimeout: Seconds = Field(
        600.0, gt=0, description="how long the canary may go without a ready replica (a "
        "model that fails to load, a crash loop) before the rollout rolls it back")
    analysis: Analysis = Analysis()

    @model_validator(mode="after")
    def _steps(self) -> Rollout:
        if any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(set(self.steps)):
            raise ValueError(f"steps must rise strictly within 1..100, got {self.steps}")
        return self


class Autoscaling(SpecModel):
    """Knative KPA windows; the target itself is KServe's ``scaleTarget``/``scaleMetric``."""

    stableWindow: Seconds = Field(60.0, gt=0)
    panicWindow: Seconds = Field(6.0, gt=0)
    panicThreshold: float = Field(2.0, gt=1, description="desired/current ratio that panics")
    scaleToZeroGrace: Seconds = Field(30.0, ge=0, description="idle time before the last "
                                      "replica stops (minReplicas: 0)")
    maxScaleUpRate: float = Field(1000.0, gt=1)
    maxScaleDownRate: float = Field(2.0, gt=1)


class Auth(SpecModel):
    """Who may call this service through the router: the names of API keys (the ``NAME`` of a
    keys-file entry) or JWT subjects (``sub``). The router must authenticate callers
    (``--api-keys-file`` / ``--jwks``); any other credential gets 403."""

    principals: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)


class TurnoutSpec(SpecModel):
    rules: list[TrafficRule] = Field(default_factory=list)
    sticky: Sticky | None = None
    mirror: Mirror | None = None
    rollout: Rollout | None = None
    autoscaling: Autoscaling = Autoscaling()
    auth: Auth | None = None
