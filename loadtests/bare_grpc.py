"""Bare gRPC reference server for the ONNX model: a minimal synchronous grpcio server.

Only ``inference.GRPCInferenceService/ModelInfer`` (plus ServerReady and ModelReady, so a
readiness check can reach it), raw or typed FP32 contents in, raw contents out. The synchronous
server is used because, for a microsecond model, it outpaces ``grpc.aio`` in Python. It marks the
ceiling against which Turnout's gRPC edge is judged. The messages come from Turnout's own
descriptor (``serving.protocol.proto``): the wire format is the protocol's, nothing else is shared.

Eight handler threads, as Turnout's threaded engine uses by default: on this machine (one core
for the server, concurrency 32) eight measured fastest for this server too (about 9,100
requests/s against 8,100 with four and 7,900 with twelve), so the reference is at its best.

    python -m loadtests.bare_grpc MODEL.onnx --port 8091 [--name mlp] [--threads 8]
"""

from __future__ import annotations

import argparse
from concurrent import futures

import numpy as np


def make_server(model_path: str, name: str, port: int, host: str, threads: int):
    import grpc
    import onnxruntime as ort

    from serving.protocol import proto

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    Response = proto.ModelInferResponse

    def model_infer(request, context):
        if request.model_name != name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name}")
        tensor = request.inputs[0]
        if request.raw_input_contents:
            x = np.frombuffer(request.raw_input_contents[0], np.float32)
        else:
            x = np.asarray(tensor.contents.fp32_contents, np.float32)
        try:
            y = session.run([output_name], {input_name: x.reshape(tuple(tensor.shape))})[0]
        except Exception as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
        response = Response(model_name=name, id=request.id)
        out = response.outputs.add()
        out.name, out.datatype = output_name, "FP32"
        out.shape.extend(y.shape)
        response.raw_output_contents.append(y.tobytes())
        return response

    def server_ready(request, context):
        return proto.ServerReadyResponse(ready=True)

    def model_ready(request, context):
        return proto.ModelReadyResponse(ready=request.name == name)

    def unary(fn, req, resp):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)

    handler = grpc.method_handlers_generic_handler(proto.SERVICE_NAME, {
        "ModelInfer": unary(model_infer, proto.ModelInferRequest, Response),
        "ServerReady": unary(server_ready, proto.ServerReadyRequest, proto.ServerReadyResponse),
        "ModelReady": unary(model_ready, proto.ModelReadyRequest, proto.ModelReadyResponse),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bare_grpc")
    parser.add_argument("model", help="path to the .onnx file")
    parser.add_argument("--name", default="mlp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    server = make_server(args.model, args.name, args.port, args.host, args.threads)
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
