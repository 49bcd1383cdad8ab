"""The control plane: manifests → revisions → processes and routes, plus the pure policies.

Pure (reusable by a Kubernetes controller): :mod:`.revisions` (KServe canary semantics),
:mod:`.routes` (router config), :mod:`.rollout` (analysis), :mod:`.autoscale` (KPA decision),
:mod:`.observe` (router metrics → windows). Local only: :mod:`.supervisor`, :mod:`.plane`,
:mod:`.routerproc`, :mod:`.activator`, :mod:`.admin`, :mod:`.metrics`, :mod:`.run`, :mod:`.cli`.
"""

from serving.control.policy.autoscale import ScaleDecision, ScalePolicy, ScaleState, Window, decide
from serving.control.policy.revisions import ServiceState, apply_manifest, promote, rollback
from serving.control.policy.rollout import VariantWindow, Verdict, analyse
from serving.control.policy.routes import Endpoints, router_config

__all__ = ["Endpoints", "ScaleDecision", "ScalePolicy", "ScaleState", "ServiceState",
           "VariantWindow", "Verdict", "Window", "analyse", "apply_manifest", "decide", "promote",
           "rollback", "router_config"]
