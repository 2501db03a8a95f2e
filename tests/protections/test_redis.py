"""Redis with a password and TLS, end to end: settings -> connection -> API requests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from starlette.config import Config

from counter_svc.settings import Settings, SettingsError
from tests.faults import free_port, port_open, wait_until
from tests.helpers import create_user, running_app

PASSWORD = "redis-test-password-0123"

pytestmark = pytest.mark.skipif(
    not shutil.which("redis-server") or not shutil.which("openssl"),
    reason="needs redis-server and openssl",
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, a server certificate for localhost/127.0.0.1, a client
    certificate, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d,
        )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=usercounter")):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d,
        )  # fmt: skip
    return Pki(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
        d / "other-ca.crt",
    )  # fmt: skip


@contextmanager
def redis_server(directory: Path, *args: str) -> Iterator[int]:
    """A private `redis-server` with `args` and a password; yields the port it serves."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "127.0.0.2", "--dir", str(directory),
            "--save", "", "--appendonly", "no",
            "--requirepass", PASSWORD, *(a.replace("{port}", str(port)) for a in args),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: port_open(port), 10, "redis-server to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def tls_redis(pki: Pki, tmp_path: Path) -> Iterator[int]:
    """Redis serving TLS only (no plain port), client certificates optional."""
    with redis_server(
        tmp_path / "tls",
        "--port", "0", "--tls-port", "{port}",
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "optional",
    ) as port:  # fmt: skip
        yield port


@pytest.fixture
def mtls_redis(pki: Pki, tmp_path: Path) -> Iterator[int]:
    """Redis serving TLS only and requiring a client certificate from the CA."""
    with redis_server(
        tmp_path / "mtls",
        "--port", "0", "--tls-port", "{port}",
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
    ) as port:  # fmt: skip
        yield port


def redis_settings(settings: Settings, **env: str) -> Settings:
    """The run's settings with the Redis part read from `env` by the real settings code."""
    parsed = Settings.from_env(Config(environ=env))
    return replace(
        settings,
        redis_url=parsed.redis_url,
        redis_password=parsed.redis_password,
        redis_tls_ca_file=parsed.redis_tls_ca_file,
        redis_tls_cert_file=parsed.redis_tls_cert_file,
        redis_tls_key_file=parsed.redis_tls_key_file,
    )


async def readiness(settings: Settings) -> dict[str, str]:
    async with running_app(settings) as client:
        body = (await client.get("/readyz")).json()
    checks: dict[str, str] = body["checks"]
    return checks


@pytest.mark.single_redis(reason="a private redis-server with a password and TLS")
async def test_password_and_tls_serve_the_api(
    settings: Settings, pki: Pki, tls_redis: int, tmp_path: Path
) -> None:
    """rediss:// with REDIS_TLS_CA_FILE and REDIS_PASSWORD_FILE: users are created,
    incremented and counted through the TLS Redis, and /readyz is ok."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    tls = redis_settings(
        settings,
        REDIS_URL=f"rediss://localhost:{tls_redis}/0",
        REDIS_PASSWORD_FILE=str(password_file),
        REDIS_TLS_CA_FILE=str(pki.ca),
    )
    async with running_app(tls) as client:
        user_id = await create_user(client, "tls")
        for _ in range(3):
            assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
        count = await client.get(f"/api/v1/users/{user_id}/count")
        ready = await client.get("/readyz")
    assert count.json()["data"]["counter"] == 3
    assert ready.json()["status"] == "ready"


@pytest.mark.single_redis(reason="a private redis-server with a password and TLS")
async def test_a_server_certificate_from_another_ca_is_refused(
    settings: Settings, pki: Pki, tls_redis: int
) -> None:
    """Verification is always on: trusting the wrong CA makes Redis unavailable."""
    wrong = redis_settings(
        settings,
        REDIS_URL=f"rediss://:{PASSWORD}@localhost:{tls_redis}/0",
        REDIS_TLS_CA_FILE=str(pki.other_ca),
    )
    assert (await readiness(wrong))["redis"] == "unavailable"


@pytest.mark.single_redis(reason="a private redis-server with a password and TLS")
async def test_the_host_name_is_checked(settings: Settings, pki: Pki, tls_redis: int) -> None:
    """A certificate for localhost/127.0.0.1 does not pass for 127.0.0.2, an address the
    same server listens on."""
    checks = {}
    for host in ("127.0.0.1", "127.0.0.2"):
        at = redis_settings(
            settings,
            REDIS_URL=f"rediss://:{PASSWORD}@{host}:{tls_redis}/0",
            REDIS_TLS_CA_FILE=str(pki.ca),
        )
        checks[host] = (await readiness(at))["redis"]
    assert checks == {"127.0.0.1": "ok", "127.0.0.2": "unavailable"}


@pytest.mark.single_redis(reason="a private redis-server with a password and TLS")
async def test_a_client_certificate_for_mutual_tls(
    settings: Settings, pki: Pki, mtls_redis: int
) -> None:
    """REDIS_TLS_CERT_FILE/KEY_FILE present a client certificate; without it the same
    server refuses the connection."""
    env = {"REDIS_URL": f"rediss://:{PASSWORD}@localhost:{mtls_redis}/0"}
    with_cert = redis_settings(
        settings,
        **env,
        REDIS_TLS_CA_FILE=str(pki.ca),
        REDIS_TLS_CERT_FILE=str(pki.client_cert),
        REDIS_TLS_KEY_FILE=str(pki.client_key),
    )
    without = redis_settings(settings, **env, REDIS_TLS_CA_FILE=str(pki.ca))
    assert (await readiness(with_cert))["redis"] == "ok"
    assert (await readiness(without))["redis"] == "unavailable"


@pytest.mark.single_redis(reason="a private redis-server with a password and TLS")
async def test_a_wrong_password_makes_redis_unavailable(
    settings: Settings, pki: Pki, tls_redis: int
) -> None:
    """The password is really checked: a wrong one is a 503 readiness, not a crash."""
    wrong = redis_settings(
        settings,
        REDIS_URL=f"rediss://localhost:{tls_redis}/0",
        REDIS_PASSWORD="not-the-password",
        REDIS_TLS_CA_FILE=str(pki.ca),
    )
    assert (await readiness(wrong))["redis"] == "unavailable"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_TLS_CA_FILE": "/etc/hostname"}, "REDIS_TLS_CA_FILE"),
        (
            {"REDIS_URL": "rediss://h:6379/0", "REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"},
            "REDIS_TLS_CA_FILE",
        ),
        (
            {"REDIS_URL": "rediss://h:6379/0", "REDIS_TLS_CERT_FILE": "/etc/hostname"},
            "REDIS_TLS_CERT_FILE",
        ),
    ],
)
def test_tls_settings_are_checked_at_start_up(env: dict[str, str], named: str) -> None:
    """TLS files need a rediss:// URL, must exist, and a certificate needs its key."""
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(Config(environ=env))
