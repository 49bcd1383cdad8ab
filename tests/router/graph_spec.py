"""Helpers the graph tests share: InferenceGraph spec builders and a binomial bound."""

from __future__ import annotations

import math
import re


def within_binomial(count: int, n: int, p: float, z: float = 4.5) -> bool:
    """Whether ``count`` successes of ``n`` draws is plausible for probability ``p``."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def step(service: str, **kw) -> dict:
    return {"stepName": kw.pop("name", service), "serviceName": service, **kw}


def graph(name: str, router_type: str, steps: list, **kw) -> dict:
    return {"name": name, **kw, "nodes": {"root": {"routerType": router_type, "steps": steps}}}


def dependency_and_timeout_graphs() -> list[dict]:
    """Soft/Hard dependencies on the ``failing`` service, timeouts on ``slow``, and a nested
    node: the same graphs for the REST and gRPC suites."""
    return [
        graph("soft", "Sequence", [step("echo"), step("failing", data="$response"),
                                   step("double", data="$response")]),
        graph("hard", "Sequence", [step("echo"), step("failing", data="$response",
                                                       dependency="Hard"),
                                   step("double", data="$response")]),
        graph("ens-soft", "Ensemble", [step("echo"), step("failing")]),
        graph("ens-hard", "Ensemble", [step("echo"), step("failing", dependency="Hard")]),
        graph("step-timeout", "Sequence", [step("slow", timeout_seconds=0.3,
                                                dependency="Hard")]),
        graph("graph-timeout", "Sequence", [step("slow")], timeout_seconds=0.3),
        {"name": "nested", "nodes": {
            "root": {"routerType": "Sequence", "steps": [
                {"stepName": "inner", "nodeName": "pair"},
                step("double", data="$response")]},
            "pair": {"routerType": "Sequence", "steps": [step("double")]}}},
    ]


def without_request_id(message: str) -> str:
    """An error message with its request id masked: a model's failure names the id of the
    request that saw it, which differs between a direct call and one through the router."""
    return re.sub(r"request id [^;]+;", "request id ...;", message)
