"""KServe's transformer: a custom Python class in front of a predictor, in its own server.

The class is a :class:`runtimes.python.Model` (the same contract as a custom model): it
declares the inputs clients send (raw text, image bytes...) and the outputs they get back, and
overrides ``preprocess`` (decoded inputs -> the tensors the predictor takes) and
``postprocess`` (the predictor's output tensors -> the outputs). ``predict`` is the call to
the predictor, made by :class:`TransformerRuntime` over REST V2, REST V1 or gRPC
(:mod:`runtimes.transformer.client`). The transformer is served by ``turnout serve``, so
every client protocol (V1, V2 JSON and binary, gRPC), validation against the declared
inputs, metrics, admission and error handling come from the model server unchanged::

    turnout serve ./transformer --model-class transformer:TextToTensor --name iris \\
        --transformer-for 127.0.0.1:9000 --predictor-protocol grpc-v2

KServe's hooks take ``(payload, headers)``; a hook declaring a second parameter is given the
request's headers (REST) or metadata (gRPC) there, names in lower case. The runtime declares
``wants_headers``, so the model server hands them over for transformers only. The client's
credential (``authorization``, ``x-api-key``: what the predictor's authentication accepts) is
passed on to the predictor, and a predictor refusing it (401 / 403) is answered to the client
as such.

Errors: an exception in ``preprocess`` is the client's input failing, answered 400 /
INVALID_ARGUMENT with its message; the predictor unreachable or without a ready replica is 503
/ UNAVAILABLE at once, one that does not answer in time 504; an exception in ``postprocess``
is a server failure (500, the traceback in the log only).
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtimes.python import PythonRuntime
from runtimes.transformer.client import PROTOCOLS, Addresses, PredictorClient, PredictorTls
from serving.protocol.errors import InvalidInput, ModelLoadError, TurnoutError
from serving.protocol.types import TensorSpec
from serving.runtime.content_types import encode_tensor, from_frame, to_frame
from serving.runtime.settings import ModelSettings

__all__ = ["RUNTIME", "TransformerRuntime", "as_tensors", "predictor_parameters"]

# How the server names this runtime (an import path: it needs no entry point installed).
RUNTIME = "runtimes.transformer:TransformerRuntime"
DEFAULT_TIMEOUT = 60.0
# Requests that may wait for a predict thread (model-settings.yaml's max_queue overrides it).
# A transformer's predict mostly waits on the predictor, so its latency cannot be measured at
# load (the predictor may not be up) and the server's default of 8 would refuse bursts with
# 429 that the predictor serves in milliseconds; still bounded, so a stalled predictor cannot
# pile up unbounded work.
DEFAULT_QUEUE = 256
# The client's credential, passed on to the predictor as it came (serving/transport/auth.py
# accepts these two: Bearer API keys or JWTs, and x-api-key).
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def predictor_parameters(*, host: str, protocol: str = "v2", model: str | None = None,
                         timeout: float | None = None, ca: Path | None = None,
                         cert: Path | None = None, key: Path | None = None) -> dict[str, Any]:
    """The model parameters that point a transformer at its predictor. ``host``: ``HOST:PORT``
    (several, comma-separated, are taken in turn) or ``@FILE``, a JSON file of the
    predictor's ready addresses that the local control plane keeps current. ``ca``: call it
    over TLS, verifying its certificate against this CA (``cert``/``key``: mTLS)."""
    params: dict[str, Any] = {"predictor_protocol": protocol}
    if host.startswith("@"):
        params["predictor_hosts_file"] = host[1:]
    else:
        params["predictor_host"] = host
    if model:
        params["predictor_model"] = model
    if timeout is not None:
        params["predictor_timeout"] = timeout
    for name, path in (("predictor_ca", ca), ("predictor_cert", cert), ("predictor_key", key)):
        if path is not None:
            params[name] = str(path)
    return params


class TransformerRuntime(PythonRuntime):
    """Runs a :class:`~runtimes.python.Model` subclass whose predict is the predictor."""

    name = "transformer"
    platform = "transformer"
    execution = "thread"  # predict waits on the network
    artifact_suffixes: ClassVar[tuple[str, ...]] = ()
    wants_headers: ClassVar[bool] = True  # the data plane hands over the request's headers

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.client: PredictorClient | None = None
        self._with_headers: dict[str, bool] = {}
        self._request = threading.local()  # the headers of the request this thread runs

    def predict_with_headers(self, inputs: dict[str, np.ndarray], names: Any,
                             headers: dict[str, str]) -> dict[str, np.ndarray]:
        """predict, with the request's headers for the hooks and the predictor call."""
        self._request.headers = headers
        try:
            return self.predict(inputs, names)
        finally:
            self._request.headers = None

    def load(self) -> None:
        self.client = self._client()
        if self.settings.max_queue is None:
            self.settings.max_queue = DEFAULT_QUEUE
        super().load()
        assert self.model is not None
        self._with_headers = {hook: _takes_headers(getattr(self.model, hook))
                              for hook in ("preprocess", "postprocess")}

    def _client(self) -> PredictorClient:
        params = self.settings.parameters
        protocol = str(params.get("predictor_protocol", "v2"))
        if protocol not in PROTOCOLS:
            raise ModelLoadError(f"predictor_protocol {protocol!r} is not one of "
                                 f"{', '.join(PROTOCOLS)}")
        host, hosts_file = params.get("predictor_host"), params.get("predictor_hosts_file")
        if not host and not hosts_file:
            raise ModelLoadError("a transformer needs its predictor: predictor_host HOST:PORT "
                                 "(turnout serve --transformer-for)")
        try:
            timeout = float(params.get("predictor_timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            raise ModelLoadError("predictor_timeout must be a number of seconds") from None
        tls = _tls(params)
        try:
            addresses = Addresses(fixed=str(host).split(",") if host else None,
                                  file=Path(hosts_file) if hosts_file else None,
                                  grpc=protocol == "grpc-v2", tls=tls is not None)
            return PredictorClient(addresses=addresses, protocol=protocol,  # type: ignore[arg-type]
                                   model=str(params.get("predictor_model") or self.settings.name),
                                   timeout=timeout, tls=tls)
        except (ValueError, OSError) as exc:  # an https address without a CA, unreadable files
            raise ModelLoadError(f"transformer predictor: {exc}") from None

    def _probe_outputs(self) -> list[TensorSpec]:
        # A probe would send a request to the predictor while loading (it may not be up).
        raise ModelLoadError(f"transformer {self.settings.model_class} must declare its "
                             "outputs (the class attribute 'outputs' or model-settings.yaml)")

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model, client = self.model, self.client
        assert model is not None and client is not None, "predict called before load"
        data: Any = to_frame(inputs, [s.name for s in self.inputs]) if self._frame else inputs
        headers: dict[str, str] = getattr(self._request, "headers", None) or {}
        try:
            data = self._hook("preprocess", data, headers)
            tensors = as_tensors(data)
        except TurnoutError:
            raise
        except Exception as exc:  # the client's input did not fit: say why, no traceback
            raise InvalidInput(f"preprocess refused the input: {type(exc).__name__}: "
                               f"{exc}") from None
        result = client.infer(tensors, credentials={
            name: headers[name] for name in CREDENTIAL_HEADERS if name in headers})
        return self._as_outputs(self._hook("postprocess", result, headers))

    def _hook(self, name: str, data: Any, headers: dict[str, str]) -> Any:
        assert self.model is not None
        hook = getattr(self.model, name)
        # a copy: a hook changing it must not change what the predictor is sent
        return self._call(hook, data, dict(headers)) if self._with_headers.get(name) else \
            self._call(hook, data)

    def unload(self) -> None:
        try:
            super().unload()
        finally:
            if self.client is not None:
                self.client.close()


def _tls(params: dict[str, Any]) -> PredictorTls | None:
    """TLS to the predictor from ``predictor_ca`` (and ``predictor_cert``/``predictor_key``)."""
    ca, cert, key = (params.get(k) for k in ("predictor_ca", "predictor_cert", "predictor_key"))
    if not ca:
        if cert or key:
            raise ModelLoadError("predictor_cert/predictor_key need predictor_ca (TLS)")
        return None
    return PredictorTls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)


def _takes_headers(hook: Any) -> bool:
    """Whether a hook has KServe's ``(payload, headers)`` signature."""
    try:
        parameters = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def as_tensors(data: Any) -> dict[str, np.ndarray]:
    """preprocess's result as named arrays: a dict, a DataFrame, or one array (``input-0``,
    which a single-input predictor takes whatever its input's name)."""
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        named = from_frame(data)
    elif isinstance(data, dict):
        named = data
    else:
        named = {"input-0": data}
    if not named:
        raise ValueError("preprocess returned no tensors")
    tensors = {str(k): encode_tensor(str(k), v, None) for k, v in named.items()}
    for name, array in tensors.items():
        if array.ndim == 0:
            raise ValueError(f"preprocess returned a scalar for '{name}'; tensors have a "
                             "batch dimension")
    return tensors
