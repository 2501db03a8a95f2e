"""Configuration read once from the environment (and an optional `.env` file).

Environment variables win over `.env`. Every value is cast and checked here, so a
bad value stops start-up with a message naming the variable, never later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from starlette.config import Config

T = TypeVar("T")

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")


class SettingsError(ValueError):
    """A configuration variable is missing or holds a value the service cannot use."""


def load_config(env_file: str | None = None) -> Config:
    """Environment first, then `.env` (or the file named by `ENV_FILE`) when it exists."""
    path = Path(env_file or os.environ.get("ENV_FILE", ".env"))
    return Config(path if path.is_file() else None)


def read(config: Config, key: str, cast: Callable[[str], T], default: T, check: str = "") -> T:
    """Read `key`, cast it, and raise `SettingsError` naming the key when it is unusable."""
    raw = config(key, default=None)
    if raw is None or raw == "":
        return default
    try:
        return cast(str(raw))
    except (TypeError, ValueError) as e:
        # The value itself is left out: it may be a secret.
        hint = f" ({check})" if check else ""
        raise SettingsError(f"{key} is not a valid {cast.__name__}{hint}") from e


def read_int(config: Config, key: str, default: int, low: int, high: int) -> int:
    value = read(config, key, int, default)
    if not low <= value <= high:
        raise SettingsError(f"{key} must be between {low} and {high}, got {value}")
    return value


def read_float(config: Config, key: str, default: float, low: float, high: float) -> float:
    value = read(config, key, float, default)
    if not low <= value <= high:
        raise SettingsError(f"{key} must be between {low} and {high}, got {value}")
    return value


def read_choice(config: Config, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = read(config, key, str, default).strip().lower()
    if value not in choices:
        raise SettingsError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def read_secret(config: Config, key: str, default: str) -> str:
    """A secret from `KEY_FILE` (a mounted Secret) if set, else from `KEY`."""
    file_key = f"{key}_FILE"
    path = read(config, file_key, str, "")
    if not path:
        return read(config, key, str, default)
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise SettingsError(f"{file_key} names a file that cannot be read: {e.strerror}") from e


def _redis_url(config: Config) -> str:
    url = read(config, "REDIS_URL", str, "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    return url


@dataclass(frozen=True)
class Settings:
    """Settings shared by the API and the sync worker."""

    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    mysql_user: str = "root"
    mysql_password: str = field(default="", repr=False)
    mysql_database: str = "usercounter"
    mysql_pool_size: int = 10
    mysql_timeout_seconds: float = 2.0
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_password: str = field(default="", repr=False)
    redis_pool_size: int = 64
    redis_timeout_seconds: float = 1.0
    key_prefix: str = "uc"
    buckets: int = 64
    idle_ttl_seconds: int = 86_400
    tombstone_ttl_seconds: int = 7 * 86_400
    absent_ttl_seconds: int = 10
    idempotency_ttl_seconds: int = 86_400
    host: str = "0.0.0.0"  # noqa: S104 - a container must listen on all interfaces
    port: int = 8080
    web_concurrency: int = 1
    max_body_bytes: int = 4096
    log_format: str = "auto"
    log_level: str = "info"

    @classmethod
    def from_env(cls, config: Config | None = None) -> Settings:
        c = config or load_config()
        prefix = read(c, "REDIS_KEY_PREFIX", str, "uc")
        if not _PREFIX_RE.match(prefix):
            raise SettingsError(
                "REDIS_KEY_PREFIX must be 1-32 characters of letters, digits, '_', '.', ':' or '-'"
            )
        database = read(c, "MYSQL_DATABASE", str, "usercounter")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", database):
            raise SettingsError("MYSQL_DATABASE must be 1-64 letters, digits or '_'")
        return cls(
            mysql_host=read(c, "MYSQL_HOST", str, "127.0.0.1"),
            mysql_port=read_int(c, "MYSQL_PORT", 3306, 1, 65535),
            mysql_user=read(c, "MYSQL_USER", str, "root"),
            mysql_password=read_secret(c, "MYSQL_PASSWORD", ""),
            mysql_database=database,
            mysql_pool_size=read_int(c, "MYSQL_POOL_SIZE", 10, 1, 1000),
            mysql_timeout_seconds=read_float(c, "MYSQL_TIMEOUT_SECONDS", 2.0, 0.05, 300),
            redis_url=_redis_url(c),
            redis_password=read_secret(c, "REDIS_PASSWORD", ""),
            redis_pool_size=read_int(c, "REDIS_POOL_SIZE", 64, 1, 10_000),
            redis_timeout_seconds=read_float(c, "REDIS_TIMEOUT_SECONDS", 1.0, 0.05, 300),
            key_prefix=prefix,
            buckets=read_int(c, "COUNTER_BUCKETS", 64, 1, 16_384),
            # At least a minute: a counter must not expire (and be re-seeded from MySQL)
            # while a slow MySQL read that started before its last sync is still running.
            idle_ttl_seconds=read_int(c, "COUNTER_IDLE_TTL_SECONDS", 86_400, 60, 365 * 86_400),
            tombstone_ttl_seconds=read_int(
                c, "TOMBSTONE_TTL_SECONDS", 7 * 86_400, 60, 3650 * 86_400
            ),
            absent_ttl_seconds=read_int(c, "ABSENT_TTL_SECONDS", 10, 1, 3600),
            idempotency_ttl_seconds=read_int(c, "IDEMPOTENCY_TTL_SECONDS", 86_400, 1, 30 * 86_400),
            host=read(c, "HOST", str, "0.0.0.0"),  # noqa: S104
            port=read_int(c, "PORT", 8080, 1, 65535),
            web_concurrency=read_int(c, "WEB_CONCURRENCY", 1, 1, 64),
            max_body_bytes=read_int(c, "MAX_BODY_BYTES", 4096, 64, 1 << 20),
            log_format=read_choice(c, "LOG_FORMAT", "auto", ("auto", "json", "console")),
            log_level=read_choice(
                c, "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
            ),
        )

    def safe_summary(self) -> dict[str, Any]:
        """What may be logged at start-up: no passwords, no URL credentials."""
        parts = urlsplit(self.redis_url)
        redis_where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"
        return {
            "mysql": f"{self.mysql_host}:{self.mysql_port}/{self.mysql_database}",
            "mysql_user": self.mysql_user,
            "redis": redis_where,
            "key_prefix": self.key_prefix,
            "buckets": self.buckets,
        }
