"""The Kubernetes controller: the same plan and rollout step as ``turnout up``, acted out with
Deployments, Services, the router's ConfigMap and autoscalers (docs/kubernetes.md)."""
