"""BentoML serving the harness's models: one service, one async API per model, one worker.

Started by the harness as ``bentoml serve bentoml_app:Bench --working-dir <this folder>`` with
the models in ``BENCH_MODELS`` (``;``-separated ``name=framework:DATATYPE:features:path``).
Configured as BentoML's docs recommend for a CPU-bound model on one core: ``workers=1`` and
``async def`` APIs (no thread-pool hop per request), access logs off. Its adaptive batching is
not used: it needs its own ndarray input form, not the V2 JSON body every server here gets.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from common import decode, encode, parse_specs

SPECS = parse_specs([s for s in os.environ.get("BENCH_MODELS", "").split(";") if s])


def _init(self) -> None:
    self.models = {spec.name: spec.load() for spec in SPECS}


def _endpoint(name: str, attribute: str):
    async def infer(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        return encode(name, self.models[name](decode({"inputs": inputs})))
    infer.__name__ = infer.__qualname__ = attribute  # BentoML finds the API by this name
    return bentoml.api(route=f"/v2/models/{name}/infer")(infer)


Bench = bentoml.service(workers=1, logging={"access": {"enabled": False}})(type(
    "Bench", (), {"__init__": _init, **{f"infer_{i}": _endpoint(spec.name, f"infer_{i}")
                                       for i, spec in enumerate(SPECS)}}))
