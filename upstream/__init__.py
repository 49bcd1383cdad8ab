"""Upstream of serving: training components, Kubeflow pipelines and the MLflow model registry.

Nothing here is on the model server's or the router's import path (an import-linter contract
says so): MLflow and kfp are heavy and configure global state when imported, so they are
imported lazily, inside the functions that need them, and only in this package and the CLI.
"""
