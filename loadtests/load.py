"""Request bodies, correctness probes with real clients, and h2load runs.

h2load drives every protocol: REST over HTTP/1.1 (``--h1``), gRPC over h2c with a prebuilt
length-prefixed ModelInferRequest and the gRPC headers. h2load only sees HTTP statuses, and a
failed gRPC call is still HTTP 200 with ``grpc-status`` in its trailers, so gRPC errors are caught
twice: a probe through a real grpcio client before each run (the run is skipped when it fails),
and after the run from the DATA bytes h2load counted: a successful answer has exactly the probe's
length and an error has no message, so the bytes tell how many HTTP 200s were real answers.
Errors on REST are the non-2xx statuses and failed requests h2load reports.

With ``tls_ca`` (a probe) and ``scheme="https"`` (an h2load run) the same traffic goes over TLS:
h2load negotiates http/1.1 or h2 by ALPN (it does not verify certificates; the probe does).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from loadtests.models import INPUT_NAME, MODELS, rows


@dataclass(frozen=True)
class Payload:
    protocol: str  # rest-json | rest-binary | grpc
    model: str
    batch: int
    path: str  # URL path
    body_file: Path
    headers: tuple[str, ...]  # "name: value", for h2load -H and the probes


def build_payloads(out_dir: Path, model: str, batch: int) -> dict[str, Payload]:
    from serving.protocol import proto

    spec = MODELS[model]
    x = rows(model, batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{model}-b{batch}"
    infer_path = f"/v2/models/{model}/infer"
    tensor = {"name": INPUT_NAME, "shape": list(x.shape), "datatype": spec.datatype}

    json_body = orjson.dumps({"inputs": [{**tensor, "data": x.ravel()}]},
                             option=orjson.OPT_SERIALIZE_NUMPY)
    raw = x.tobytes()
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}})
    request = proto.ModelInferRequest(model_name=model)
    t = request.inputs.add()
    t.name, t.datatype = INPUT_NAME, spec.datatype
    t.shape.extend(x.shape)
    request.raw_input_contents.append(raw)
    message = request.SerializeToString()
    grpc_body = struct.pack(">BI", 0, len(message)) + message

    files = {"rest-json": (json_body, ("content-type: application/json",)),
             "rest-binary": (header + raw, ("content-type: application/octet-stream",
                                            f"inference-header-content-length: {len(header)}")),
             "grpc": (grpc_body, ("content-type: application/grpc", "te: trailers"))}
    out = {}
    for protocol, (body, headers) in files.items():
        path = Path(f"{stem}.{protocol}")
        path.write_bytes(body)
        url_path = f"/{proto.SERVICE_NAME}/ModelInfer" if protocol == "grpc" else infer_path
        out[protocol] = Payload(protocol, model, batch, url_path, path, headers)
    return out


# --- probes ------------------------------------------------------------------------------------------

class ProbeError(Exception):
    pass


class ProbeMismatch(ProbeError):
    """The server answered, but not what the model itself says: a failure, never "unsupported"."""


DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "BOOL": np.bool_, "FP16": np.float16, "UINT8": np.uint8, "INT8": np.int8}


def probe(payload: Payload, port: int, tls_ca: Path | None = None,
          expected: np.ndarray | None = None) -> int:
    """Send the payload once through a real client and check the answer; returns its body size.
    With ``tls_ca`` over TLS, verifying the server against that CA bundle. With ``expected``
    (the model's own output for these rows) the first output's values must equal it (floats
    within 1e-4 relative): a server is only measured when it answers right."""
    body = payload.body_file.read_bytes()
    if payload.protocol == "grpc":
        size, values = _probe_grpc(payload, port, body, tls_ca)
    else:
        size, values = _probe_http(payload, port, body, tls_ca)
    if expected is not None:
        _check_values(values, expected)
    return size


def _check_values(values: np.ndarray | None, expected: np.ndarray) -> None:
    """A classifier's first output may be its labels (Turnout's and MLServer's ``predict``)
    where ``expected`` holds its probabilities (the booster's own output, what KServe's
    xgbserver and the anchors' apps answer): labels are then checked against those
    probabilities' classes."""
    want = np.asarray(expected)
    if values is not None and values.dtype.kind in "iub" and want.dtype.kind == "f":
        want = (want > 0.5).astype(np.int64) if want.ndim == 1 else want.argmax(axis=-1)
    want = want.ravel()
    if values is None or values.size != want.size:
        raise ProbeMismatch(f"answer has {None if values is None else values.size} values, the "
                            f"model gives {want.size}")
    if want.dtype.kind == "f" or values.dtype.kind == "f":
        ok = np.allclose(values.astype(np.float64), want.astype(np.float64), rtol=1e-4, atol=1e-6)
    else:
        ok = np.array_equal(values, want)
    if not ok:
        raise ProbeMismatch(f"answer {values[:6].tolist()} differs from the model's "
                            f"{want[:6].tolist()}")


def _probe_http(payload: Payload, port: int, body: bytes,
                tls_ca: Path | None) -> tuple[int, np.ndarray | None]:
    headers = dict(h.split(": ", 1) for h in payload.headers)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30) if tls_ca is None \
            else http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                             context=ssl.create_default_context(cafile=tls_ca))
        conn.request("POST", payload.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        header_length = response.getheader("inference-header-content-length")
        conn.close()
    except OSError as exc:
        raise ProbeError(f"{type(exc).__name__}: {exc}") from exc
    if response.status != 200:
        raise ProbeError(f"HTTP {response.status}: {data[:300]!r}")
    try:
        doc = json.loads(data[:int(header_length)] if header_length else data)
        outputs = doc["outputs"]
    except (ValueError, KeyError) as exc:
        raise ProbeError(f"unreadable answer: {data[:300]!r}") from exc
    if payload.protocol == "rest-binary" and not header_length:
        raise ProbeError("binary request answered without the binary extension "
                         "(no inference-header-content-length)")
    _check_outputs(payload, [o["shape"] for o in outputs])
    first = outputs[0]
    if "data" in first:
        values = np.asarray(first["data"], dtype=DTYPES.get(first.get("datatype"), None))
    else:  # binary extension: the first output's bytes follow the JSON header
        start = int(header_length or 0)
        size = int((first.get("parameters") or {}).get("binary_data_size", 0))
        values = np.frombuffer(data[start:start + size], dtype=DTYPES.get(first["datatype"]))
    return len(data), values


def _probe_grpc(payload: Payload, port: int, body: bytes,
                tls_ca: Path | None = None) -> tuple[int, np.ndarray | None]:
    import grpc

    from serving.protocol import proto

    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) if tls_ca is None else grpc.secure_channel(
                target, grpc.ssl_channel_credentials(tls_ca.read_bytes())) as channel:
            call = channel.unary_unary(payload.path)  # bytes in, bytes out
            metadata = [tuple(h.split(": ", 1)) for h in payload.headers
                        if h.split(": ", 1)[0] not in ("content-type", "te")]
            answer = call(body[5:], timeout=30, metadata=metadata or None)
    except grpc.RpcError as exc:
        raise ProbeError(f"gRPC {exc.code().name}: {exc.details()}") from exc
    response = proto.ModelInferResponse.FromString(answer)
    _check_outputs(payload, [list(o.shape) for o in response.outputs])
    first = response.outputs[0]
    dtype = DTYPES.get(first.datatype)
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], dtype=dtype)
    else:
        contents = first.contents
        field_name = {np.float32: "fp32_contents", np.float64: "fp64_contents",
                      np.int64: "int64_contents", np.int32: "int_contents",
                      np.bool_: "bool_contents"}.get(dtype, "fp32_contents")
        values = np.asarray(list(getattr(contents, field_name)), dtype=dtype)
    return len(answer) + 5, values


