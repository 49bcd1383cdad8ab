"""Bare REST reference server for the ONNX model: raw ASGI on uvicorn (uvloop + httptools).

It decodes an OIP V2 request (JSON, or the binary tensor extension), runs the session, encodes
the answer with orjson, and does nothing else: no routing framework, no validation beyond what
decoding needs, no metrics, no logging per request. It marks the ceiling the Python stack allows,
against which Turnout's REST edge is judged.

    python -m loadtests.bare_rest MODEL.onnx --port 8090 [--name mlp]
"""

from __future__ import annotations

import argparse

import numpy as np
import orjson

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
JSON_HEADERS = [(b"content-type", b"application/json")]


def make_app(model_path: str, name: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    infer_path = f"/v2/models/{name}/infer"
    ready_paths = {"/v2/health/ready", "/v2/health/live", f"/v2/models/{name}/ready"}

    async def reply(send, status: int, body: bytes, headers=JSON_HEADERS) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def infer(body: bytes, header_length: int | None) -> tuple[bytes, list]:
        if header_length is None:
            request = orjson.loads(body)
            tensor = request["inputs"][0]
            x = np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]])
        else:
            request = orjson.loads(body[:header_length])
            tensor = request["inputs"][0]
            size = tensor["parameters"]["binary_data_size"]
            x = np.frombuffer(body, DTYPES[tensor["datatype"]], count=size // 4 if tensor[
                "datatype"] == "FP32" else -1, offset=header_length)
        x = x.reshape(tensor["shape"]).astype(np.float32, copy=False)
        y = session.run([output_name], {input_name: x})[0]
        binary = (request.get("parameters") or {}).get("binary_data_output", False)
        out = {"name": output_name, "datatype": "FP32", "shape": list(y.shape)}
        if not binary:
            out["data"] = y.ravel()
            return orjson.dumps({"model_name": name, "outputs": [out]},
                                option=orjson.OPT_SERIALIZE_NUMPY), JSON_HEADERS
        raw = y.tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps({"model_name": name, "outputs": [out]})
        return header + raw, [(b"content-type", b"application/octet-stream"),
                              (b"inference-header-content-length", str(len(header)).encode())]

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == infer_path:
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
            header_length = None
            for key, value in scope["headers"]:
                if key == b"inference-header-content-length":
                    header_length = int(value)
            try:
                payload, headers = infer(body, header_length)
            except Exception as exc:  # a reference server answers 400 and nothing more
                await reply(send, 400, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                return
            await reply(send, 200, payload, headers)
        elif method == "GET" and path in ready_paths:
            await reply(send, 200, b'{"ready":true}')
        else:
            await reply(send, 404, b'{"error":"not found"}')

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bare_rest")
    parser.add_argument("model", help="path to the .onnx file")
    parser.add_argument("--name", default="mlp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(make_app(args.model, args.name), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="off", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
