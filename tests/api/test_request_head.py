"""REQUEST_HEAD_TIMEOUT_SECONDS on a real server: a request head must arrive whole within
the timeout, or the connection is answered 408 (or, when nothing came, closed)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from counter_svc.settings import Settings
from tests.faults import FaultProxy
from tests.helpers import EXPECTED_HEADERS, serving

pytestmark = pytest.mark.slow

HEAD_TIMEOUT = 1.0
MYSQL_TIMEOUT = 3.0  # how long /readyz waits for a hung MySQL


@pytest.fixture(scope="module")
def head_server(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, FaultProxy]]:
    """The API with a 1 s request-head timeout, reaching MySQL through a proxy that a test
    can hang; yields its port and the proxy."""
    log_path = tmp_path_factory.mktemp("head") / "api.log"
    with (
        FaultProxy(base_settings.mysql_host, base_settings.mysql_port) as proxy,
        serving(
            base_settings,
            log_path,
            REQUEST_HEAD_TIMEOUT_SECONDS=f"{HEAD_TIMEOUT:g}",
            MYSQL_HOST="127.0.0.1",
            MYSQL_PORT=str(proxy.port),
            MYSQL_TIMEOUT_SECONDS=f"{MYSQL_TIMEOUT:g}",
        ) as (url, _),
    ):
        yield int(url.rsplit(":", 1)[1]), proxy


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(conn: socket.socket, limit: float = 10) -> bytes:
    """Everything the server sends until it closes the connection, waiting at most `limit` s."""
    conn.settimeout(limit)
    answer = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {limit:g} s")
        if not chunk:
            break
        answer += chunk
    else:
        pytest.fail("the server kept the connection open")
    return answer


def read_response(reader: BinaryIO) -> tuple[str, dict[str, str], bytes]:
    """One response (with Content-Length) from `conn.makefile("rb")` of a kept-alive
    connection; what follows it stays in the reader."""
    status = reader.readline().decode().rstrip("\r\n")
    assert status, "the server closed the connection"
    headers: dict[str, str] = {}
    for _ in range(100):
        line = reader.readline().decode().rstrip("\r\n")
        if not line:
            break
        name, value = line.split(": ", 1)
        headers[name.lower()] = value
    return status, headers, reader.read(int(headers["content-length"]))


def parse(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}, body


def assert_request_timeout(answer: bytes) -> None:
    status, headers, body = parse(answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["error"] == "request_timeout"
    assert len(headers["x-request-id"]) == 32
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value


def test_a_head_that_stops_halfway_gets_a_json_408(head_server: tuple[int, FaultProxy]) -> None:
    """Half a request head, then silence: a 408 in the API's JSON shape after the timeout,
    and the connection is closed."""
    port, _ = head_server
    with connect(port) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
        answer = read_until_closed(conn)
        elapsed = time.monotonic() - started
    assert_request_timeout(answer)
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 3


def test_a_head_sent_byte_by_byte_is_cut_off_at_the_timeout(
    head_server: tuple[int, FaultProxy],
) -> None:
    """Bytes that keep coming do not extend the timeout: a client sending one byte every
    0.3 s gets the 408 once the head has taken longer than the timeout."""
    port, _ = head_server
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    with connect(port) as conn:
        started = time.monotonic()
        for byte in head:
            if select.select([conn], [], [], 0.3)[0]:
                break  # the server answered (or closed)
            if time.monotonic() - started > HEAD_TIMEOUT + 5:
                break
            try:
                conn.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed = time.monotonic() - started
        answer = read_until_closed(conn)
    assert_request_timeout(answer)
    assert elapsed < HEAD_TIMEOUT + 3


def test_an_idle_new_connection_is_closed_without_an_answer(
    head_server: tuple[int, FaultProxy],
) -> None:
    """A connection that never sends a byte is closed after the timeout, with no answer
    (there was no request to answer)."""
    port, _ = head_server
    with connect(port) as conn:
        started = time.monotonic()
        answer = read_until_closed(conn)
        elapsed = time.monotonic() - started
    assert answer == b""
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 3


def test_keep_alive_pauses_longer_than_the_head_timeout_are_fine(
    head_server: tuple[int, FaultProxy],
) -> None:
    """Between requests on a kept-alive connection the head timer does not run (uvicorn's
    keep-alive timeout, 5 s, applies there): requests 1.5 s apart share one connection."""
    port, _ = head_server
    with connect(port) as conn, conn.makefile("rb") as reader:
        for i in range(3):
            if i:
                time.sleep(HEAD_TIMEOUT * 1.5)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(reader)
            assert status == "HTTP/1.1 200 OK", i
            assert "connection" not in headers
            assert json.loads(body) == {"status": "ok"}


def test_a_pipelined_head_waiting_on_a_slow_answer_is_not_cut_off(
    head_server: tuple[int, FaultProxy],
) -> None:
    """A head that arrives in parts while the request before it on the connection is still
    being answered (here a /readyz waiting 3 s on a hung MySQL) is not timed out: the
    timer restarts while the connection is busy, and both requests get their answer."""
    port, proxy = head_server
    proxy.block(hang=True)
    try:
        with connect(port) as conn, conn.makefile("rb") as reader:
            started = time.monotonic()
            conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
            time.sleep(HEAD_TIMEOUT * 1.8)  # the head of the second, unfinished meanwhile
            conn.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
            first = read_response(reader)
            elapsed = time.monotonic() - started
            second = read_response(reader)
    finally:
        proxy.restore()
    assert elapsed >= MYSQL_TIMEOUT * 0.9  # the first answer did wait on MySQL
    assert first[0] == "HTTP/1.1 200 OK"
    assert json.loads(first[2])["checks"]["mysql"] == "unavailable"
    assert second[0] == "HTTP/1.1 200 OK"
    assert json.loads(second[2]) == {"status": "ok"}