def _check_outputs(payload: Payload, shapes: list[list[int]]) -> None:
    if not shapes:
        raise ProbeError("answer has no outputs")
    if not shapes[0] or shapes[0][0] != payload.batch:
        raise ProbeError(f"first output has shape {shapes[0]}, expected {payload.batch} rows")


# --- h2load ----------------------------------------------------------------------------------------

def h2load_path() -> str | None:
    return shutil.which("h2load")


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: .*\((\d+)\) total, .*\((\d+)\) headers .*\((\d+)\) data")


def run_h2load(payload: Payload, port: int, concurrency: int, duration: float, warmup: float,
               cpu: int | None, expected_body: int | None = None, scheme: str = "http") -> dict:
    """One timed h2load run; returns throughput, latency percentiles and error counts.

    The warm-up is a separate h2load run whose figures are dropped: h2load's own
    ``--warm-up-time`` leaves warm-up responses in its byte counts, which the gRPC error count
    below relies on.
    """
    grpc = payload.protocol == "grpc"
    base = (["taskset", "-c", str(cpu)] if cpu is not None else []) + [
        h2load_path() or "h2load", "-c", str(concurrency), "-t", "1", "-m", "1",
        "-d", str(payload.body_file)]
    if not grpc:
        base.append("--h1")
    for h in payload.headers:
        base += ["-H", h]
    url = f"{scheme}://127.0.0.1:{port}{payload.path}"
    if warmup > 0:
        try:
            subprocess.run([*base, "-D", _ms(warmup), url], capture_output=True,
                           timeout=warmup + 60)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "h2load warm-up did not finish in time"}
    with tempfile.TemporaryDirectory(prefix="turnout-h2load-") as tmp:
        log = Path(tmp) / "requests.log"
        try:
            done = subprocess.run([*base, "-D", _ms(duration), f"--log-file={log}", url],
                                  capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "h2load did not finish in time"}
        out = done.stdout
        latencies = _read_log(log)
    m_fin, m_req = _FINISHED.search(out), _REQUESTS.search(out)
    if done.returncode != 0 or not m_fin or not m_req:
        return {"ok": False, "error": f"h2load rc={done.returncode}: "
                                      f"{(done.stderr or out)[-500:].strip()}"}
    total, _started, completed, succeeded, failed, errored, timeouts = map(int, m_req.groups())
    m_status, m_traffic = _STATUS.search(out), _TRAFFIC.search(out)
    status = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m_status.groups()), strict=True)) \
        if m_status else {}
    data_bytes = int(m_traffic.group(3)) if m_traffic else None
    errors = total - succeeded
    grpc_errors = 0
    if grpc and expected_body and data_bytes is not None:
        # Every successful ModelInfer answer has exactly the probe's length and an error has no
        # message at all, so the DATA bytes tell how many of the HTTP 200s were real answers.
        grpc_errors = max(0, succeeded - data_bytes // expected_body)
        errors += grpc_errors
    h2load_rps = float(m_fin.group(3))  # completed requests over the measured time
    good = max(0, completed - errors)
    rps = h2load_rps * good / completed if completed else 0.0
    result = {
        "ok": True, "requests": total, "completed": completed, "succeeded": succeeded,
        "failed": failed, "errored": errored, "timeouts": timeouts, "status": status,
        "grpc_errors": grpc_errors, "errors": errors, "data_bytes": data_bytes,
        "rps": round(rps, 1), "h2load_rps": h2load_rps, "rows_per_s": round(rps * payload.batch, 1),
    }
    result.update(_percentiles(latencies))
    return result


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _read_log(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except OSError:
        return np.empty(0)
    values = [int(line.split("\t")[2]) for line in text.splitlines() if line.count("\t") >= 2]
    return np.asarray(values, dtype=np.float64) / 1000.0  # ms


def _percentiles(ms: np.ndarray) -> dict:
    if ms.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(ms.mean()), 3),
            "max_ms": round(float(ms.max()), 3)}
