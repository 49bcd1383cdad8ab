"""The REST edge: inference on the raw-ASGI hot path (``infer.py``), the other routes on
Starlette. Every endpoint only translates and delegates to the data plane, and turns
``TurnoutError`` into ``{"error": ...}`` with the status from the one mapping table.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.protocol.errors import TurnoutError, bounded_message
from serving.protocol.types import ModelMetadata
from serving.server.dataplane import DataPlane, current_request_id
from serving.server.rest.infer import InferenceEndpoints
from serving.server.rest.middleware import RequestIdMiddleware

log = logging.getLogger("turnout.rest")
Handler = Callable[[Request], Awaitable[Response]]
JSON = "application/json"


def json_response(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(err: TurnoutError) -> Response:
    response = json_response({"error": str(err)}, err.http_status)
    if err.retry_after is not None:
        response.headers["retry-after"] = str(err.retry_after)
    return response


def guarded(handler: Handler) -> Handler:
    """Map errors to protocol responses; an unexpected one is logged, never shown as a trace."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except TurnoutError as err:
            return error_response(err)
        except Exception:
            rid = current_request_id()
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return json_response({"error": f"internal server error (request id {rid}; the "
                                  "server log has the details)"}, 500)

    return endpoint


def _metadata_doc(meta: ModelMetadata) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": meta.name, "versions": meta.versions, "platform": meta.platform,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                   for s in meta.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                    for s in meta.outputs],
        "state": meta.state,
    }
    if meta.reason:
        doc["reason"] = meta.reason
    return doc


def build_rest_app(dataplane: DataPlane, *, registry: CollectorRegistry,
                   max_payload_bytes: int) -> InferenceEndpoints:
    """The REST ASGI app; ``registry`` is what /metrics exposes (merged across workers)."""

    async def live(request: Request) -> Response:
        return json_response({"live": dataplane.live()})

    async def ready(request: Request) -> Response:
        ok, reason = dataplane.readiness()
        return json_response({"ready": ok} if ok else {"ready": False, "reason": reason},
                             200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        meta = dataplane.server_metadata()
        return json_response({"name": meta.name, "version": meta.version,
                              "extensions": meta.extensions})

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return json_response(_metadata_doc(dataplane.model_metadata(p["model"], p.get("version"))))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        ok = dataplane.model_ready(p["model"], p.get("version"))
        return json_response({"name": p["model"], "ready": ok}, 200 if ok else 503)

    async def v1_models(request: Request) -> Response:
        # KServe's V1 list: every model /v1/models/{m} answers for (ready or not)
        return json_response({"models": dataplane.model_names()})

    async def v1_model(request: Request) -> Response:
        # KServe's V1: 503 while the model is not ready, so probes and clients can tell
        model = request.path_params["model"]
        ok = dataplane.model_ready(model)
        return json_response({"name": model, "ready": ok}, 200 if ok else 503)

    async def v1_live(request: Request) -> Response:
        # KServe's V1 liveness (its REST client's is_server_ready asks GET /)
        return json_response({"status": "alive"})

    async def repository_index(request: Request) -> Response:
        return json_response([
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in dataplane.repository_index()])

    async def load(request: Request) -> Response:
        await dataplane.load_model(request.path_params["model"])
        return json_response({})

    async def unload(request: Request) -> Response:
        await dataplane.unload_model(request.path_params["model"])
        return json_response({})

    async def metrics(request: Request) -> Response:
        dataplane.metrics.flush()  # this process's latest counts; other workers flush on a timer
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler), methods=[method])

    routes = [
        route("/v2/health/live", live, "GET"),
        route("/v2/health/ready", ready, "GET"),
        route("/v2", server_metadata, "GET"),
        route("/v2/models/{model}", model_metadata, "GET"),
        route("/v2/models/{model}/versions/{version}", model_metadata, "GET"),
        route("/v2/models/{model}/ready", model_ready, "GET"),
        route("/v2/models/{model}/versions/{version}/ready", model_ready, "GET"),
        route("/", v1_live, "GET"),
        route("/v1/models", v1_models, "GET"),
        # KServe V1 verbs other than :predict (answered in infer.py) are not served: 404 for
        # every method, as the router answers them, not a model named "m:explain"
        Route("/v1/models/{model}:{verb}", _not_found, methods=_EVERY_METHOD),
        route("/v1/models/{model}", v1_model, "GET"),
        route("/v2/repository/index", repository_index, "POST"),
        route("/v2/repository/models/{model}/load", load, "POST"),
        route("/v2/repository/models/{model}/unload", unload, "POST"),
        route("/metrics", metrics, "GET"),
    ]
    other = RequestIdMiddleware(Starlette(routes=routes, exception_handlers={
        HTTPException: _http_exception}))
    return InferenceEndpoints(dataplane, other, max_payload_bytes=max_payload_bytes)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in the protocol's error shape too."""
    assert isinstance(exc, HTTPException)
    return json_response({"error": bounded_message(
        f"{exc.detail}: {request.method} {request.url.path}")}, exc.status_code)


async def _not_found(request: Request) -> Response:
    raise HTTPException(404)


_EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
