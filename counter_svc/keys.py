"""The key layout of a deployment: every Redis key name is spelled here (as arq keeps its
keys in one place).

Per-user keys are bucketed by `id % buckets` and carry the bucket as a Cluster hash tag
(`uc:{7}:c:123`), so each script touches one slot and buckets drain in parallel. The API
and the sync worker both build their names from `Keys`; docs/design.md has the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from counter_svc.connections import RedisClient
from counter_svc.settings import Settings


@dataclass(frozen=True)
class Keys:
    """The key layout of one deployment (prefix and bucket count are fixed for its life)."""

    prefix: str = "uc"
    buckets: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(settings.key_prefix, settings.buckets)

    def bucket(self, user_id: int) -> int:
        return user_id % self.buckets

    def tag(self, bucket: int) -> str:
        return f"{self.prefix}:{{{bucket}}}"

    def counter(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:c:{user_id}"

    def dirty(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:dirty"

    def inflight(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:inflight"

    def inflight_since(self, bucket: int) -> str:
        """When the oldest id of the claimed batch became dirty (ms): the lag of `inflight`."""
        return f"{self.tag(bucket)}:inflight_since"

    def lease(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:lease"

    def generation(self, bucket: int) -> str:
        """Bumped by every script that can make a counter of the bucket disappear (gives it
        the idle TTL, or deletes it): a seed read from MySQL before a bump may be stale."""
        return f"{self.tag(bucket)}:gen"

    def gone(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:gone:{user_id}"

    def absent(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:absent:{user_id}"

    def idem(self, user_id: int, key: str) -> str:
        return f"{self.tag(self.bucket(user_id))}:idem:{user_id}:{key}"

    def rate_limit(self, client: str) -> str:
        """The request budget of one client (an address or a /64); its own hash tag."""
        return f"{self.prefix}:rl:{{{client}}}"

    def all_keys_pattern(self) -> str:
        return f"{self.prefix}:*"


async def delete_all(redis: RedisClient, keys: Keys) -> int:
    """Delete every key of this prefix (a test run, a benchmark, a retired tenant)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.all_keys_pattern(), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.delete(*batch)
            batch.clear()
    if batch:
        deleted += await redis.delete(*batch)
    return deleted
