"""A blocking keep-alive HTTP/1.1 client for the gRPC edge's handler threads.

The gRPC edge forwards a client's ModelInfer to Turnout model servers as protobuf over HTTP
(``upstream.grpc_via_http``): the serialized message is the body of ``POST /v2/models/{m}/infer``
with ``content-type: application/x-protobuf`` and the answer is the serialized response. A
handler thread waits for its answer anyway, so it talks to the socket itself: one kept-alive
connection per (thread, endpoint), the request written with one ``sendall``, the answer parsed
by httptools. Per call that is two system calls and a few microseconds of Python, against
several times that for a grpcio client call and for the model server's gRPC edge
(``loadtests/router_hop/RESULTS.md``).

Failures are classified as in ``router/client.py``. A connection reused from the thread's
pool that dies before any byte of the answer is repeated once on a new connection (the server
may have closed it while idle).

``https://`` endpoints get the socket wrapped in TLS when it connects (verified with the router's
upstream CA settings); nothing else differs.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import httptools

from router.client import UpstreamError, UpstreamResponse
from serving.transport.tls import ClientTls


class _Connection:
    """One upstream socket and its response parser; used by one thread at a time."""

    __slots__ = ("sock", "parser", "status", "headers", "body", "done", "keep_alive", "received")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.received = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    def exchange(self, data: bytes, timeout: float) -> UpstreamResponse:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done, self.keep_alive, self.received = False, True, False
        sock = self.sock
        sock.settimeout(timeout)
        sock.sendall(data)
        while not self.done:
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionResetError("upstream closed the connection before answering")
            self.received = True
            self.parser.feed_data(chunk)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        return UpstreamResponse(self.status, self.headers, body)

    def close(self) -> None:
        self.sock.close()


class BlockingH1Client:
    """``request`` from any thread; each thread keeps its own connection per endpoint."""

    def __init__(self, *, connect_timeout: float, tls: ClientTls | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._tls = tls or ClientTls()
        self._local = threading.local()
        self._targets: dict[str, tuple[str, int, bytes, bool]] = {}
        self._open: set[_Connection] = set()  # every thread's, so close() reaches them all
        self._lock = threading.Lock()

    def request(self, address: str, path: str, *, headers: list[tuple[str, str]],
                content_type: bytes, body: bytes, timeout: float) -> UpstreamResponse:
        """POST ``body`` to ``address`` (a base URL) + ``path`` within ``timeout`` seconds."""
        host, port, host_header, tls = self._target(address)
        head = [b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\nhost: ", host_header,
                b"\r\ncontent-type: ", content_type, b"\r\ncontent-length: ",
                str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        head.append(body)
        data = b"".join(head)
        pool: dict[str, _Connection] = self._local.__dict__.setdefault("pool", {})
        conn = pool.pop(address, None)
        if conn is not None:
            try:
                return self._exchange(pool, address, conn, data, timeout)
            except UpstreamError as err:
                if err.kind != "reset" or conn.received:
                    raise
                # An idle connection the server had closed: once more on a fresh one.
        conn = self._connect(host, port, address, timeout, tls)
        return self._exchange(pool, address, conn, data, timeout)

    def _exchange(self, pool: dict[str, _Connection], address: str, conn: _Connection,
                  data: bytes, timeout: float) -> UpstreamResponse:
        try:
            response = conn.exchange(data, timeout)
        except TimeoutError:
            self._discard(conn)
            raise UpstreamError("timeout", f"{address} did not answer within "
                                           f"{timeout:.3g}s") from None
        except (OSError, httptools.HttpParserError) as exc:
            self._discard(conn)
            raise UpstreamError("reset", f"{address} dropped the connection: {exc}") from None
        if conn.keep_alive:
            pool[address] = conn
        else:
            self._discard(conn)
        return response

    def _connect(self, host: str, port: int, address: str, timeout: float,
                 tls: bool = False) -> _Connection:
        try:
            sock = socket.create_connection((host, port),
                                            timeout=max(min(self._connect_timeout, timeout), 0.001))
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {address}: "
                                           f"{exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            try:
                sock = self._tls.context.wrap_socket(sock, server_hostname=host)
            except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, TlsError
                sock.close()
                reason = getattr(exc, "reason", None) or exc
                raise UpstreamError("connect", f"TLS handshake with {address} failed: "
                                               f"{reason}") from None
        conn = _Connection(sock)
        with self._lock:
            self._open.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def _target(self, address: str) -> tuple[str, int, bytes, bool]:
        target = self._targets.get(address)
        if target is None:
            url = urlsplit(address)
            host = url.hostname or "127.0.0.1"
            tls = url.scheme == "https"
            port = url.port or (443 if tls else 80)
            target = self._targets[address] = (host, port, url.netloc.encode("latin-1"), tls)
        return target

    def close(self) -> None:
        """Close every thread's connections (at shutdown; later calls open new ones)."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()
