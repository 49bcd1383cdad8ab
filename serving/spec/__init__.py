"""Typed manifests: KServe's InferenceService (v1beta1) and InferenceGraph (v1alpha1), plus
Turnout's ``spec.turnout`` block. Pure models and YAML reading; no other I/O."""

from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService, ModelSpec, PredictorSpec
from serving.spec.load import ANNOTATION, ManifestError, Manifests, load_files, load_texts
from serving.spec.turnout import Analysis, Autoscaling, Rollout, TurnoutSpec

__all__ = ["ANNOTATION", "Analysis", "Autoscaling", "InferenceGraph", "InferenceService",
           "ManifestError", "Manifests", "ModelSpec", "PredictorSpec", "Rollout", "TurnoutSpec",
           "load_files", "load_texts"]
