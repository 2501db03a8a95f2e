"""uvicorn's httptools protocol: one socket write per response, what never reaches the
app (unparsable requests, request heads over 16 KiB) answered in the app's JSON shape.

uvicorn writes the status line and headers as soon as the app sends
`http.response.start`, and the body on `http.response.body`: two `send()` calls and two
TCP segments per response. On loopback and in containers each one costs a trip through
the kernel's TCP stack, for the server and again for the client. Here the writes of one
event-loop tick are joined and handed to the transport at the end of the tick: the bytes
on the wire are the same, in the same order. `bench/levers.py` measured the difference
(docs/benchmarks.md).

A request the HTTP parser cannot read never reaches the app, so uvicorn answers it itself
with a plain-text 400; here that answer, the 431 for a request head over MAX_HEAD_BYTES and
the 408 for a head slower than REQUEST_HEAD_TIMEOUT_SECONDS have the API's JSON error shape
and the headers every other answer carries.

uvicorn's own timer (keep-alive) only runs after a response: a client that opens a
connection and sends its request head slowly, or never, would hold the connection (a file
descriptor, a parser's buffer) for as long as it likes. Here a request head must arrive
whole within the head timeout, counted from the connection's opening and, on a kept-alive
connection, from the first byte of the next request.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from typing import Any, cast

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from counter_svc.errors import error_response
from counter_svc.middleware.context import new_request_id
from counter_svc.middleware.headers import SECURITY_HEADERS
from counter_svc.settings import Settings

log = structlog.get_logger("counter_svc")

# Past this many bytes held, write at once: a large or streamed body is not held back.
FLUSH_BYTES = 64 * 1024
# The request line and headers together, as nginx's default (4 buffers of 8 KiB) allows
# about; uvicorn's other HTTP parser (h11) stops at 16 KiB.
MAX_HEAD_BYTES = 16 * 1024


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing: httptools turns it into an
    HttpParserError, and uvicorn's data_received then calls send_400_response."""


class CoalescingTransport:
    """A transport that defers its writes to the end of the current loop tick."""

    __slots__ = ("_buffer", "_held", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._held = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._buffer.append(bytes(data))
        self._held += len(data)
        if self._held >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._held = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a response written just before `Connection: close` still goes out
        self._transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._held = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, pause_reading, get_extra_info, ...) as is.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn --http httptools`, writing each response with one socket write, answering
    what never reaches the app in the app's JSON shape, and bounding request heads in size
    and in time (`head_timeout` seconds; see `protocol_with`)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        head_timeout: float = Settings.request_head_timeout_seconds,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._head_bytes = 0  # read while in a head, for one header that never ends
        self._head_parsed = 0  # the current head as parsed, request line and headers
        self._head_too_large = False
        self._in_head = True  # the next bytes begin a request line and headers
        self._head_begun = False  # bytes of the current head have arrived
        self._start_head_timer()  # a new connection owes a request head at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # httptools buffers a header whole before handing it over, and sets no limit of
        # its own: one endless header would grow the process without bound. Counted here,
        # a head split over reads holds at most MAX_HEAD_BYTES plus one read. A head that
        # arrives whole in one read is counted by the parser callbacks below.
        if self._in_head:
            self._head_bytes += len(data)
            self._head_begun = True
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head_too_large()
        elif self._in_head and self._head_begun and self._head_timer is None:
            # Part of a head is in (a kept-alive connection's next request, or one
            # pipelined behind a request that is being served): it has the timeout to
            # complete. A head that arrived whole in this read started no timer.
            self._start_head_timer()

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The request before this head (pipelined) is still being answered: the wait
            # is the server's, not the client's, so the head gets another period.
            self._start_head_timer()
        elif self._head_begun:
            self._refuse(
                408,
                "request_timeout",
                f"the request line and headers must arrive within {self.head_timeout:g} s",
            )
        else:
            self.transport.close()  # a connection that never sent a byte: nothing to answer

    # The head as the parser hands it over, counted as sent in the usual form: the request
    # line "METHOD url HTTP/1.1\r\n", one "name: value\r\n" per header, "\r\n" at the end.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_parsed = 2  # the blank line that ends the head
        self._head_begun = True

    def on_url(self, url: bytes) -> None:
        if not self.url:  # the first part of the request line: its method, spaces, version
            self._count_head(len(self.parser.get_method()) + len(b"  HTTP/1.1\r\n"))
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not the trailers of a chunked body
            self._count_head(len(name) + len(value) + len(b": \r\n"))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge  # the parser stops; the head never reaches the app

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._head_begun = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def _unsupported_upgrade_warning(self) -> None:
        # With ws="none" every `Upgrade: websocket` request comes here and is then served
        # as plain HTTP; uvicorn's warning (install a WebSocket library) does not apply.
        pass

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:  # raised by _count_head, reported by the parser as invalid
            self._refuse_head_too_large()
        else:
            self._refuse(400, "invalid_request", msg)

    def _refuse_head_too_large(self) -> None:
        self._refuse(
            431,
            "request_header_too_large",
            f"the request line and headers must be at most {MAX_HEAD_BYTES} bytes",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = bytes(error_response(status, code, message).body)  # the API's error shape
        head = [STATUS_LINE[status]]
        headers = (
            *self.server_state.default_headers,
            (b"x-request-id", new_request_id().encode()),
            *SECURITY_HEADERS,
        )
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self.transport.close()


def protocol_with(head_timeout: float) -> type[asyncio.Protocol]:
    """The protocol for uvicorn's `http=`, with REQUEST_HEAD_TIMEOUT_SECONDS bound in.

    A partial of the class rather than a subclass made here: with WEB_CONCURRENCY above 1
    uvicorn pickles its configuration, this included, into each worker process, and a
    class pickles only by its name in a module. uvicorn only calls it, as a class."""
    factory = functools.partial(CoalescingHttpToolsProtocol, head_timeout=head_timeout)
    return cast("type[asyncio.Protocol]", factory)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one, where the OS allows it.

    Every connection, idle or slow, holds a file descriptor, and the soft limit is often
    1024: past it, accept() fails and the API stops taking connections. The hard limit is
    the ceiling the container runtime or the OS sets; raising the soft limit to it needs no
    privilege. Never fatal: when the limit cannot be changed, the API starts with it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard != soft and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            new = hard
        except (ValueError, OSError) as e:
            log.warning("open_files_limit_unchanged", soft=soft, hard=hard, error=str(e))
    log.info("open_files_limit", before=soft, soft=new, hard=hard)
