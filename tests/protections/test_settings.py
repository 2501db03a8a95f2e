"""The protection and operations settings: off by default, checked at start-up, documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.config import Config

from counter_svc.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
NEW_VARIABLES = (
    "RATE_LIMIT_PER_MINUTE",
    "RATE_LIMIT_TRUSTED_PROXIES",
    "CORS_ALLOW_ORIGINS",
    "CORS_ALLOW_CREDENTIALS",
    "AUTH_TOKEN_FILE",
    "REQUEST_TIMEOUT_SECONDS",
    "REQUEST_HEAD_TIMEOUT_SECONDS",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
    "MYSQL_ADMIN_USER",
    "MYSQL_ADMIN_PASSWORD",
)


def test_everything_is_off_by_default() -> None:
    """No rate limit, CORS, auth, timeout, TLS files or admin user unless configured."""
    s = Settings.from_env(Config(environ={}))
    assert s.rate_limit_per_minute == 0
    assert s.rate_limit_trusted_proxies == ()
    assert s.cors_allow_origins == ()
    assert s.cors_allow_credentials is False
    assert s.auth_tokens == ()
    assert s.request_timeout_seconds == 0
    assert (s.redis_tls_ca_file, s.redis_tls_cert_file, s.redis_tls_key_file) == ("", "", "")
    assert s.mysql_admin_user == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("RATE_LIMIT_PER_MINUTE", "-1"),
        ("RATE_LIMIT_PER_MINUTE", "lots"),
        ("RATE_LIMIT_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("RATE_LIMIT_TRUSTED_PROXIES", "proxy.local"),
        ("CORS_ALLOW_CREDENTIALS", "maybe"),
        ("REQUEST_TIMEOUT_SECONDS", "-5"),
        ("REQUEST_TIMEOUT_SECONDS", "soon"),
        ("REQUEST_HEAD_TIMEOUT_SECONDS", "0"),
        ("REQUEST_HEAD_TIMEOUT_SECONDS", "301"),
        ("REQUEST_HEAD_TIMEOUT_SECONDS", "soon"),
        ("AUTH_TOKEN_FILE", "/nonexistent/token"),
        ("MYSQL_ADMIN_PASSWORD_FILE", "/nonexistent/password"),
    ],
)
def test_bad_value_names_the_variable(key: str, value: str) -> None:
    """A bad value of a new setting fails with a message that names it."""
    with pytest.raises(SettingsError, match=key):
        Settings.from_env(Config(environ={key: value}))


def test_request_head_timeout_is_on_by_default() -> None:
    """Unlike the protections above, the request-head timeout is always on: 10 s unless
    REQUEST_HEAD_TIMEOUT_SECONDS says otherwise."""
    assert Settings.from_env(Config(environ={})).request_head_timeout_seconds == 10
    s = Settings.from_env(Config(environ={"REQUEST_HEAD_TIMEOUT_SECONDS": "2.5"}))
    assert s.request_head_timeout_seconds == 2.5


def test_trusted_proxies_are_parsed_as_networks() -> None:
    """Addresses and CIDRs, IPv4 and IPv6, comma-separated with spaces."""
    s = Settings.from_env(Config(environ={"RATE_LIMIT_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}))
    assert [str(n) for n in s.rate_limit_trusted_proxies] == ["10.0.0.0/8", "::1/128"]


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    """The admin password and the auth tokens never show in repr or the start-up summary."""
    token = tmp_path / "token"
    token.write_text("a-token-of-sixteen-chars\n")
    s = Settings.from_env(
        Config(environ={"MYSQL_ADMIN_PASSWORD": "admin-secret-pw", "AUTH_TOKEN_FILE": str(token)})
    )
    shown = repr(s) + repr(s.safe_summary())
    assert "admin-secret-pw" not in shown
    assert "a-token-of-sixteen-chars" not in shown


@pytest.mark.parametrize("name", NEW_VARIABLES)
def test_env_example_documents_each_new_variable(name: str) -> None:
    """.env.example lists each new variable under a comment (a group of variables may
    share one)."""
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    (index,) = [i for i, ln in enumerate(lines) if re.match(rf"{name}=", ln)]
    while re.match(r"[A-Z][A-Z0-9_]*=", lines[index - 1]):
        index -= 1
    assert lines[index - 1].startswith("# "), name
