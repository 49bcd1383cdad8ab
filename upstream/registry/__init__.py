"""The MLflow model registry: register trained models, resolve ``models:/`` URIs, aliases.

Importing this package does not import MLflow; the methods of :class:`Registry` that talk to the
registry do, the first time they run.
"""

from upstream.registry.registry import (
    FRAMEWORK_TAG,
    LINEAGE_TAG_PREFIX,
    METRIC_TAG_PREFIX,
    SIGNATURE_TAG,
    RegisteredModelSummary,
    Registry,
    ResolvedVersion,
)
from upstream.registry.uris import ModelRef, RegistryError, is_registry_uri, parse_models_uri

__all__ = [
    "FRAMEWORK_TAG",
    "LINEAGE_TAG_PREFIX",
    "METRIC_TAG_PREFIX",
    "SIGNATURE_TAG",
    "ModelRef",
    "RegisteredModelSummary",
    "Registry",
    "RegistryError",
    "ResolvedVersion",
    "is_registry_uri",
    "parse_models_uri",
]
