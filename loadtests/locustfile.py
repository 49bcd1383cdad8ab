"""A Locust load test for your own Turnout server (or any Open Inference Protocol V2 server).

Locust is not one of Turnout's dependencies; install it where you run the test:

    pip install locust
    turnout serve ./models &
    TURNOUT_MODEL=iris TURNOUT_FEATURES=4 locust -f loadtests/locustfile.py \\
        --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 60s

Settings (environment variables, read when the test starts):

| variable | default | meaning |
| --- | --- | --- |
| TURNOUT_MODEL | iris | model name |
| TURNOUT_FEATURES | 4 | features per row |
| TURNOUT_DATATYPE | FP64 | input datatype (FP64, FP32, INT64, ...) |
| TURNOUT_BATCH | 1 | rows per request |
| TURNOUT_MIX | json=3,binary=1,v1=1 | relative weights of V2 JSON, V2 binary and V1 requests |

Each request is checked: HTTP 200 and as many output rows as rows sent, else Locust counts it as
a failure. Locust runs in Python and saturates long before a fast server does: for throughput
ceilings use the harness (``python -m loadtests.run``), which drives h2load. Locust is for
realistic mixes, ramps and soak tests against your own models.

Importing this file only defines the user class; nothing runs until Locust starts it.
"""

from __future__ import annotations

import json
import os
import random
import struct

from locust import FastHttpUser, between, task

_PACK = {"FP64": "d", "FP32": "f", "INT64": "q", "INT32": "i"}


def _settings() -> dict:
    mix = dict(part.split("=", 1) for part in
               os.environ.get("TURNOUT_MIX", "json=3,binary=1,v1=1").split(",") if part)
    return {"model": os.environ.get("TURNOUT_MODEL", "iris"),
            "features": int(os.environ.get("TURNOUT_FEATURES", "4")),
            "datatype": os.environ.get("TURNOUT_DATATYPE", "FP64").upper(),
            "batch": int(os.environ.get("TURNOUT_BATCH", "1")),
            "mix": {k: float(v) for k, v in mix.items()}}


class OipUser(FastHttpUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        cfg = self.cfg = _settings()
        rng = random.Random(0)
        integer = cfg["datatype"].startswith(("INT", "UINT"))
        self.rows = [[rng.randint(0, 9) if integer else round(rng.gauss(0, 1), 4)
                      for _ in range(cfg["features"])] for _ in range(cfg["batch"])]
        flat = [v for row in self.rows for v in row]
        tensor = {"name": "input-0", "shape": [cfg["batch"], cfg["features"]],
                  "datatype": cfg["datatype"]}
        self.json_body = json.dumps({"inputs": [{**tensor, "data": flat}]})
        raw = struct.pack(f"<{len(flat)}{_PACK.get(cfg['datatype'], 'd')}", *flat)
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                             "parameters": {"binary_data_output": False}}).encode()
        self.binary_body, self.binary_header_length = header + raw, len(header)
        self.v1_body = json.dumps({"instances": self.rows})
        self.weights = [cfg["mix"].get(k, 0.0) for k in ("json", "binary", "v1")]
        if not any(self.weights):
            self.weights = [1.0, 0.0, 0.0]

    @task
    def infer(self) -> None:
        kind = random.choices(("json", "binary", "v1"), weights=self.weights)[0]
        model, batch = self.cfg["model"], self.cfg["batch"]
        if kind == "v1":
            path, body, headers = f"/v1/models/{model}:predict", self.v1_body, {}
        elif kind == "binary":
            path, body = f"/v2/models/{model}/infer", self.binary_body
            headers = {"Inference-Header-Content-Length": str(self.binary_header_length),
                       "Content-Type": "application/octet-stream"}
        else:
            path, body = f"/v2/models/{model}/infer", self.json_body
            headers = {"Content-Type": "application/json"}
        with self.client.post(path, data=body, headers=headers, name=f"{kind} {model}",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                doc = response.json()
                rows = (len(doc["predictions"]) if kind == "v1"
                        else doc["outputs"][0]["shape"][0])
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure(f"unreadable answer: {response.text[:200]}")
                return
            if rows != batch:
                response.failure(f"{rows} output rows for {batch} sent")
