"""A transformer for a handwritten-digit classifier: image bytes in, the digit out.

Clients send images (PNG, JPEG... anything Pillow reads) as a BYTES tensor: raw bytes over gRPC
or the V2 binary extension, base64 text in JSON (V1 ``instances`` or V2 ``data``).
``preprocess`` decodes each, makes it 8x8 grayscale and scales it to the 0-16 ink values of
scikit-learn's digits, giving the FP32 ``[rows, 64]`` tensor the predictor takes;
``postprocess`` returns the class id and its name.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from runtimes.python import Model

SIDE = 8


class ImageToDigit(Model):
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "digit", "datatype": "INT64", "shape": [-1]},
               {"name": "label", "datatype": "BYTES", "shape": [-1], "content_type": "str"}]

    def load(self) -> None:
        from PIL import Image  # the transformer's own dependency (pip install pillow)

        self.image = Image

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        rows = [self._pixels(_image_bytes(item)) for item in inputs["image"]]
        return {"input-0": np.stack(rows).astype(np.float32)}

    def _pixels(self, raw: bytes) -> np.ndarray:
        try:
            picture = self.image.open(io.BytesIO(raw))
            picture.load()
        except Exception as exc:  # Pillow's errors name the format problem
            raise ValueError(f"not an image ({type(exc).__name__}: {exc})") from None
        gray = picture.convert("L").resize((SIDE, SIDE))
        return np.asarray(gray, dtype=np.float32).reshape(-1) * 16.0 / 255.0

    def postprocess(self, result: dict[str, np.ndarray]) -> dict[str, Any]:
        ids = np.asarray(result.get("predict", result.get("predictions"))).reshape(-1)
        ids = ids.astype(np.int64)
        return {"digit": ids, "label": [f"digit {i}" for i in ids]}


def _image_bytes(item: Any) -> bytes:
    """Raw image bytes, or base64 text of them (what JSON clients can send)."""
    raw = item if isinstance(item, bytes) else str(item).encode()
    if raw[:8] == b"\x89PNG\r\n\x1a\n" or raw[:3] == b"\xff\xd8\xff":
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise ValueError("an image must be image bytes or their base64 text") from None
