"""Bad input over every endpoint: a clear 4xx JSON error each time, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers import create_user

JSON = {"Content-Type": "application/json"}
U = "/api/v1/users"

# (method, path, headers, body, expected status, expected error code)
CASES: list[tuple[str, str, dict[str, str], bytes | None, int, str]] = [
    # ids
    ("GET", f"{U}/abc", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/0", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/-1", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/+1", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/1.0", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/1e3", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/0x10", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/2147483648", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/99999999999999999999999", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/%20", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/%00", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/%E2%91%A0", {}, None, 400, "invalid_user_id"),  # a circled digit one
    ("GET", f"{U}/%D9%A3", {}, None, 400, "invalid_user_id"),  # an Arabic-Indic three
    ("GET", f"{U}/abc/count", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/-5/count", {}, None, 400, "invalid_user_id"),
    ("PUT", f"{U}/abc/increment", {}, None, 400, "invalid_user_id"),
    ("PUT", f"{U}/4294967296/increment", {}, None, 400, "invalid_user_id"),
    ("DELETE", f"{U}/abc", {}, None, 400, "invalid_user_id"),
    ("DELETE", f"{U}/0", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/0000000001", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/01/count", {}, None, 400, "invalid_user_id"),
    ("PUT", f"{U}/01/increment", {}, None, 400, "invalid_user_id"),
    ("DELETE", f"{U}/007", {}, None, 400, "invalid_user_id"),
    ("GET", f"{U}/00", {}, None, 400, "invalid_user_id"),
    # idempotency keys
    ("PUT", f"{U}/1/increment", {"Idempotency-Key": ""}, None, 400, "invalid_idempotency_key"),
    (
        "PUT",
        f"{U}/1/increment",
        {"Idempotency-Key": "x" * 256},
        None,
        400,
        "invalid_idempotency_key",
    ),
    (
        "PUT",
        f"{U}/1/increment",
        {"Idempotency-Key": "tab\there"},
        None,
        400,
        "invalid_idempotency_key",
    ),
    (
        "PUT",
        f"{U}/1/increment",
        {"Idempotency-Key": "inner space"},
        None,
        400,
        "invalid_idempotency_key",
    ),
    ("PUT", f"{U}/1/increment", {"Idempotency-Key": " \t "}, None, 400, "invalid_idempotency_key"),
    (
        "PUT",
        f"{U}/1/increment",
        {"Idempotency-Key": " " + "x" * 256 + " "},
        None,
        400,
        "invalid_idempotency_key",
    ),
    # create bodies
    ("POST", U, JSON, b"", 400, "invalid_request"),
    ("POST", U, JSON, b"{", 400, "invalid_request"),
    ("POST", U, JSON, b"not json", 400, "invalid_request"),
    ("POST", U, JSON, b"[]", 400, "invalid_request"),
    ("POST", U, JSON, b'"alice"', 400, "invalid_request"),
    ("POST", U, JSON, b"null", 400, "invalid_request"),
    ("POST", U, JSON, b"{}", 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": null}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": 42}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": ["a"]}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": {"a": 1}}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": true}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": ""}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "   "}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": " padded "}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "' + b"a" * 101 + b'"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "line\\nbreak"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "nul\\u0000byte"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "bidi\\u202etrick"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "lone\\ud800surrogate"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "bad utf8 \xff"}', 400, "invalid_request"),
    ("POST", U, JSON, b'{"username": "a"} trailing', 400, "invalid_request"),
    ("POST", U, JSON, b"\xef\xbb\xbf" + b'{"username": "bom"}', 400, "invalid_request"),
    ("POST", U, JSON, b"[" * 100_000, 413, "payload_too_large"),
    ("POST", U, JSON, b'{"username": "' + b"a" * 10_000 + b'"}', 413, "payload_too_large"),
    ("POST", U, {}, b'{"username": "nobody"}', 415, "unsupported_media_type"),
    (
        "POST",
        U,
        {"Content-Type": "text/plain"},
        b'{"username": "x"}',
        415,
        "unsupported_media_type",
    ),
    (
        "POST",
        U,
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"username=x",
        415,
        "unsupported_media_type",
    ),
    # encoded slashes and backslashes: one answer for every route, known or not
    ("PUT", "/api%2Fv1%2Fusers%2F1%2Fincrement", {}, None, 400, "invalid_path"),
    ("GET", f"{U}/1%2Fcount", {}, None, 400, "invalid_path"),
    ("GET", f"{U}%2f1", {}, None, 400, "invalid_path"),
    ("DELETE", f"{U}/1%2F", {}, None, 400, "invalid_path"),
    ("POST", f"{U}%2F", JSON, b'{"username": "slash"}', 400, "invalid_path"),
    ("GET", f"{U}/1%5Ccount", {}, None, 400, "invalid_path"),
    ("GET", "/healthz%5c", {}, None, 400, "invalid_path"),
    ("GET", "/nope%2Fnope", {}, None, 400, "invalid_path"),
    # routes and methods
    ("GET", "/", {}, None, 404, "not_found"),
    ("GET", "/api/v1/user/1", {}, None, 404, "not_found"),
    ("GET", f"{U}/", {}, None, 404, "not_found"),
    ("GET", f"{U}/1/count/extra", {}, None, 404, "not_found"),
    ("GET", f"{U}/1/increment", {}, None, 405, "method_not_allowed"),
    ("POST", f"{U}/1/increment", {}, None, 405, "method_not_allowed"),
    ("PATCH", f"{U}/1", {}, None, 405, "method_not_allowed"),
    ("PUT", f"{U}/1", {}, None, 405, "method_not_allowed"),
    ("GET", U, {}, None, 405, "method_not_allowed"),
    ("DELETE", U, {}, None, 405, "method_not_allowed"),
    ("POST", f"{U}/1/count", {}, None, 405, "method_not_allowed"),
    ("POST", "/healthz", {}, None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), CASES)
async def test_bad_input_gets_a_clear_json_4xx(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    """Each malformed request gets the documented 4xx and a JSON {error, message} body."""
    response = await client.request(method, path, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert payload["error"] == code
    assert isinstance(payload["message"], str)
    assert payload["message"]
    assert "Traceback" not in response.text


async def test_oversized_body_is_refused_before_it_is_read_whole(
    client: httpx.AsyncClient,
) -> None:
    """A body streamed without Content-Length is cut off at the limit with 413."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 64 MiB if the server read it all
            sent += 1
            yield b"x" * 65536

    response = await client.post("/api/v1/users", headers=JSON, content=endless())
    assert response.status_code == 413
    assert sent < 5


