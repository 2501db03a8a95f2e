"""Rate limiting per client, kept in Redis so that every replica shares one budget.

A client is its IP address (an IPv6 client by its /64, which one host usually owns
whole). `X-Forwarded-For` is believed only when the peer is a trusted proxy, and then
only up to the first address that is not a trusted proxy: the client could have written
anything to the left of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from counter_svc.connections import REDIS_ERRORS, RedisClient
from counter_svc.errors import error_response
from counter_svc.functions import Function, Library
from counter_svc.keys import Keys
from counter_svc.metrics import Metrics
from counter_svc.middleware.rejections import refuse
from counter_svc.settings import IPNetwork

log = structlog.get_logger(__name__)

PERIOD_SECONDS = 60
_SCOPE_PATH = "/api/"  # probes, /metrics and /openapi.json are never limited

# Rate limit, GCRA (a leaky bucket kept as one timestamp): `limit` requests per `period`,
# at most `limit` at once. KEYS: the client's key. ARGV: ms per request, limit.
# The key holds the "theoretical arrival time" of the next request. Redis' clock serves
# every replica alike. Returns {allowed 1/0, remaining, ms until full, ms until allowed}.
RATE_LIMIT = Function(
    "rate_limit",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local period = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - period
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
return {1, math.floor((now - allow_at) / interval), math.ceil(tat - now), 0}
""",
)
LIBRARY = Library("ratelimit", (RATE_LIMIT,))


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPNetwork, ...]
) -> str:
    """The address to charge: the peer, or, behind trusted proxies, the right-most
    `X-Forwarded-For` entry that is not one of them."""
    try:
        address = _plain(ip_address(peer or ""))
    except ValueError:
        return peer or "unknown"
    if trusted and _is_trusted(address, trusted):
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        for hop in reversed(hops):
            try:
                candidate = _plain(ip_address(hop))
            except ValueError:
                break  # garbage from the client: keep the last trusted hop
            address = candidate
            if not _is_trusted(candidate, trusted):
                break
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def _plain(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """An IPv4 peer seen through an IPv6 socket (::ffff:a.b.c.d) as the IPv4 address it is,
    so it matches IPv4 entries of RATE_LIMIT_TRUSTED_PROXIES; no zone id (fe80::1%eth0)."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped:
            return address.ipv4_mapped
        if address.scope_id:
            return IPv6Address(str(address).split("%", 1)[0])
    return address


def _is_trusted(address: IPv4Address | IPv6Address, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


class RateLimit:
    """`RATE_LIMIT_PER_MINUTE` requests per client per minute on `/api/`, with bursts of
    up to that many. Past it: 429 with `Retry-After`. Every limited answer carries
    `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy`.

    If Redis fails, the request is let through: the limiter must not turn a Redis
    blip into an outage of reads that the cache could still answer."""

    def __init__(
        self,
        app: ASGIApp,
        per_minute: int,
        trusted_proxies: tuple[IPNetwork, ...],
        keys: Keys,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.limit = per_minute
        self.trusted = trusted_proxies
        self.keys = keys
        self.metrics = metrics
        self.interval_ms = PERIOD_SECONDS * 1000 / per_minute
        self._policy = f"{per_minute};w={PERIOD_SECONDS}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_SCOPE_PATH):
            await self.app(scope, receive, send)
            return
        verdict = await self._charge(scope)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        allowed, remaining, reset_ms, retry_ms = verdict
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(math.ceil(reset_ms / 1000)).encode()),
            (b"ratelimit-policy", self._policy),
        ]
        if not allowed:
            retry_after = str(max(1, math.ceil(retry_ms / 1000)))
            response = error_response(
                429,
                "rate_limited",
                f"too many requests; retry in {retry_after} s",
                {"Retry-After": retry_after},
            )
            response.raw_headers += headers
            await refuse(response, scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _charge(self, scope: Scope) -> tuple[int, int, int, int] | None:
        client = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        who = client_address(client[0] if client else None, forwarded, self.trusted)
        redis: RedisClient = scope["app"].state.store.counters.redis
        try:
            raw = await LIBRARY.call(
                redis, RATE_LIMIT, [self.keys.rate_limit(who)], [self.interval_ms, self.limit]
            )
        except REDIS_ERRORS as e:
            self.metrics.redis_errors.inc()
            log.warning("rate_limit_unavailable", error=str(e))
            return None
        allowed, remaining, reset_ms, retry_ms = (int(x) for x in raw)
        return allowed, remaining, reset_ms, retry_ms
