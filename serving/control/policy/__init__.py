"""The control plane's decisions: pure functions of serialisable state, no I/O.

:mod:`.plan` (desired workloads and routes), :mod:`.revisions` (KServe canary semantics),
:mod:`.rollout` (analysis and the progressive rollout step), :mod:`.autoscale` (the KPA
decision and the spec → policy mapping), :mod:`.observe` (router metrics → windows),
:mod:`.formats` (model format → runtime), :mod:`.routes` (the router's config).
"""
