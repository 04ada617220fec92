"""What keeps slow, idle or greedy clients from starving the others: a connection limit, a header timeout,
an idle (keep-alive) timeout and a header size cap in the HTTP protocol; a body timeout and a body size
limit enforced while the body streams in (chunked bodies included), so memory stays bounded.

uvicorn has a keep-alive timeout only: a connection that never sends its headers, or sends them a byte at
a time, stays open forever, and enough of them exhaust the file descriptors (measured: ~1 100 idle
sockets at `ulimit -n 1024` made real requests fail). `LimitedProtocol` is uvicorn's httptools protocol
with those limits added; `LimitedConfig` carries them to every worker process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
import uvicorn
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fmnist_deploy.errors import InputError


@dataclass(frozen=True)
class Limits:
    """Per-process limits on connections and on how long and how much a client may send."""

    max_connections: int = 512  # open connections per process; one more is answered 503 and closed
    header_timeout_s: float = 10.0  # from a connection's first byte (or its opening) to the end of the headers
    body_timeout_s: float = 30.0  # from the end of the headers to the end of the body
    idle_timeout_s: float = 5.0  # a kept-alive connection with no request is closed after this
    max_header_bytes: int = 64 * 1024  # request line and headers of one request


class BodyError(InputError):
    """A body that cannot be read: too large, too slow, or its client went away; `status` is the answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _raw_response(status: str, message: str) -> bytes:
    """A whole HTTP response with a JSON error, for answers given below the application."""
    body = orjson.dumps({"error": message})
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a connection limit, a header timeout and a header size cap."""

    def __init__(self, config: LimitedConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: Limits = config.limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse a connection over the limit; start the header clock."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(
                _raw_response("503 Service Unavailable", f"over {self.limits.max_connections} open connections")
            )
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Start the header clock at a request's first byte; cap the header bytes."""
        waiting = self.cycle is None or self.cycle.response_complete  # these bytes begin a request's headers
        if waiting and self._header_timer is None and not self.transport.is_closing():
            self._arm()
        if waiting:
            self._header_bytes += len(data)
        super().data_received(data)
        # still inside the headers after this chunk (the body that follows them in a chunk does not count)
        if self._header_timer is not None and self._header_bytes > self.limits.max_header_bytes:
            self._close(_raw_response("431 Request Header Fields Too Large", "request headers over the limit"))

    def on_headers_complete(self) -> None:
        """The headers are in: stop the header clock."""
        self._disarm()
        self._header_bytes = 0
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header clock."""
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (a malformed request line or header, an absurd Content-Length)
        answers `{"error": ...}` like every other error, instead of uvicorn's text/plain."""
        self._close(_raw_response("400 Bad Request", f"malformed HTTP request: {msg}"))

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._close, b"")

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _close(self, answer: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()


class JsonAccessFormatter(logging.Formatter):
    """The access log as JSON lines: time, client, method, path, HTTP version, status."""

    def format(self, record: logging.LogRecord) -> str:
        """One request as one JSON object."""
        client, method, path, version, status = record.args  # type: ignore[misc] - uvicorn's access record
        return orjson.dumps(
            {
                "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                "client": client,
                "method": method,
                "path": path,
                "http_version": version,
                "status": int(status),
            }
        ).decode()


class LimitedConfig(uvicorn.Config):
    """uvicorn's configuration with `Limits`: the protocol above, the idle timeout as keep-alive, and the
    access log (when on) shown at any --log-level, as text or JSON lines on standard output."""

    def __init__(self, app, *, limits: Limits, access_log_format: str = "text", **kwargs) -> None:
        self.access_log_format = access_log_format
        super().__init__(app, http=LimitedProtocol, timeout_keep_alive=limits.idle_timeout_s, **kwargs)
        self.limits = limits

    def configure_logging(self) -> None:
        """uvicorn's logging, then the access logger at INFO (uvicorn gives it the --log-level, which would
        hide every access line below INFO) with the chosen format."""
        super().configure_logging()
        if self.access_log:
            access = logging.getLogger("uvicorn.access")
            access.setLevel(logging.INFO)
            if getattr(self, "access_log_format", "text") == "json":
                for handler in access.handlers:
                    handler.setFormatter(JsonAccessFormatter())


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, read while it streams in: over `limit` bytes is a 413 as soon as it is known (a
    declared length at once, a chunked body at the chunk that crosses it), more than `timeout_s` a 408."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(f"request body of {declared} bytes is over the {limit}-byte limit", 413)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyError(f"request body over the {limit}-byte limit", 413)
    except TimeoutError:
        raise BodyError(f"request body not received within {timeout_s:g} s", 408) from None
    except ClientDisconnect:
        raise BodyError("the client disconnected before sending the whole body", 400) from None
    return bytes(body)
