"""Calls from a transformer to its predictor: Open Inference Protocol REST (V2 with the binary
tensor extension), KServe V1 REST, or OIP gRPC — blocking, from the server's predict threads.

Concurrency design: predict runs in the model server's bounded thread pool, so each thread
keeps its own keep-alive HTTP connection per predictor address (``threading.local``); gRPC
channels are thread-safe and shared. Addresses come from :class:`Addresses`: fixed ones
(``HOST:PORT``, a Kubernetes Service) or a JSON file the local control plane rewrites as the
predictor's replicas come and go (re-read when its modification time changes, checked at
most once a second). Calls rotate over the addresses; an address that refuses the connection
is skipped for the next one once, so a replica that just died costs no error.

Every failure becomes a protocol error a client understands, never a traceback: no address or
none reachable → ModelNotReady (503 / UNAVAILABLE), no answer in time → DeadlineExceeded
(504 / DEADLINE_EXCEEDED), the predictor's own refusal → the same kind with its message,
an answer that cannot be decoded → ModelFailed.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serving.protocol import proto
from serving.protocol.datatypes import array_to_raw, datatype_of, dtype_for, raw_to_array
from serving.protocol.errors import (
    STATUS,
    DeadlineExceeded,
    ErrorKind,
    InvalidInput,
    ModelFailed,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    TurnoutError,
    Unauthenticated,
)

PredictorProtocol = Literal["v1", "v2", "grpc-v2"]
PROTOCOLS: tuple[str, ...] = ("v1", "v2", "grpc-v2")
Tensors = dict[str, np.ndarray]
log = logging.getLogger("turnout.transformer")
_ERRORS_BY_STATUS = {http_status: kind for kind, (http_status, _) in STATUS.items()}
_ERRORS_BY_CODE = {code: kind for kind, (_, code) in reversed(list(STATUS.items()))}
# The predictor's refusals the client is told as they are (its request was the transformer's
# preprocess output, so a 400 there is the client's input; a 401/403 refuses the client's own
# credential, passed on); the rest (an unknown model name, a failure) are the transformer's
# deployment failing: 500.
_PASSED_ON: dict[ErrorKind, type[TurnoutError]] = {
    ErrorKind.INVALID: InvalidInput, ErrorKind.NOT_READY: ModelNotReady,
    ErrorKind.OVERLOADED: Overloaded, ErrorKind.TOO_LARGE: PayloadTooLarge,
    ErrorKind.TIMEOUT: DeadlineExceeded, ErrorKind.UNAUTHENTICATED: Unauthenticated,
    ErrorKind.FORBIDDEN: PermissionDenied,
}


@dataclass(frozen=True)
class PredictorTls:
    """TLS to the predictor: the CA that signed its certificate, and this side's certificate
    and key when the predictor requires client certificates (mTLS)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


class Addresses:
    """The predictor's ``HOST:PORT`` addresses: fixed, or read from a JSON file
    ``{"http": ["http://HOST:PORT", ...], "grpc": ["HOST:PORT", ...]}``. ``tls``: whether the
    predictor is called over TLS (``https://`` / ``grpcs://`` addresses need it)."""

    def __init__(self, *, fixed: list[str] | None = None, file: Path | None = None,
                 grpc: bool = False, tls: bool = False) -> None:
        self._tls = tls
        self._fixed = [_host_port(a, tls) for a in fixed or []]
        self._file, self._grpc = file, grpc
        self._mtime = -1.0
        self._checked = 0.0
        self._listed: list[str] = []
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def current(self) -> list[str]:
        if self._file is None:
            return self._fixed
        now = time.monotonic()
        if now - self._checked >= 1.0 or not self._listed:
            with self._lock:
                self._checked = now
                self._reload()
        return self._listed

    def _reload(self) -> None:
        try:
            assert self._file is not None
            mtime = os.stat(self._file).st_mtime
            if mtime == self._mtime:
                return
            doc = json.loads(self._file.read_text())
            self._listed = [_host_port(a, self._tls)
                            for a in doc.get("grpc" if self._grpc else "http", [])]
            self._mtime = mtime
        except (OSError, ValueError, AttributeError) as exc:
            self._listed = []  # no file yet, or one being replaced: no predictor now
            if isinstance(exc, ValueError):
                log.warning("predictor addresses in %s: %s", self._file, exc)

    def rotation(self) -> list[str]:
        """The addresses, starting from the next in turn."""
        listed = self.current()
        if not listed:
            return []
        start = next(self._turn) % len(listed)
        return listed[start:] + listed[:start]


