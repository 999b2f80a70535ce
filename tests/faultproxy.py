"""A fault-injecting HTTP/1.1 proxy in front of a local S3 server (moto, RGW), for tests.

Owns: one listening socket on 127.0.0.1 (a free port), one thread accepting on it, one thread per client
connection (each with its own upstream connection), and the fault counters. Plain blocking sockets on
threads, so it runs beside trio and asyncio code alike (the store's aiobotocore thread, a FUSE daemon in a
child process). ``stop()`` (or leaving the ``with`` block) closes every socket and joins every thread.

The client points its endpoint at ``proxy.endpoint_url`` instead of the server's. The proxy forwards each
request as it came (method, target, headers, body: Content-Length, chunked and aws-chunked bodies are
passed on byte for byte, so signatures stay valid) and the server's reply back, keeping the client's
connection alive between requests whatever the server does with its own (moto closes after every reply).
``Expect: 100-continue`` is answered by the proxy itself. Replies are read whole before they are passed on
(tests only: memory is the size of a reply).

Faults, each "every N-th request that matches" (``when``: None for every request, an S3 operation name or
a collection of them, or a predicate on ``Request``), configured at construction or at runtime with
``set_faults`` and counted in ``stats``:

- ``drop_reply``: forward the request, read the server's whole reply (so S3 applied it), then close the
  client's connection without sending a byte of it: the "reply lost after the server applied the request"
  case. The client sees the connection closed (botocore: ConnectionClosedError, retried).
- ``fail``: answer ``fail_status`` (503 SlowDown by default) with an S3 XML error body, without forwarding.
- ``reset``: close the connection (TCP RST) as soon as the request's head arrived, before forwarding.

The endpoint down (an outage), switched with ``set_down``: ``"refuse"`` resets every connection at once
(new ones at accept, open ones at their next request), as a host whose server is stopped; ``"drop"``
accepts connections and requests and never answers (a black hole: the client waits for its timeouts);
``None`` is up again (connections a drop held are closed then, unanswered).

Each kind counts the requests its ``when`` matches, independently of the others; when several fire on one
request, ``reset`` wins over ``fail``, which wins over ``drop_reply``.
"""

from __future__ import annotations

import http
import logging
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_HEAD = 64 * 1024
FAULT_KINDS = ("reset", "fail", "drop_reply")
# Default S3 error codes for the statuses a test is likely to inject.
ERROR_CODES = {
    500: "InternalError",
    503: "SlowDown",
    502: "BadGateway",
    504: "GatewayTimeout",
    400: "BadRequest",
}
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"})


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw its head. ``headers``: names in lower case (a repeated header's values
    joined by ", "); ``query``: parsed, blank values kept (``?uploads`` is ``{"uploads": [""]}``)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    operation: str


When = Callable[[Request], bool] | str | Collection[str] | None


def s3_operation(method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> str:
    """The S3 operation a path-style request is (``PutObject``, ``UploadPart``, ...), or ``METHOD ?sub``."""
    # Presigned URLs' signature, botocore's x-id and GET's response-* overrides name no sub-resource.
    query = {
        name: value
        for name, value in query.items()
        if not name.lower().startswith(("x-amz-", "response-"))
        and name not in ("x-id", "AWSAccessKeyId", "Signature", "Expires")
    }
    parts = path.lstrip("/").split("/", 1)
    on_object = len(parts) == 2 and parts[1] != ""
    copy = "x-amz-copy-source" in headers
    if not parts[0]:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if on_object:
        if method == "POST" and "uploads" in query:
            return "CreateMultipartUpload"
        if method == "POST" and "uploadId" in query:
            return "CompleteMultipartUpload"
        if method == "PUT" and "partNumber" in query and "uploadId" in query:
            return "UploadPartCopy" if copy else "UploadPart"
        if method == "GET" and "uploadId" in query:
            return "ListParts"
        if method == "DELETE" and "uploadId" in query:
            return "AbortMultipartUpload"
        if query:
            return f"{method} ?{sorted(query)[0]}"
        return {
            "PUT": "CopyObject" if copy else "PutObject",
            "GET": "GetObject",
            "HEAD": "HeadObject",
            "DELETE": "DeleteObject",
        }.get(method, method)
    if method == "GET":
        for sub, name in (("uploads", "ListMultipartUploads"), ("versions", "ListObjectVersions")):
            if sub in query:
                return name
        if query.get("list-type") == ["2"]:
            return "ListObjectsV2"
        if set(query) <= {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}:
            return "ListObjects"
        return f"GET ?{sorted(query)[0]}"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if query:
        return f"{method} ?{sorted(query)[0]}"
    return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, method)