async def test_username_limits_accept_100_unicode_characters(client: httpx.AsyncClient) -> None:
    """100 characters (emoji included) are accepted; the 101st is refused."""
    name = "\U0001f600" * 100
    response = await client.post(U, json={"username": name})
    assert response.status_code == 201
    assert response.json()["data"]["username"] == name


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    """Extra fields in the create body are ignored, as the original service did."""
    response = await client.post(U, json={"username": "extra", "counter": 99, "id": 5})
    assert response.status_code == 201
    assert response.json()["data"]["counter"] == 0


async def test_increment_ignores_a_body(client: httpx.AsyncClient) -> None:
    """A body sent with an increment is ignored, not an error."""
    user_id = await create_user(client, "with-body")
    response = await client.put(f"{U}/{user_id}/increment", content=b"whatever")
    assert response.status_code == 200


async def test_an_id_with_leading_zeros_is_refused_on_every_route(
    client: httpx.AsyncClient,
) -> None:
    """`/users/0<id>` is not another name for `/users/<id>`: one URL per user, so proxies,
    logs, rate limits and caches see what the API sees. Every route with an id refuses it,
    and nothing is counted or deleted."""
    user_id = await create_user(client, "zeros")
    padded = f"{user_id:010d}"
    assert padded != str(user_id)
    for method, path in (
        ("GET", f"{U}/{padded}"),
        ("GET", f"{U}/{padded}/count"),
        ("PUT", f"{U}/{padded}/increment"),
        ("DELETE", f"{U}/{padded}"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"] == "invalid_user_id"
        assert "without leading zeros" in response.json()["message"]
    user = (await client.get(f"{U}/{user_id}")).json()["data"]
    assert user["counter"] == 0
