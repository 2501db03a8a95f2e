"""Configuration read once from the environment (and an optional `.env` file).

Environment variables win over `.env`. Every value is cast and checked here, so a
bad value stops start-up with a message naming the variable, never later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url
from starlette.config import Config

T = TypeVar("T")

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")
_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")

IPNetwork = IPv4Network | IPv6Network


# Accounts migrate must never take over as the least-privilege service user.
_RESERVED_MYSQL_USERS = frozenset(
    {"root", "mysql.sys", "mysql.session", "mysql.infoschema", "mariadb.sys", "debian-sys-maint"}
)


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


def _redis_url(config: Config, default: str) -> str:
    """REDIS_URL, checked as redis-py will read it. The messages never repeat the URL: it
    may hold a password, and a password with an unencoded '/' or '#' reads as a port."""
    url = read(config, "REDIS_URL", str, default)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix":
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise SettingsError(
                "REDIS_URL has no valid port (0-65535); percent-encode a password that holds"
                " '/', '#', '?' or '@'"
            ) from None
        if not parts.hostname:
            raise SettingsError("REDIS_URL names no host, as in redis://host:6379/0")
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise SettingsError("REDIS_URL's path must be a database number, as in /0")
    try:
        parse_url(url)
    except ValueError:
        raise SettingsError(
            "REDIS_URL has an option redis-py cannot read; check the part after '?'"
        ) from None
    return url


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _items(config: Config, key: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(x.strip() for x in read(config, key, str, "").split(",") if x.strip())


def _networks(config: Config, key: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ip_network(x, strict=False) for x in _items(config, key))
    except ValueError as e:
        raise SettingsError(f"{key} must be IP addresses or CIDR ranges, comma-separated") from e


def _addresses(config: Config, key: str) -> tuple[tuple[str, int], ...]:
    """`host:port` items (`[v6]:port` for IPv6), comma-separated."""
    found = []
    for item in _items(config, key):
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{key} must be host:port items, comma-separated; got {item!r}")
        found.append((host, int(port)))
    return tuple(found)


def _origins(config: Config) -> tuple[str, ...]:
    origins = _items(config, "CORS_ALLOW_ORIGINS")
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
            raise SettingsError(
                f"CORS_ALLOW_ORIGINS: {origin!r} is not an origin like https://app.example.com"
            )
    return origins


def _auth_tokens(config: Config) -> tuple[str, ...]:
    """One token per line of AUTH_TOKEN_FILE; two lines let a token be rotated."""
    raw = read_secret(config, "AUTH_TOKEN", "")
    tokens = tuple(line.strip() for line in raw.splitlines() if line.strip())
    if any(not _TOKEN_RE.fullmatch(t) for t in tokens):
        # The token itself is left out of the message: it is a secret.
        raise SettingsError(
            "AUTH_TOKEN_FILE (or AUTH_TOKEN) must hold tokens of 16-512 characters "
            "from A-Z a-z 0-9 - . _ ~ + / =, one per line"
        )
    return tokens


def _name(config: Config, key: str, default: str) -> str:
    value = read(config, key, str, default).strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise SettingsError(f"{key} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def _tls_file(config: Config, key: str, url: str) -> str:
    path = read(config, key, str, "")
    if path and not url.startswith("rediss://"):
        raise SettingsError(f"{key} needs a rediss:// REDIS_URL")
    if path and not Path(path).is_file():
        raise SettingsError(f"{key} names a file that does not exist")
    return path


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
    # Sentinel mode (docs/configuration.md#redis-modes): the data nodes are found through
    # these; REDIS_URL's credentials, database and TLS still apply to them.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "usercounter"
    redis_sentinel_password: str = field(default="", repr=False)
    # Cluster mode (docs/configuration.md#redis-modes): seed nodes of a Redis Cluster;
    # REDIS_URL's credentials and TLS still apply to every node.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    # Durable acknowledgements: a write is answered once this many replicas have it.
    redis_ack_replicas: int = 0
    redis_ack_timeout_ms: int = 100
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
    # A request line and headers must arrive whole within this (counted from a new
    # connection, or from a kept-alive connection's next byte), or the answer is 408.
    request_head_timeout_seconds: float = 10.0
    log_format: str = "auto"
    log_level: str = "info"
    access_log: str = "all"
    # With ACCESS_LOG=all: one successful request in N gets its line (errors always do).
    access_log_sample: int = 1
    # Operations and protections (docs/operations.md#protections); all off by default.
    mysql_admin_user: str = ""
    mysql_admin_password: str = field(default="", repr=False)
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    rate_limit_per_minute: int = 0
    rate_limit_trusted_proxies: tuple[IPNetwork, ...] = ()
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    request_timeout_seconds: float = 0.0

    @classmethod
    def from_env(cls, config: Config | None = None) -> Settings:
        c = config or load_config()
        prefix = read(c, "REDIS_KEY_PREFIX", str, cls.key_prefix)
        if not _PREFIX_RE.match(prefix):
            raise SettingsError(
                "REDIS_KEY_PREFIX must be 1-32 characters of letters, digits, '_', '.', ':' or '-'"
            )
        database = read(c, "MYSQL_DATABASE", str, cls.mysql_database)
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", database):
            raise SettingsError("MYSQL_DATABASE must be 1-64 letters, digits or '_'")
        mysql_user = read(c, "MYSQL_USER", str, cls.mysql_user)
        admin_user = read(c, "MYSQL_ADMIN_USER", str, cls.mysql_admin_user)
        if admin_user and admin_user == mysql_user:
            raise SettingsError("MYSQL_ADMIN_USER must differ from MYSQL_USER (the service's user)")
        if admin_user and mysql_user.lower() in _RESERVED_MYSQL_USERS:
            # migrate would set this account's password and cut its grants down.
            raise SettingsError(
                f"MYSQL_USER must name the service's own account when MYSQL_ADMIN_USER is set, "
                f"not {mysql_user!r}"
            )
        redis_url = _redis_url(c, cls.redis_url)
        cert = _tls_file(c, "REDIS_TLS_CERT_FILE", redis_url)
        key = _tls_file(c, "REDIS_TLS_KEY_FILE", redis_url)
        if bool(cert) != bool(key):
            raise SettingsError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
        sentinels = _addresses(c, "REDIS_SENTINELS")
        cluster_nodes = _addresses(c, "REDIS_CLUSTER_NODES")
        ack_replicas = read_int(c, "REDIS_ACK_REPLICAS", cls.redis_ack_replicas, 0, 16)
        if sentinels and cluster_nodes:
            raise SettingsError(
                "REDIS_SENTINELS and REDIS_CLUSTER_NODES exclude each other: set one Redis mode"
            )
        ack_timeout_ms = read_int(c, "REDIS_ACK_TIMEOUT_MS", cls.redis_ack_timeout_ms, 1, 60_000)
        redis_timeout = read_float(c, "REDIS_TIMEOUT_SECONDS", cls.redis_timeout_seconds, 0.05, 300)
        if ack_timeout_ms >= redis_timeout * 1000:
            # The WAIT would outlast the socket timeout: the connection would be dropped
            # and the writes it waited for reported as an outage, not as unconfirmed.
            raise SettingsError("REDIS_ACK_TIMEOUT_MS must be below REDIS_TIMEOUT_SECONDS (in ms)")
        origins = _origins(c)
        credentials = read(c, "CORS_ALLOW_CREDENTIALS", boolean, cls.cors_allow_credentials)
        if credentials and "*" in origins:
            raise SettingsError("CORS_ALLOW_CREDENTIALS cannot be used with CORS_ALLOW_ORIGINS=*")
        return cls(
            mysql_host=read(c, "MYSQL_HOST", str, cls.mysql_host),
            mysql_port=read_int(c, "MYSQL_PORT", cls.mysql_port, 1, 65535),
            mysql_user=mysql_user,
            mysql_password=read_secret(c, "MYSQL_PASSWORD", cls.mysql_password),
            mysql_database=database,
            mysql_pool_size=read_int(c, "MYSQL_POOL_SIZE", cls.mysql_pool_size, 1, 1000),
            mysql_timeout_seconds=read_float(
                c, "MYSQL_TIMEOUT_SECONDS", cls.mysql_timeout_seconds, 0.05, 300
            ),
            redis_url=redis_url,
            redis_password=read_secret(c, "REDIS_PASSWORD", cls.redis_password),
            redis_pool_size=read_int(c, "REDIS_POOL_SIZE", cls.redis_pool_size, 1, 10_000),
            redis_timeout_seconds=redis_timeout,
            redis_sentinels=sentinels,
            redis_sentinel_master=_name(c, "REDIS_SENTINEL_MASTER", cls.redis_sentinel_master),
            redis_sentinel_password=read_secret(
                c, "REDIS_SENTINEL_PASSWORD", cls.redis_sentinel_password
            ),
            redis_cluster_nodes=cluster_nodes,
            redis_ack_replicas=ack_replicas,
            redis_ack_timeout_ms=ack_timeout_ms,
            key_prefix=prefix,
            buckets=read_int(c, "COUNTER_BUCKETS", cls.buckets, 1, 16_384),
            # At least a minute: a counter must not expire (and be re-seeded from MySQL)
            # while a slow MySQL read that started before its last sync is still running.
            idle_ttl_seconds=read_int(
                c, "COUNTER_IDLE_TTL_SECONDS", cls.idle_ttl_seconds, 60, 365 * 86_400
            ),
            tombstone_ttl_seconds=read_int(
                c, "TOMBSTONE_TTL_SECONDS", cls.tombstone_ttl_seconds, 60, 3650 * 86_400
            ),
            absent_ttl_seconds=read_int(c, "ABSENT_TTL_SECONDS", cls.absent_ttl_seconds, 1, 3600),
            idempotency_ttl_seconds=read_int(
                c, "IDEMPOTENCY_TTL_SECONDS", cls.idempotency_ttl_seconds, 1, 30 * 86_400
            ),
            host=read(c, "HOST", str, cls.host),
            port=read_int(c, "PORT", cls.port, 1, 65535),
            web_concurrency=read_int(c, "WEB_CONCURRENCY", cls.web_concurrency, 1, 64),
            max_body_bytes=read_int(c, "MAX_BODY_BYTES", cls.max_body_bytes, 64, 1 << 20),
            request_head_timeout_seconds=read_float(
                c, "REQUEST_HEAD_TIMEOUT_SECONDS", cls.request_head_timeout_seconds, 1, 300
            ),
            log_format=read_choice(c, "LOG_FORMAT", cls.log_format, ("auto", "json", "console")),
            log_level=read_choice(
                c, "LOG_LEVEL", cls.log_level, ("debug", "info", "warning", "error", "critical")
            ),
            access_log=read_choice(c, "ACCESS_LOG", cls.access_log, ("all", "errors", "off")),
            access_log_sample=read_int(c, "ACCESS_LOG_SAMPLE", cls.access_log_sample, 1, 1_000_000),
            mysql_admin_user=admin_user,
            mysql_admin_password=read_secret(c, "MYSQL_ADMIN_PASSWORD", cls.mysql_admin_password),
            redis_tls_ca_file=_tls_file(c, "REDIS_TLS_CA_FILE", redis_url),
            redis_tls_cert_file=cert,
            redis_tls_key_file=key,
            rate_limit_per_minute=read_int(
                c, "RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute, 0, 1_000_000
            ),
            rate_limit_trusted_proxies=_networks(c, "RATE_LIMIT_TRUSTED_PROXIES"),
            cors_allow_origins=origins,
            cors_allow_credentials=credentials,
            auth_tokens=_auth_tokens(c),
            request_timeout_seconds=read_float(
                c, "REQUEST_TIMEOUT_SECONDS", cls.request_timeout_seconds, 0.0, 300
            ),
        )

    def environ(self) -> dict[str, str]:
        """The variables with which a child process (a worker, a server under test) reads
        the same connection settings, key layout and buckets."""
        env = {
            "MYSQL_HOST": self.mysql_host,
            "MYSQL_PORT": str(self.mysql_port),
            "MYSQL_USER": self.mysql_user,
            "MYSQL_PASSWORD": self.mysql_password,
            "MYSQL_DATABASE": self.mysql_database,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.key_prefix,
            "COUNTER_BUCKETS": str(self.buckets),
            "COUNTER_IDLE_TTL_SECONDS": str(self.idle_ttl_seconds),
        }
        if self.redis_password:
            env["REDIS_PASSWORD"] = self.redis_password
        if self.redis_sentinels:
            env["REDIS_SENTINELS"] = ",".join(f"{h}:{p}" for h, p in self.redis_sentinels)
            env["REDIS_SENTINEL_MASTER"] = self.redis_sentinel_master
        if self.redis_cluster_nodes:
            env["REDIS_CLUSTER_NODES"] = ",".join(f"{h}:{p}" for h, p in self.redis_cluster_nodes)
        if self.redis_sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.redis_sentinel_password
        if self.redis_ack_replicas:
            env["REDIS_ACK_REPLICAS"] = str(self.redis_ack_replicas)
            env["REDIS_ACK_TIMEOUT_MS"] = str(self.redis_ack_timeout_ms)
        return env

    def safe_summary(self) -> dict[str, Any]:
        """What may be logged at start-up: no passwords, no URL credentials."""
        parts = urlsplit(self.redis_url)
        redis_where = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"
        return {
            "mysql": f"{self.mysql_host}:{self.mysql_port}/{self.mysql_database}",
            "mysql_user": self.mysql_user,
            "redis": redis_where,
            **(
                {
                    "redis_sentinels": [f"{h}:{p}" for h, p in self.redis_sentinels],
                    "redis_sentinel_master": self.redis_sentinel_master,
                }
                if self.redis_sentinels
                else {}
            ),
            **(
                {"redis_cluster_nodes": [f"{h}:{p}" for h, p in self.redis_cluster_nodes]}
                if self.redis_cluster_nodes
                else {}
            ),
            "redis_ack_replicas": self.redis_ack_replicas,
            "key_prefix": self.key_prefix,
            "buckets": self.buckets,
        }