def _matcher(when: When) -> Callable[[Request], bool]:
    if when is None:
        return lambda request: True
    if isinstance(when, str):
        return lambda request: request.operation == when
    if callable(when):
        return when
    names = frozenset(when)
    return lambda request: request.operation in names


@dataclass
class _Fault:
    every: int = 0
    match: Callable[[Request], bool] = field(default=lambda request: True)
    seen: int = 0

    def fires(self, request: Request) -> bool:
        """Count ``request`` if it matches; True on every ``every``-th one counted."""
        if self.every <= 0 or not self.match(request):
            return False
        self.seen += 1
        return self.seen % self.every == 0


class FaultStats:
    """What the proxy saw and did; thread-safe. ``snapshot()`` gives a plain dict for assertions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0  # request heads received
        self.forwarded = 0  # requests sent to the server (a drop_reply request too)
        self.connections = 0  # client connections accepted
        self.upstream_connections = 0
        self.down_refuse = 0  # connections reset while down (set_down("refuse"))
        self.down_drop = 0  # requests held unanswered while down (set_down("drop"))
        self.operations: Counter[str] = Counter()  # requests by S3 operation
        self.faults: Counter[str] = Counter()  # faults injected by kind (FAULT_KINDS)
        self.faults_by_operation: Counter[tuple[str, str]] = Counter()  # (kind, operation)
        self.recorded: list[Request] = []  # every request, when the proxy was made with record=True
        self.record = False

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def _request(self, request: Request) -> None:
        with self._lock:
            self.requests += 1
            self.operations[request.operation] += 1
            if self.record:
                self.recorded.append(request)

    def _fault(self, kind: str, request: Request) -> None:
        with self._lock:
            self.faults[kind] += 1
            self.faults_by_operation[(kind, request.operation)] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": self.requests,
                "forwarded": self.forwarded,
                "connections": self.connections,
                "upstream_connections": self.upstream_connections,
                "down_refuse": self.down_refuse,
                "down_drop": self.down_drop,
                "operations": dict(self.operations),
                "faults": dict(self.faults),
                "faults_by_operation": dict(self.faults_by_operation),
            }

    def reset(self) -> None:
        with self._lock:
            self.requests = self.forwarded = self.connections = self.upstream_connections = 0
            self.down_refuse = self.down_drop = 0
            self.operations.clear()
            self.faults.clear()
            self.faults_by_operation.clear()
            self.recorded.clear()


class _Closed(Exception):
    """The peer closed (or the proxy is stopping); ends one connection's thread quietly."""


class _Reader:
    """Buffered reads from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except (OSError, ValueError):
            return False
        if not data:
            return False
        self.buffer += data
        return True

    def until(self, marker: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``marker``; None on EOF before any byte; _Closed on EOF midway."""
        while True:
            at = self.buffer.find(marker)
            if at >= 0:
                out = bytes(self.buffer[: at + len(marker)])
                del self.buffer[: at + len(marker)]
                return out
            if len(self.buffer) > limit:
                raise _Closed(f"no {marker!r} within {limit} bytes")
            if not self._fill():
                if self.buffer:
                    raise _Closed("connection closed mid-message")
                return None

    def line(self) -> bytes:
        out = self.until(b"\r\n", MAX_HEAD)
        if out is None:
            raise _Closed("connection closed mid-message")
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise _Closed("connection closed mid-body")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def to_eof(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buffer)
        self.buffer.clear()
        return out

    def chunked(self) -> bytes:
        """A chunked body, framing and trailers included, as it came."""
        raw = bytearray()
        while True:
            line = self.line()
            raw += line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Closed(f"bad chunk size line {line!r}") from None
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self.line()
                    raw += trailer
                    if trailer == b"\r\n":
                        return bytes(raw)
            raw += self.exact(size + 2)


