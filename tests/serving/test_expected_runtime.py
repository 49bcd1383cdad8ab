"""``turnout serve --runtime``: the runtime a manifest's modelFormat asks for is enforced, so an
artifact of another framework fails its model with a reason instead of silently serving."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from serving.protocol.errors import ModelLoadError
from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository, check_runtime


@pytest.mark.parametrize("found, expected, declared, error", [
    ("sklearn", "sklearn", False, None),
    ("xgboost", "sklearn", False, "the artifact is for the xgboost runtime"),
    ("onnx", "sklearn", True, "model-settings.yaml names the onnx runtime"),
    ("my_plugin:Custom", "sklearn", True, None),   # a custom class named by the model stands
])
def test_check_runtime(found, expected, declared, error) -> None:
    if error is None:
        check_runtime(found, expected, declared=declared)
    else:
        with pytest.raises(ModelLoadError, match=error):
            check_runtime(found, expected, declared=declared)


@pytest.mark.parametrize("runtime, state", [("sklearn", "READY"), ("xgboost", "UNAVAILABLE"),
                                            (None, "READY")])
async def test_repository_enforces_the_expected_runtime(model_zoo, runtime, state) -> None:
    repository = ModelRepository(path=model_zoo["root"] / "iris", name="iris",
                                 metrics=Metrics(CollectorRegistry()), runtime=runtime)
    await repository.load_all()
    entries = repository.index()
    assert {e.state for e in entries} == {state}
    if state == "UNAVAILABLE":
        assert all("asks for xgboost" in e.reason for e in entries)