def _host_port(address: str, tls: bool = False) -> str:
    """``http://h:p/``, ``h:p`` -> ``h:p`` (a bare host gets port 80). An ``https://`` or
    ``grpcs://`` address without TLS configured (a CA to verify it) is refused, never
    downgraded to plain text."""
    address = address.strip()
    if address.startswith(("https://", "grpcs://")) and not tls:
        raise ValueError(f"predictor address {address!r} is TLS: give the CA that signed its "
                         "certificate (--predictor-ca)")
    for scheme in ("http://", "https://", "grpcs://"):
        address = address.removeprefix(scheme)
    address = address.rstrip("/")
    return address if ":" in address.rsplit("]", 1)[-1] else f"{address}:80"


class PredictorClient:
    """One predictor, one protocol: :meth:`infer` sends named tensors, returns named tensors."""

    def __init__(self, *, addresses: Addresses, protocol: PredictorProtocol, model: str,
                 timeout: float, tls: PredictorTls | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"predictor protocol {protocol!r} is not one of {PROTOCOLS}")
        self.addresses, self.protocol, self.model, self.timeout = (addresses, protocol, model,
                                                                   timeout)
        self.tls = tls
        self._context = tls.context() if tls is not None else None  # read once, at load
        self._local = threading.local()
        self._channels: dict[str, Any] = {}
        self._channels_lock = threading.Lock()

    def infer(self, tensors: Mapping[str, np.ndarray],
              credentials: Mapping[str, str] | None = None) -> Tensors:
        """One call to the predictor; ``credentials``: headers (metadata over gRPC) sent with
        it, the client's own credential passed on."""
        rotation = self.addresses.rotation()
        if not rotation:
            raise ModelNotReady(f"predictor of '{self.model}' has no ready replica")
        call = self._grpc if self.protocol == "grpc-v2" else self._rest
        for attempt, address in enumerate(rotation[:2]):
            try:
                return call(address, tensors, credentials or {})
            except _Unreachable as exc:
                # the address and the reason stay in the log, as the router's do
                log.warning("predictor of %s at %s is unreachable: %s", self.model, address, exc)
                if attempt == min(1, len(rotation) - 1):
                    raise ModelNotReady(f"predictor of '{self.model}' is unreachable") from None
        raise AssertionError("unreachable")

    # -- REST --------------------------------------------------------------------------------
    def _rest(self, address: str, tensors: Mapping[str, np.ndarray],
              credentials: Mapping[str, str]) -> Tensors:
        if self.protocol == "v1":
            path = f"/v1/models/{self.model}:predict"
            body, headers = _v1_request(tensors), {"content-type": "application/json"}
        else:
            path = f"/v2/models/{self.model}/infer"
            body, header_length = v2_request(tensors)
            headers = {"content-type": "application/octet-stream",
                       "inference-header-content-length": str(header_length)}
        status, reply_headers, reply = self._post(address, path, body,
                                                  {**headers, **credentials})
        if status != 200:
            raise _refusal(status, reply)
        try:
            if self.protocol == "v1":
                return _v1_response(reply)
            return v2_response(reply, reply_headers.get("inference-header-content-length"))
        except (ValueError, KeyError, TypeError, TurnoutError) as exc:
            raise ModelFailed(f"predictor of '{self.model}' answered what is not a "
                              f"{self.protocol} response: {exc}") from None

    def _post(self, address: str, path: str, body: bytes,
              headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connections: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "connections", {})
        for fresh in (False, True):
            conn = connections.get(address)
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                host, _, port = address.rpartition(":")
                conn = connections[address] = http.client.HTTPSConnection(
                    host.strip("[]"), int(port), timeout=self.timeout, context=self._context) \
                    if self._context is not None else http.client.HTTPConnection(
                        host.strip("[]"), int(port), timeout=self.timeout)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                return (response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read())
            except TimeoutError:
                conn.close()
                connections.pop(address, None)
                raise DeadlineExceeded(f"predictor of '{self.model}' did not answer within "
                                       f"{self.timeout:g}s") from None
            except ConnectionRefusedError as exc:
                connections.pop(address, None)
                raise _Unreachable(str(exc)) from None
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                connections.pop(address, None)
                if fresh:  # a kept-alive connection the predictor closed: one retry, new one
                    raise _Unreachable(str(exc) or type(exc).__name__) from None
        raise AssertionError("unreachable")

    # -- gRPC --------------------------------------------------------------------------------
    def _grpc(self, address: str, tensors: Mapping[str, np.ndarray],
              credentials: Mapping[str, str]) -> Tensors:
        import grpc

        call = self._stub(address)
        request = proto.ModelInferRequest(model_name=self.model)
        for name, array in tensors.items():
            request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            request.raw_input_contents.append(array_to_raw(array))
        try:
            reply = call(request, timeout=self.timeout,
                         metadata=tuple(credentials.items()) or None)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else ""
            if name == "UNAVAILABLE":
                raise _Unreachable(details or name) from None
            if name == "DEADLINE_EXCEEDED":
                raise DeadlineExceeded(f"predictor of '{self.model}' did not answer within "
                                       f"{self.timeout:g}s") from None
            raise _error(_ERRORS_BY_CODE.get(name), f"predictor: {details}") from None
        try:
            return _grpc_response(reply)
        except (ValueError, TurnoutError) as exc:
            raise ModelFailed(f"predictor of '{self.model}' answered an undecodable "
                              f"ModelInferResponse: {exc}") from None

    def _stub(self, address: str) -> Any:
        with self._channels_lock:
            call = self._channels.get(address)
            if call is None:
                import grpc

                options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                           ("grpc.max_send_message_length", 64 * 1024 * 1024)]
                channel = grpc.secure_channel(address, self.tls.grpc_credentials(), options) \
                    if self.tls is not None else grpc.insecure_channel(address, options)
                call = self._channels[address] = channel.unary_unary(
                    f"/{proto.SERVICE_NAME}/ModelInfer",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=proto.ModelInferResponse.FromString)
            return call

    def close(self) -> None:
        for conn in getattr(self._local, "connections", {}).values():
            conn.close()


