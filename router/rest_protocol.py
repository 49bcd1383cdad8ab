"""The REST edge's uvicorn protocol class: the fast path's, with each connection's answers
knowing their connection. Its own module because the class is made per edge, subclassing a
class made at run time, which a compiled module (router/rest.py, serving/native.py) cannot hold.
"""

from __future__ import annotations

import asyncio

from router.rest import ClientConnection, RestEdge
from serving.transport.auth import Guard
from serving.transport.fastpath import bind_protocol


def rest_protocol(edge: RestEdge, *, guard: Guard | None = None) -> type[asyncio.Protocol] | str:
    """``serving/transport/fastpath.py``'s protocol for ``edge``, with each connection's
    answers knowing their connection, so a request held for a ready endpoint learns when its
    client goes away. Per connection, not per request: each connection's handler is its own
    copy of the edge (:meth:`RestEdge.for_connection`). ``guard``: authentication, checked
    before a request is claimed (the ASGI app must be guarded by the same guard)."""
    bound = bind_protocol(edge, guard=guard)
    if isinstance(bound, str):  # uvicorn's own path: held requests watch ASGI's receive()
        return bound

    class HoldAwareProtocol(bound):  # type: ignore[valid-type,misc]
        _client: ClientConnection | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._client = ClientConnection(self.transport)
            setattr(self, "handler", edge.for_connection(self._client))  # noqa: B010

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if self._client is not None:
                self._client.close()

    return HoldAwareProtocol
