"""Optional bearer-token authentication of create, increment and delete."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.config import Config

from counter_svc.settings import Settings, SettingsError
from tests.helpers import create_user, running_app, serving

TOTAL = "usercounter_http_requests_total{"
TOKEN = "tok-0123456789abcdef-SECRET"
NEXT_TOKEN = "tok-fedcba9876543210-NEXT"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_auth(settings: Settings, *tokens: str) -> Settings:
    return replace(settings, auth_tokens=tokens or (TOKEN,))


async def test_auth_is_off_by_default(client: httpx.AsyncClient) -> None:
    """Without AUTH_TOKEN_FILE, create, increment and delete need no credentials."""
    user_id = await create_user(client, "open")
    assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
    assert (await client.delete(f"/api/v1/users/{user_id}")).status_code == 200


async def test_mutations_without_a_token_get_a_json_401(settings: Settings) -> None:
    """POST, PUT and DELETE without a token are 401 with a Bearer challenge."""
    async with running_app(with_auth(settings)) as client:
        for response in (
            await client.post("/api/v1/users", json={"username": "x"}),
            await client.put("/api/v1/users/1/increment"),
            await client.delete("/api/v1/users/1"),
            await client.put("/api/v1/users/1/increment", headers={"Authorization": TOKEN}),
        ):
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"] == 'Bearer realm="usercounter"'
            assert response.headers["x-content-type-options"] == "nosniff"


async def test_an_encoded_slash_is_refused_before_auth_and_routing(settings: Settings) -> None:
    """With auth on, a path with an encoded slash gets the JSON 400 invalid_path, not a 401
    and not the route its decoded form names; the request id, the security headers, the
    access log and the request metrics are there as for any other answer."""
    async with running_app(with_auth(settings)) as client:
        response = await client.put(
            "/api%2Fv1%2Fusers%2F1%2Fincrement", headers={"X-Request-ID": "slash-1"}
        )
        exposition = (await client.get("/metrics")).text
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_path"
    assert response.headers["x-request-id"] == "slash-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert TOTAL + 'method="PUT",route="unmatched",status="400"} 1.0' in exposition


async def test_wrong_method_and_unknown_route_keep_405_and_404(settings: Settings) -> None:
    """With auth on, a wrong method still answers 405 and an unknown route 404, not 401."""
    async with running_app(with_auth(settings)) as client:
        wrong_method = await client.put("/api/v1/users/1")
        assert wrong_method.status_code == 405
        assert "DELETE" in wrong_method.headers["allow"]
        assert (await client.delete("/api/v1/nothing")).status_code == 404


async def test_refusals_are_counted_under_their_route(settings: Settings) -> None:
    """A 401 is labelled with the route it was refused on in the request metrics."""
    async with running_app(with_auth(settings)) as client:
        await client.put("/api/v1/users/7/increment")
        text = (await client.get("/metrics")).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(TOTAL) and 'status="401"' in ln]
    assert 'route="/api/v1/users/{user_id}/increment"' in line
    assert 'method="PUT"' in line


async def test_a_wrong_token_is_refused(settings: Settings) -> None:
    """A wrong bearer token is 401 with error="invalid_token" in the challenge."""
    async with running_app(with_auth(settings)) as client:
        response = await client.post(
            "/api/v1/users", json={"username": "x"}, headers=bearer(TOKEN + "x")
        )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_the_right_token_lets_mutations_through(settings: Settings) -> None:
    """With the token, create, increment and delete work as without auth."""
    async with running_app(with_auth(settings)) as client:
        created = await client.post("/api/v1/users", json={"username": "ok"}, headers=bearer(TOKEN))
        user_id = created.json()["data"]["id"]
        incremented = await client.put(f"/api/v1/users/{user_id}/increment", headers=bearer(TOKEN))
        deleted = await client.delete(f"/api/v1/users/{user_id}", headers=bearer(TOKEN))
    assert (created.status_code, incremented.status_code, deleted.status_code) == (201, 200, 200)


async def test_reads_and_probes_need_no_token(settings: Settings) -> None:
    """GETs of users and counters, probes and metrics stay open with auth on."""
    async with running_app(with_auth(settings)) as client:
        created = await client.post("/api/v1/users", json={"username": "r"}, headers=bearer(TOKEN))
        user_id = created.json()["data"]["id"]
        for path in (f"/api/v1/users/{user_id}", f"/api/v1/users/{user_id}/count", "/healthz"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/metrics")).status_code == 200


async def test_two_tokens_allow_a_rotation(settings: Settings) -> None:
    """Either line of a two-line token file is accepted, so clients can move over."""
    async with running_app(with_auth(settings, TOKEN, NEXT_TOKEN)) as client:
        for token in (TOKEN, NEXT_TOKEN):
            response = await client.post(
                "/api/v1/users", json={"username": token[-4:]}, headers=bearer(token)
            )
            assert response.status_code == 201


def test_the_token_file_is_read_one_token_a_line(tmp_path: Path) -> None:
    """AUTH_TOKEN_FILE holds one token per line; blank lines are ignored; never in repr."""
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n\n{NEXT_TOKEN}\n")
    s = Settings.from_env(Config(environ={"AUTH_TOKEN_FILE": str(path)}))
    assert s.auth_tokens == (TOKEN, NEXT_TOKEN)
    assert TOKEN not in repr(s)


@pytest.mark.parametrize("content", ["short", "has space in the middle of it", "é" * 20])
def test_a_weak_or_malformed_token_stops_start_up(tmp_path: Path, content: str) -> None:
    """A token under 16 characters or outside the token68 alphabet is refused, naming
    AUTH_TOKEN_FILE and without printing the token."""
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(SettingsError, match="AUTH_TOKEN_FILE") as info:
        Settings.from_env(Config(environ={"AUTH_TOKEN_FILE": str(path)}))
    assert content not in str(info.value)


@contextmanager
def serve(settings: Settings, log_path: Path, **env: str) -> Iterator[str]:
    """The API as a real process with extra variables; yields its base URL."""
    with serving(settings, log_path, **env) as (url, _):
        yield url


async def test_tokens_never_appear_in_the_logs(settings: Settings, tmp_path: Path) -> None:
    """A real server at LOG_LEVEL=debug, sent the right token, a wrong one and a token in
    a bad request, writes neither token anywhere in its output."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    guess = "guess-0123456789abcdef-WRONG"
    log_path = tmp_path / "api.log"
    with serve(settings, log_path, AUTH_TOKEN_FILE=str(token_file), LOG_LEVEL="debug") as url:
        async with httpx.AsyncClient(base_url=url) as client:
            created = await client.post(
                "/api/v1/users", json={"username": "logs"}, headers=bearer(TOKEN)
            )
            assert created.status_code == 201
            user_id = created.json()["data"]["id"]
            assert (
                await client.put(f"/api/v1/users/{user_id}/increment", headers=bearer(guess))
            ).status_code == 401
            assert (
                await client.put("/api/v1/users/abc/increment", headers=bearer(TOKEN))
            ).status_code == 400
            assert (
                await client.post("/api/v1/users", content=b"{", headers=bearer(TOKEN))
            ).status_code == 415
    output = log_path.read_text()
    assert '"status":401' in output  # the requests were logged ...
    assert TOKEN not in output  # ... without the token
    assert guess not in output
    assert "Bearer" not in output