@dataclass
class _Message:
    start: str  # request or status line
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name]
        return ", ".join(values) if values else None

    def head_bytes(self, drop: Collection[str] = (), extra: Collection[tuple[str, str]] = ()) -> bytes:
        lines = [self.start] + [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        lines += [f"{k}: {v}" for k, v in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_message(raw: bytes) -> _Message:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return _Message(lines[0], headers)


def _body(
    reader: _Reader, message: _Message, *, response_to: str | None = None, status: int = 0
) -> tuple[bytes, bool]:
    """The message's body as it came (framing kept) and whether it was delimited by the connection's end.

    Requests: Content-Length or chunked, else none. Responses: none for HEAD, 1xx, 204 and 304, else
    chunked, Content-Length, or up to the end of the connection."""
    if response_to is not None and _bodiless(response_to, status):
        return b"", False
    encoding = (message.get("transfer-encoding") or "").lower()
    if "chunked" in encoding:
        return reader.chunked(), False
    length = message.get("content-length")
    if length is not None:
        return reader.exact(int(length.split(",")[0].strip())), False
    if response_to is None:
        return b"", False
    return reader.to_eof(), True


def _bodiless(method: str, status: int) -> bool:
    return method == "HEAD" or status < 200 or status in (204, 304)


def _error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer's next read fails with ECONNRESET."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.close()


class FaultProxy:
    """The proxy. ``with FaultProxy(upstream_url, drop_reply_every=13) as proxy: ... proxy.endpoint_url``.

    ``timeout``: seconds a connection may stay idle (client) or silent (server) before it is closed;
    ``record``: keep every ``Request`` in ``stats.recorded`` (tests that look at headers)."""

    def __init__(
        self,
        upstream_url: str,
        *,
        drop_reply_every: int = 0,
        drop_reply_when: When = None,
        fail_every: int = 0,
        fail_when: When = None,
        fail_status: int = 503,
        fail_code: str | None = None,
        reset_every: int = 0,
        reset_when: When = None,
        timeout: float = 60.0,
        record: bool = False,
    ) -> None:
        url = urllib.parse.urlsplit(upstream_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"the fault proxy forwards to plain http://host:port, not {upstream_url!r}")
        self.upstream = (url.hostname, url.port or 80)
        self.timeout = timeout
        self.stats = FaultStats()
        self.stats.record = record
        self._lock = threading.Lock()  # faults, the sockets and threads below
        self._faults: dict[str, _Fault] = {kind: _Fault() for kind in FAULT_KINDS}
        self._fail_status = 503
        self._fail_code = "SlowDown"
        self.set_faults(
            drop_reply_every=drop_reply_every,
            drop_reply_when=drop_reply_when,
            fail_every=fail_every,
            fail_when=fail_when,
            fail_status=fail_status,
            fail_code=fail_code,
            reset_every=reset_every,
            reset_when=reset_when,
        )
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._ids = 0
        self.port = 0
        self._down: str | None = None
        self._up = threading.Event()
        self._up.set()

    # -- configuration ----------------------------------------------------------------------------

    def set_faults(
        self,
        *,
        drop_reply_every: int = 0,
        drop_reply_when: When = None,
        fail_every: int = 0,
        fail_when: When = None,
        fail_status: int = 503,
        fail_code: str | None = None,
        reset_every: int = 0,
        reset_when: When = None,
    ) -> None:
        """Replace every fault setting (0 turns a kind off); each kind's count starts again from zero."""
        for every in (drop_reply_every, fail_every, reset_every):
            if every < 0:
                raise ValueError("every must be >= 0")
        with self._lock:
            self._faults = {
                "reset": _Fault(reset_every, _matcher(reset_when)),
                "fail": _Fault(fail_every, _matcher(fail_when)),
                "drop_reply": _Fault(drop_reply_every, _matcher(drop_reply_when)),
            }
            self._fail_status = fail_status
            self._fail_code = fail_code or ERROR_CODES.get(fail_status, "ServiceUnavailable")

    def set_down(self, how: str | None) -> None:
        """The endpoint down (``"refuse"`` or ``"drop"``, see the module docstring) or up again (None)."""
        if how not in (None, "refuse", "drop"):
            raise ValueError(f"down must be None, 'refuse' or 'drop', not {how!r}")
        with self._lock:
            self._down = how
        if how is None:
            self._up.set()
        else:
            self._up.clear()

    def _outage(self, client: socket.socket) -> bool:
        """While down: refuse (True: reset it) or hold ``client`` unanswered until up (then True: close)."""
        with self._lock:
            down = self._down
        if down is None:
            return False
        self.stats._add(**{f"down_{down}": 1})
        if down == "drop":
            while not self._up.wait(0.1) and not self._stopping.is_set():
                pass
        return True

    def clear_faults(self) -> None:
        """No faults from now on (the proxy keeps forwarding and counting)."""
        self.set_faults()

    def _decide(self, request: Request) -> str | None:
        with self._lock:
            fired = [kind for kind in FAULT_KINDS if self._faults[kind].fires(request)]
        return fired[0] if fired else None

    # -- life cycle ---------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("the fault proxy is not started")
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        if self._listener is not None:
            raise RuntimeError("the fault proxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(128)
        listener.settimeout(0.1)  # accept wakes up to see a stop
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop, "accept")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket and join every thread (idempotent). RuntimeError if a thread outlives
        ``timeout`` (a bug in the proxy: a test must not go on with threads left behind)."""
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
        deadline = time.monotonic() + timeout
        while threads and time.monotonic() < deadline:
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            with self._lock:  # a connection accepted just before the stop may have started a thread since
                sockets += [sock for sock in self._sockets if sock not in sockets]
                threads = [thread for thread in self._threads if thread.is_alive()]
            for sock in sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._listener is not None:
            self._listener.close()
        for sock in sockets:
            sock.close()
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running after stop: {alive}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def threads(self) -> list[threading.Thread]:
        """The proxy's threads still running (empty after ``stop``)."""
        with self._lock:
            return [thread for thread in self._threads if thread.is_alive()]

    def _spawn(self, target: Callable[..., None], what: str, *args: object) -> None:
        with self._lock:
            self._ids += 1
            thread = threading.Thread(
                target=self._run,
                args=(target, *args),
                name=f"faultproxy-{self.port}-{what}-{self._ids}",
                daemon=True,
            )
            # Started under the lock, so stop() never sees (and joins) a thread that has not started.
            thread.start()
            self._threads.add(thread)

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except Exception:
            if not self._stopping.is_set():
                log.exception("fault proxy thread failed")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _untrack(self, sock: socket.socket, *, reset: bool = False) -> None:
        with self._lock:
            self._sockets.discard(sock)
        if reset:
            _abort(sock)
        else:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refuse = self._down == "refuse"
            if refuse:
                self.stats._add(down_refuse=1)
                _abort(client)
                continue
            client.settimeout(self.timeout)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._track(client):
                client.close()
                return
            self.stats._add(connections=1)
            self._spawn(self._serve, "conn", client)

    # -- one client connection -----------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: list[tuple[socket.socket, _Reader]] = []  # at most one, kept while the server keeps it
        reset = False
        try:
            reader = _Reader(client)
            while not self._stopping.is_set():
                raw = reader.until(b"\r\n\r\n", MAX_HEAD)
                if raw is None:
                    return
                if self._outage(client):
                    reset = True
                    return
                message = _parse_message(raw[:-4])
                request = self._request(message)
                self.stats._request(request)
                fault = self._decide(request)
                if fault == "reset":
                    self.stats._fault("reset", request)
                    reset = True
                    return
                if (message.get("expect") or "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body, _ = _body(reader, message)
                client_close = "close" in (message.get("connection") or "").lower() or message.start.endswith(
                    "1.0"
                )
                if fault == "fail":
                    self.stats._fault("fail", request)
                    client.sendall(self._failure(request, close=client_close))
                    if client_close:
                        return
                    continue
                status, reply, reply_body = self._forward(upstream, message, request, body)
                if fault == "drop_reply":
                    self.stats._fault("drop_reply", request)
                    return  # the server applied it; the client hears only the connection closing
                extra = [("Connection", "close")] if client_close else []
                unframed = reply.get("content-length") is None and "chunked" not in (
                    reply.get("transfer-encoding") or ""
                )
                if unframed and (reply_body or not _bodiless(request.method, status)):
                    # The server ended this reply by closing; the client's connection stays open.
                    extra.append(("Content-Length", str(len(reply_body))))
                client.sendall(reply.head_bytes(drop=HOP_BY_HOP, extra=extra) + reply_body)
                if client_close:
                    return
        except _Closed as exc:
            log.debug("fault proxy connection ended: %s", exc)
        except OSError as exc:
            if not self._stopping.is_set():
                log.debug("fault proxy connection failed: %r", exc)
        finally:
            for sock, _ in upstream:
                self._untrack(sock)
            self._untrack(client, reset=reset)

    def _request(self, message: _Message) -> Request:
        method, _, rest = message.start.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        headers: dict[str, str] = {}
        for name, value in message.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        path = urllib.parse.unquote(url.path)
        return Request(method, path, query, headers, s3_operation(method, path, query, headers))

    def _failure(self, request: Request, *, close: bool) -> bytes:
        with self._lock:
            status, code = self._fail_status, self._fail_code
        body = (
            b""
            if request.method == "HEAD"
            else _error_body(
                code, "Injected by the fault proxy.", request.path, f"faultproxy-{self.stats.requests}"
            )
        )
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            "Content-Type: application/xml",
            f"Content-Length: {len(body)}",
            *(["Connection: close"] if close else []),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _forward(
        self, upstream: list[tuple[socket.socket, _Reader]], message: _Message, request: Request, body: bytes
    ) -> tuple[int, _Message, bytes]:
        """Send the request to the server (on the connection kept from the last one if the server kept it
        open, else a new one) and read its whole reply: (status, head, body as it came)."""
        data = message.head_bytes(drop=HOP_BY_HOP) + body
        for attempt in (0, 1):
            reused = bool(upstream)
            if not upstream:
                sock = socket.create_connection(self.upstream, timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self._track(sock):
                    sock.close()
                    raise _Closed("stopping")
                self.stats._add(upstream_connections=1)
                upstream.append((sock, _Reader(sock)))
            sock, reader = upstream[0]
            try:
                sock.sendall(data)
                raw = reader.until(b"\r\n\r\n", MAX_HEAD)
                while raw is not None:
                    reply = _parse_message(raw[:-4])
                    status = int(reply.start.split(" ", 2)[1])
                    if status >= 200 or status == 101:
                        break
                    raw = reader.until(b"\r\n\r\n", MAX_HEAD)  # an interim 1xx: not asked for, skipped
            except OSError:
                raw = None
            if raw is None:
                # A kept connection the server had closed meanwhile: it never saw the request (no byte of
                # a reply came), so sending it once more on a new connection is what any client does.
                upstream.pop()
                self._untrack(sock)
                if reused and attempt == 0:
                    continue
                raise _Closed("the server closed the connection without a reply")
            break
        self.stats._add(forwarded=1)
        reply_body, until_eof = _body(reader, reply, response_to=request.method, status=status)
        keep = (
            not until_eof
            and reply.start.startswith("HTTP/1.1")
            and "close" not in (reply.get("connection") or "").lower()
        )
        if not keep:
            upstream.pop()
            self._untrack(sock)
        return status, reply, reply_body


@contextmanager
def running_fault_proxy(upstream_url: str, **faults: object) -> Iterator[FaultProxy]:
    """``with running_fault_proxy(server.endpoint_url, fail_every=3) as proxy:`` started and stopped."""
    proxy = FaultProxy(upstream_url, **faults)  # type: ignore[arg-type]
    with proxy:
        yield proxy
