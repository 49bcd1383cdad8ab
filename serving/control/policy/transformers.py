"""KServe's transformer, per revision: what it runs and how the router reaches it.

A service with ``spec.transformer`` gets one transformer per serving revision (the canary has
its own, so a canary changes transformer and predictor together, as KServe's revisions do).
The router sends the service's traffic to the revision's transformer, which calls that
revision's predictor. Pure: serialisable values in, values out.

Two forms (docs/transformers.md): Turnout's ``turnout: {modelClass, storageUri, protocol}``,
run by ``turnout serve --transformer-for`` under ``turnout up`` and on Kubernetes; KServe's
``containers`` (an image with ``--model_name``, ``--predictor_host``, ``--protocol``), which
only a cluster can run: ``turnout up`` leaves such a transformer out (the service is served
by its predictor, with a warning), the controller renders the container as it is.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serving.spec.inferenceservice import InferenceService

SUFFIX = "-transformer"
# A transformer's predict threads mostly wait on its predictor: more of them than a model
# server's default 4 keep concurrent requests from queueing behind one another.
THREADS = 16


class TransformerRevision(BaseModel):
    """A revision's transformer, recorded with it (``state.json`` / the resource's status)."""

    model_class: str | None = None   # Turnout's form; None: KServe's containers only
    storage_uri: str = ""            # the folder holding the class, as the manifest wrote it
    resolved_uri: str = ""           # what the transformer servers are given (absolute)
    protocol: str = "v2"             # how it calls the predictor: v1, v2, grpc-v2
    timeout_seconds: int | None = None
    container: dict[str, Any] | None = None  # KServe's containers[0], for a cluster


def transformer_revision(isvc: InferenceService,
                         resolved_uri: str | None = None) -> TransformerRevision | None:
    """The transformer a new revision of ``isvc`` gets (None without ``spec.transformer``)."""
    spec = isvc.spec.transformer
    if spec is None:
        return None
    turnout = spec.turnout
    container = spec.containers[0].model_dump(mode="json", exclude_none=True) \
        if spec.containers else None
    return TransformerRevision(
        model_class=turnout.modelClass if turnout else None,
        storage_uri=turnout.storageUri if turnout else "",
        resolved_uri=(resolved_uri or turnout.storageUri) if turnout else "",
        protocol=spec.predictor_protocol(), timeout_seconds=spec.timeout, container=container)


def template(isvc: InferenceService) -> dict[str, Any] | None:
    """What of ``spec.transformer`` makes a new revision when it changes."""
    spec = isvc.spec.transformer
    if spec is None:
        return None
    return spec.model_dump(mode="json", exclude_none=True,
                           include={"containers", "turnout", "timeout"})


def key(revision: str) -> str:
    """The transformer's name beside its revision: workloads, endpoints, processes."""
    return f"{revision}{SUFFIX}"


@dataclass(frozen=True)
class TransformerWorkload:
    """One revision's transformer servers."""

    service: str
    revision: str                 # the predictor revision it calls
    name: str                     # key(revision)
    model_name: str               # what clients call it (the service's name)
    transformer: TransformerRevision
    replicas: int                 # the predictor's: both scale (and go to zero) together

    @property
    def runs_locally(self) -> bool:
        return self.transformer.model_class is not None



def serving_ready(revision: str, transformer: TransformerRevision | None,
                  ready: Collection[str], *, run_images: bool = True) -> bool:
    """Whether a revision can take traffic: its predictor is ready (in ``ready``) and so is its
    transformer where it runs (``turnout up`` does not run container-only ones)."""
    if revision not in ready:
        return False
    if transformer is None or (transformer.model_class is None and not run_images):
        return True
    return key(revision) in ready
