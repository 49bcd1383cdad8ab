"""The control plane: InferenceService manifests in, model server processes and routes out.

- :mod:`serving.control.policy`: the decisions, pure functions of serialisable state (the
  plan, KServe's revision semantics, the rollout step, autoscaling, router metrics → windows);
  ``turnout up`` and a Kubernetes controller share them unchanged.
- :mod:`serving.control.local`: ``turnout up`` — the actuator (processes, the router's admin
  API) and observer (replica readiness, router metrics) on one machine, its state file, admin
  API and CLI.
"""