class _Unreachable(Exception):
    """The address refused or dropped the connection: try the next, else UNAVAILABLE."""


def _error(kind: ErrorKind | None, message: str) -> TurnoutError:
    return _PASSED_ON.get(kind, ModelFailed)(message) if kind is not None else ModelFailed(message)


def _refusal(status: int, body: bytes) -> TurnoutError:
    """The predictor's error answer as the same kind of error, with its message."""
    try:
        message = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    kind = _ERRORS_BY_STATUS.get(status)
    return _error(kind, f"predictor answered {status}" + (f": {message}" if message else ""))


def v2_request(tensors: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    inputs, chunks = [], []
    for name, array in tensors.items():
        raw = array_to_raw(array)
        inputs.append({"name": name, "datatype": datatype_of(array), "shape": list(array.shape),
                       "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = json.dumps({"inputs": inputs,
                         "parameters": {"binary_data_output": True}}).encode()
    return b"".join([header, *chunks]), len(header)


def v2_response(body: bytes, header_length: str | None) -> Tensors:
    size = int(header_length) if header_length else len(body)
    doc = json.loads(body[:size])
    view, offset, out = memoryview(body), size, {}
    for item in doc["outputs"]:
        shape = tuple(int(d) for d in item["shape"])
        binary = (item.get("parameters") or {}).get("binary_data_size")
        if binary is not None:
            out[item["name"]] = raw_to_array(view[offset:offset + int(binary)], item["datatype"],
                                             shape, name=item["name"])
            offset += int(binary)
        elif item["datatype"] == "BYTES":
            out[item["name"]] = np.array(item["data"], dtype=object).reshape(shape)
        else:
            out[item["name"]] = np.asarray(item["data"], dtype=dtype_for(item["datatype"])
                                           ).reshape(shape)
    return out


def _v1_request(tensors: Mapping[str, np.ndarray]) -> bytes:
    if len(tensors) != 1:
        raise ValueError("a V1 predictor takes one input (instances); preprocess returned "
                         f"{sorted(tensors)}")
    (array,) = tensors.values()
    rows = array.astype(str).tolist() if array.dtype == object else array.tolist()
    return json.dumps({"instances": rows}).encode()


def _v1_response(body: bytes) -> Tensors:
    predictions = json.loads(body)["predictions"]
    array = np.asarray(predictions)
    if array.dtype.kind == "U":
        array = array.astype(object)
    return {"predictions": array}


def _grpc_response(reply: Any) -> Tensors:
    out = {}
    raws = list(reply.raw_output_contents)
    for index, tensor in enumerate(reply.outputs):
        shape = tuple(tensor.shape)
        if index < len(raws):
            out[tensor.name] = raw_to_array(raws[index], tensor.datatype, shape,
                                            name=tensor.name)
        else:
            from serving.protocol.codec_grpc import TYPED_FIELD

            values = list(getattr(tensor.contents, TYPED_FIELD[tensor.datatype]))
            if tensor.datatype == "BYTES":
                array = np.empty(len(values), dtype=object)
                array[:] = values
            else:
                array = np.asarray(values, dtype=dtype_for(tensor.datatype))
            if array.size != math.prod(shape):
                raise ValueError(f"output '{tensor.name}' holds {array.size} values for "
                                 f"shape {list(shape)}")
            out[tensor.name] = array.reshape(shape)
    return out

