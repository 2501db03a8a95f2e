"""`python -m counter_svc serve` as a real process: logs, secrets, graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from counter_svc.serving import MAX_HEAD_BYTES
from counter_svc.settings import Settings
from tests.helpers import EXPECTED_HEADERS, serving, serving_with

pytestmark = pytest.mark.slow


def test_serve_logs_json_with_request_id_hides_secrets_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    """JSON access lines carry the request id; the password never appears; SIGTERM exits 0."""
    secret = tmp_path / "mysql-password"
    secret.write_text("Very-Secret-Pw-42")
    log_path = tmp_path / "api.log"
    env = {
        "MYSQL_PASSWORD_FILE": str(secret),
        # A user that does not exist: Redis refuses it (a password alone is accepted by a
        # server that has none).
        "REDIS_URL": settings.redis_url.replace("redis://", "redis://app:redis-Secret-7@"),
    }
    with serving(settings, log_path, **env) as (url, proc):
        request = urllib.request.Request(f"{url}/readyz", headers={"X-Request-ID": "probe-1"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        # Wrong credentials for both stores: not ready, but alive and saying why.
        assert answer.value.code == 503
        answer.value.close()
        proc.send_signal(signal.SIGTERM)
        # uvicorn finishes in-flight requests, then re-raises SIGTERM as its exit status.
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    text = log_path.read_text()
    assert "Very-Secret-Pw-42" not in text
    assert "redis-Secret-7" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    assert access
    assert access[0]["request_id"] == "probe-1"
    assert access[0]["status"] == 503
    assert access[0]["route"] == "/readyz"
    assert "duration_ms" in access[0]
    assert any(line.get("event", "").startswith("Finished server process") for line in lines)


def exchange(url: str, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes as the only request of a connection; the status line, the headers
    (lower-case names) and the body of the answer."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}, body


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"PUT /api/v1/users/1/increment HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "space-in-header-name", "negative-length", "bad-chunk"],
)
def test_requests_the_http_parser_refuses_get_a_json_400(live_server: str, raw: bytes) -> None:
    """Bytes that are not HTTP never reach the app; the server still answers in the API's
    JSON error shape, with the security headers, and closes the connection."""
    status, headers, body = exchange(live_server, raw)
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {
        "error": "invalid_request",
        "message": "Invalid HTTP request received.",
    }
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value
    assert len(headers["x-request-id"]) == 32


def test_a_client_that_hangs_up_mid_body_is_no_server_error(
    settings: Settings, tmp_path: Path
) -> None:
    """A create whose client disconnects before sending its whole body is logged and counted
    as 499 (client closed request), with no traceback and no 500 for the 5xx alert."""
    log_path = tmp_path / "api.log"
    with serving(settings, log_path) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"usern'
            )
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                exposition = response.read().decode()
            if 'route="/api/v1/users",status="499"' in exposition:
                break
            assert time.monotonic() < deadline, "the hang-up was never counted"
            time.sleep(0.05)
    assert 'status="500"' not in exposition
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") == "error"]
    access = [(line["route"], line["status"]) for line in lines if line.get("event") == "request"]
    assert access[0] == ("/api/v1/users", 499)


@pytest.mark.parametrize("key", [b"dGhlIHNhbXBsZSBub25jZQ==", None], ids=["valid", "no-key"])
def test_a_websocket_upgrade_is_answered_by_the_api_as_plain_http(
    live_server: str, key: bytes | None
) -> None:
    """The API has no WebSocket routes: an upgrade request gets the API's own answer, JSON
    with the request id and the security headers, not a bare 403 or a plain-text 400."""
    raw = (
        b"GET /api/v1/users/2147483647 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        + (b"Sec-WebSocket-Key: " + key + b"\r\n" if key else b"")
        + b"\r\n"
    )
    status, headers, body = exchange(live_server, raw)
    assert status == "HTTP/1.1 404 Not Found"
    assert json.loads(body)["error"] == "user_not_found"
    assert len(headers["x-request-id"]) == 32
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value


def test_an_endless_request_head_is_cut_off_with_431(live_server: str) -> None:
    """A header that never ends is refused once the head passes 16 KiB, in the JSON shape,
    instead of being buffered whole; a large but normal head still gets its answer."""
    port = int(live_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        for _ in range(4096):  # up to 64 MiB, in 16 KiB writes
            try:
                conn.sendall(b"a" * 16384)
            except (BrokenPipeError, ConnectionResetError):
                break
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"] == "request_header_too_large"
    status, _, body = exchange(
        live_server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"X-Pad: "
        + b"p" * 12000
        + b"\r\n\r\n",
    )
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body) == {"status": "ok"}


def head_of(size: int, *headers: bytes) -> bytes:
    """`GET /healthz` with `headers` and an `X-Pad` header filling the request line and
    headers to exactly `size` bytes, the blank line that ends them included."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers)
    pad = size - len(start) - len(b"X-Pad: \r\n\r\n")
    head = start + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


