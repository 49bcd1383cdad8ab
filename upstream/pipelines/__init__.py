"""Kubeflow Pipelines (kfp v2): components, the example pipeline, local runs and compiling."""
