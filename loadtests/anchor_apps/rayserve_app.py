"""Ray Serve serving the harness's models: one FastAPI ingress deployment on one core.

    python rayserve_app.py --http-port P --model iris=sklearn:FP64:4:/path/model.joblib ...

Configured as Ray's docs recommend for throughput on one machine: ``ray.init(num_cpus=1,
include_dashboard=False)``, a fractional CPU for the replica, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``
(set by the harness) and every model in the one ingress replica, so a request makes no
deployment-handle hop. gRPC goes through Serve's gRPC proxy with KServe V2's service (the
generated code of tritonclient); its requests carry ``application: bench`` metadata, as the
proxy routes by it. SIGTERM shuts Serve and Ray down.
"""


import argparse
import signal
import threading

from common import DATATYPES, DTYPES, decode, encode, parse_specs


def build_app(specs):
    from fastapi import FastAPI, HTTPException, Request
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
    @serve.ingress(api)
    class Bench:
        def __init__(self, specs) -> None:
            self.models = {spec.name: spec.load() for spec in specs}

        @api.get("/v2/models/{name}/ready")
        async def ready(self, name: str) -> dict:
            if name not in self.models:
                raise HTTPException(404, "no such model")
            return {"name": name, "ready": True}

        # gRPC, through Serve's gRPC proxy: KServe V2's service (tritonclient's generated code).
        def ModelReady(self, request):  # noqa: N802 - the gRPC method's name
            from tritonclient.grpc import service_pb2

            return service_pb2.ModelReadyResponse(ready=request.name in self.models)

        def ModelInfer(self, request):  # noqa: N802 - the gRPC method's name
            import numpy as np
            from tritonclient.grpc import service_pb2

            tensor = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], dtype=DTYPES[tensor.datatype])
            y = np.ascontiguousarray(self.models[request.model_name](x.reshape(tensor.shape)))
            response = service_pb2.ModelInferResponse(model_name=request.model_name,
                                                      id=request.id)
            out = response.outputs.add()
            out.name, out.datatype = "output-0", DATATYPES[y.dtype]
            out.shape.extend(y.shape)
            response.raw_output_contents.append(y.tobytes())
            return response

        @api.post("/v2/models/{name}/infer")
        async def infer(self, name: str, request: Request) -> dict:
            if name not in self.models:
                raise HTTPException(404, "no such model")
            return encode(name, self.models[name](decode(await request.json())))

    return Bench.bind(specs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args()

    import ray
    from ray import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port},
                grpc_options={"port": args.grpc_port, "grpc_servicer_functions": [
                    "tritonclient.grpc.service_pb2_grpc."
                    "add_GRPCInferenceServiceServicer_to_server"]})
    serve.run(build_app(parse_specs(args.model)), name="bench", route_prefix="/")
    try:
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