def assert_head_too_large(status: str, headers: dict[str, str], body: bytes) -> None:
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body)["error"] == "request_header_too_large"
    assert headers["connection"] == "close"
    assert len(headers["x-request-id"]) == 32
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value


def test_a_head_over_16_kib_in_one_read_is_refused_with_431(live_server: str) -> None:
    """The limit holds whatever the read size: a 20 kB header sent in one write, which the
    server reads (and the parser completes) in one go, is refused as well."""
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert_head_too_large(*exchange(live_server, raw))


def test_many_small_headers_over_16_kib_are_refused_with_431(live_server: str) -> None:
    """2,000 short headers (about 23 kB) sent in one write count as one head."""
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    assert_head_too_large(*exchange(live_server, raw))


def test_a_head_of_exactly_16_kib_is_served_one_byte_more_is_not(live_server: str) -> None:
    """MAX_HEAD_BYTES is the request line and the headers, the final blank line included:
    a head of exactly that size is answered, one byte more gets the 431."""
    status, _, body = exchange(live_server, head_of(MAX_HEAD_BYTES, b"X-A: 1\r\n" * 50))
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body) == {"status": "ok"}
    assert_head_too_large(*exchange(live_server, head_of(MAX_HEAD_BYTES + 1)))


def test_serve_raises_its_open_files_limit_to_the_hard_limit(
    settings: Settings, tmp_path: Path
) -> None:
    """Each connection holds a file descriptor: started with a soft RLIMIT_NOFILE below the
    hard one, the API raises it to the hard limit, and says so once in its log."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard // 2)

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    log_path = tmp_path / "api.log"
    with serving_with(settings, log_path, {}, lower_soft_limit) as (url, proc):
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            assert response.status == 200
        soft_now, hard_now = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    assert (soft_now, hard_now) == (hard, hard)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    limits = [line for line in lines if line.get("event") == "open_files_limit"]
    assert len(limits) == 1, limits
    assert (limits[0]["before"], limits[0]["soft"], limits[0]["hard"]) == (low, hard, hard)


def test_an_encoded_slash_is_refused_whatever_its_decoded_path_names(
    settings: Settings, tmp_path: Path
) -> None:
    """`PUT /api%2Fv1%2Fusers%2F<id>%2Fincrement` decodes to an increment's path, and used
    to count: it is a JSON 400 invalid_path now, logged and counted like any answer, and
    the counter does not move."""
    log_path = tmp_path / "api.log"
    with serving(settings, log_path) as (url, _):
        created = urllib.request.Request(
            f"{url}/api/v1/users",
            data=b'{"username": "slashed"}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(created, timeout=10) as response:
            user_id = json.loads(response.read())["data"]["id"]
        raw = f"PUT /api%2Fv1%2Fusers%2F{user_id}%2Fincrement HTTP/1.1\r\nHost: x\r\n"
        status, headers, body = exchange(url, raw.encode() + b"Connection: close\r\n\r\n")
        with urllib.request.urlopen(f"{url}/api/v1/users/{user_id}/count", timeout=10) as r:
            counter = json.loads(r.read())["data"]["counter"]
    assert status == "HTTP/1.1 400 Bad Request"
    assert json.loads(body)["error"] == "invalid_path"
    assert len(headers["x-request-id"]) == 32
    for name, value in EXPECTED_HEADERS.items():
        assert headers[name] == value
    assert counter == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    assert ("PUT", "unmatched", 400) in [(x["method"], x["route"], x["status"]) for x in access]


def test_a_sampled_access_log_keeps_every_error_and_one_success_in_n(
    settings: Settings, tmp_path: Path
) -> None:
    """ACCESS_LOG_SAMPLE=4: of 8 successful requests 2 get a line, saying `sampled: 4`;
    each of 3 errors gets its own; the metrics still count all 11."""
    log_path = tmp_path / "api.log"
    with serving(settings, log_path, ACCESS_LOG_SAMPLE="4") as (url, proc):
        for _ in range(8):
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                assert r.status == 200
        for _ in range(3):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"{url}/api/v1/users/999999/count", timeout=10)
            assert answer.value.code == 404
            answer.value.close()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line[:1] == "{"]
    access = [line for line in lines if line.get("event") == "request"]
    ok = [line for line in access if line["route"] == "/healthz"]
    errors = [line for line in access if line["status"] == 404]
    assert len(ok) == 2
    assert all(line["sampled"] == 4 for line in ok)
    assert len(errors) == 3
    assert all("sampled" not in line for line in errors)
    assert 'route="/healthz",status="200"} 8.0' in metrics
