"""The example transformer (examples/transformer) computed in-process, for the transformer
tests to compare what the servers answer with: postprocess(model(preprocess(x)))."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "transformer" / "transformer"
CLASS = "transformer:CsvToIris"
LINES = ["5.1,3.5,1.4,0.2", "6.7,3.0,5.2,2.3", "5.9,3.0,4.2,1.5"]


def copy_example(folder: Path) -> Path:
    """The example's transformer folder copied under ``folder`` (inside the tests' roots)."""
    target = folder / "transformer"
    shutil.copytree(EXAMPLE, target)
    return target


def expected(model_path: Path, lines: list[str]) -> dict[str, list[Any]]:
    """What the transformer in front of the scikit-learn model at ``model_path`` answers."""
    import joblib

    from runtimes.python import load_model_class
    from serving.runtime.settings import ModelSettings

    cls = load_model_class(CLASS, EXAMPLE)
    transformer = cls(ModelSettings(name="iris", artifact=EXAMPLE, model_class=CLASS))
    transformer.load()
    tensors = transformer.preprocess({"text": np.array(lines, dtype=object)})
    model = joblib.load(next(model_path.glob("*.joblib")) if model_path.is_dir() else model_path)
    out = transformer.postprocess({"predict": model.predict(tensors["input-0"])})
    return {"species": list(out["species"]), "class_id": [int(i) for i in out["class_id"]]}


def load_failure(url: str, model: str, wanted: str, timeout: float = 30) -> str:
    """The reason ``model`` failed to load on the server at ``url``, once it says ``wanted``
    (the server itself starts: a broken model does not make it unready)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/v2/models/{model}/ready", timeout=1)
            last = httpx.get(f"{url}/v2/models/{model}", timeout=1).text
            if ready.status_code != 200 and wanted in last:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{model} did not fail with {wanted!r}: {last}")
