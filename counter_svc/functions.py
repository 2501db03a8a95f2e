"""The Lua code of a process as one Redis Function library (`FUNCTION LOAD`, `FCALL`).

Functions are replicated with the data and kept by AOF, so a replica promoted by a
failover (or a Redis restarted from its AOF) already has them; scripts loaded with
`SCRIPT LOAD` are not, and every caller would meet NOSCRIPT at once. A Redis that has
no copy (new, or restarted empty) answers "Function not found" without running
anything: the library is loaded again and the call repeated, which is safe.

The library's name carries a hash of its code (`usercounter_api_3fa9c01b2e`), so the API
and the worker each load their own, and two versions of a process (a rolling upgrade)
run side by side, each calling its own functions.

In a Redis Cluster each primary holds its own copy: the library is loaded on every
primary, and a node that answers "Function not found" (a primary added by a reshard,
or restarted empty) gets it loaded on that node alone before the call is repeated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from counter_svc.connections import RedisClient


@dataclass(frozen=True)
class Function:
    """One function of a library: a Lua body that uses KEYS and ARGV as a script would.
    `flags`: `no-writes` (allowed at maxmemory and on a replica), `allow-oom`."""

    name: str
    body: str
    flags: tuple[str, ...] = ()
    # Which replies stand for a write a caller is promised (REDIS_ACK_REPLICAS: WAIT must
    # confirm it, else the reply becomes NotReplicated). Default: every reply of a
    # function that may write.
    confirms: Callable[[Any], bool] | None = field(default=None, compare=False)

    @property
    def writes(self) -> bool:
        return "no-writes" not in self.flags

    def promised_write(self, reply: Any) -> bool:
        if self.confirms is not None:
            return self.confirms(reply)
        return self.writes


class Library:
    """The functions of one process, under a name versioned by their code."""

    def __init__(self, kind: str, functions: Sequence[Function], prelude: str = "") -> None:
        # `prelude`: Lua run when the library loads (local helpers its functions share).
        parts = [prelude.strip(), *(_register(f) for f in functions)]
        digest = hashlib.sha1("\n".join(parts).encode(), usedforsecurity=False).hexdigest()
        self.name = f"usercounter_{kind}_{digest[:10]}"
        self.code = f"#!lua name={self.name}\n" + "\n".join(parts).replace(
            "function_name='", f"function_name='{self.name}_"
        )
        self.functions = {f.name: f for f in functions}

    def qualified(self, function: Function) -> str:
        """The name FCALL takes."""
        if self.functions.get(function.name) is not function:
            raise ValueError(f"{function.name} is not a function of {self.name}")
        return f"{self.name}_{function.name}"

    async def load(self, redis: RedisClient, key: Any = None) -> None:
        """Load the library; in a cluster on every primary, or with `key` only on the node
        that serves its slot."""
        if isinstance(redis, RedisCluster):
            await self.load_on(redis, None if key is None else redis.get_node_from_key(key))
        else:
            await redis.function_load(self.code, replace=True)

    async def load_on(self, redis: RedisCluster, node: ClusterNode | None) -> None:
        """Load the library on one node of a cluster (None: on every primary)."""
        target = RedisCluster.PRIMARIES if node is None else node
        await redis.execute_command("FUNCTION LOAD", "REPLACE", self.code, target_nodes=target)

    async def call(
        self, redis: RedisClient, function: Function, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        """FCALL on `redis`, loading the library first where it is missing."""
        name = self.qualified(function)
        try:
            return await redis.fcall(name, len(keys), *keys, *args)
        except ResponseError as e:
            if not is_missing(e):
                raise
        await self.load(redis, keys[0] if keys else None)
        return await redis.fcall(name, len(keys), *keys, *args)


def is_missing(error: Exception) -> bool:
    """Redis' answer to an FCALL of a function it has not loaded: nothing ran."""
    return isinstance(error, ResponseError) and "function not found" in str(error).lower()


def _register(function: Function) -> str:
    flags = ", ".join(f"'{flag}'" for flag in function.flags)
    return (
        f"redis.register_function{{function_name='{function.name}', "
        f"callback=function(KEYS, ARGV)\n{function.body.strip()}\nend, flags={{{flags}}}}}"
    )
