"""The MLflow model registry: register trained models, resolve ``models:/`` URIs, aliases."""
