"""LitServe serving the harness's models: one ``LitAPI`` per model, one API server process.

    python litserve_app.py --http-port P --model iris=sklearn:FP64:4:/path/model.joblib ...

Configured as LitServe's docs recommend for throughput on one core: ``num_api_servers=1``, one
inference worker per API, ``fast_queue=True`` (ZeroMQ between the API server and the workers).
SIGTERM is mapped to SIGINT's clean stop: otherwise LitServe's main process dies and leaves its
workers serving. ``GET /v2/models/<name>/ready`` is not LitServe's: the harness waits on its
``/health`` instead.
"""

from __future__ import annotations

import argparse
import signal

import litserve as ls
from common import decode, encode, parse_specs


class BenchAPI(ls.LitAPI):
    def __init__(self, spec) -> None:
        super().__init__(api_path=f"/v2/models/{spec.name}/infer")
        self.model_arg = spec

    def setup(self, device) -> None:
        self.model = self.model_arg.load()

    def decode_request(self, request):
        return decode(request)

    def predict(self, x):
        return self.model(x)

    def encode_response(self, output):
        return encode(self.model_arg.name, output)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    server = ls.LitServer([BenchAPI(spec) for spec in parse_specs(args.model)],
                          accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=args.http_port, num_api_servers=1,
               generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
