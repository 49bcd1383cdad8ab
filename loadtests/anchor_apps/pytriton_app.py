"""NVIDIA PyTriton (a real Triton server, C++ HTTP and gRPC frontends) serving the harness's models.

Run with the pytriton anchor venv's python:

    python pytriton_app.py --http-port P --grpc-port G --model iris=sklearn:/path/model.joblib ...

Configured as PyTriton's docs recommend for throughput: the ``@batch`` decorator and Triton's
dynamic batcher (``max_batch_size`` 64, zero queue delay: it merges what is waiting and never
waits for more). Triton's Python backend stub gets numpy 1.x first on its path (a ``.pth`` file
the harness installs: the stub ignores PYTHONPATH) and the interpreter's libpython on
``LD_LIBRARY_PATH`` (set by the harness); SIGTERM is mapped to SIGINT's clean stop, the only
one Triton's supervisor honours.
"""

from __future__ import annotations

import argparse
import signal

import numpy as np
from common import parse_specs

MAX_BATCH_SIZE = 64


def infer_func(predict):
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        x = inputs["input-0"]
        y = np.asarray(predict(x))
        return {"output-0": y.reshape(len(x), -1)}
    return infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--model", action="append", default=[], help="name=framework:DATATYPE:features:path")
    args = parser.parse_args()

    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    loaded = [(spec, spec.load()) for spec in parse_specs(args.model)]
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port,
                          grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, log_verbose=0)
    with Triton(config=config) as triton:
        for spec, predict in loaded:
            probe = np.zeros((1, spec.n_features), dtype=spec.dtype)
            out = np.asarray(predict(probe)).reshape(1, -1)
            triton.bind(
                model_name=spec.name, infer_func=infer_func(predict),
                inputs=[Tensor(name="input-0", dtype=probe.dtype, shape=(probe.shape[1],))],
                outputs=[Tensor(name="output-0", dtype=out.dtype, shape=(out.shape[1],))],
                config=ModelConfig(max_batch_size=MAX_BATCH_SIZE,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
                strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
