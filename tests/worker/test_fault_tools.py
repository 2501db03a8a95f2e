"""The fault-injection helpers themselves (tests/faults.py)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncmy
import pytest
import redis as sync_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults import FaultProxy, port_open, private_mariadb, private_redis


def _client(port: int) -> sync_redis.Redis:
    # No retries: a refused connection must show at once, not after the client's back-off.
    return sync_redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def test_proxy_passes_traffic_cuts_it_and_restores_it() -> None:
    """Through the proxy Redis answers; blocked it fails at once; restored it answers again."""
    with FaultProxy("127.0.0.1", 6379) as proxy:
        client = _client(proxy.port)
        try:
            assert client.ping()
            proxy.block()
            with pytest.raises(sync_redis.ConnectionError):
                client.ping()
            proxy.restore()
            assert client.ping()
        finally:
            client.close()


def test_proxy_hang_makes_clients_time_out() -> None:
    """Blocked with hang=True, new connections are accepted but never answered."""
    with FaultProxy("127.0.0.1", 6379) as proxy:
        proxy.block(hang=True)
        client = _client(proxy.port)
        try:
            with pytest.raises(sync_redis.TimeoutError):
                client.ping()
        finally:
            client.close()


def test_proxy_pause_holds_bytes_on_an_open_connection_until_resume() -> None:
    """Paused, a request gets no answer but its connection stays open; resumed, the held
    request goes through and its answer arrives on the same connection."""
    with (
        FaultProxy("127.0.0.1", 6379) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as conn,
    ):
        conn.sendall(b"PING\r\n")
        assert conn.recv(64) == b"+PONG\r\n"
        proxy.pause()
        conn.sendall(b"ECHO held\r\n")
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(64)
        proxy.resume()
        conn.settimeout(2)
        assert conn.recv(64) == b"$4\r\nheld\r\n"
        assert proxy.connections == 1


@pytest.mark.slow
def test_private_redis_restarts_from_its_aof(tmp_path: Path) -> None:
    """A SIGKILLed private Redis with AOF comes back on the same port with its data."""
    with private_redis(tmp_path, appendonly=True) as server:
        client = _client(server.port)
        try:
            client.set("k", "v")
            server.kill()
            assert not port_open(server.port)
            server.start()
            assert client.get("k") == b"v"
        finally:
            client.close()


@pytest.mark.slow
async def test_private_mariadb_serves_and_comes_back_after_sigkill(tmp_path: Path) -> None:
    """A private mariadbd answers on its own port, and again after a SIGKILL and start."""
    with private_mariadb(tmp_path) as server:
        assert await _mariadb_version(server.port)
        server.kill()
        assert not port_open(server.port)
        await asyncio.to_thread(server.start)
        assert await _mariadb_version(server.port)


async def _mariadb_version(port: int) -> str:
    conn = await asyncmy.connect(host="127.0.0.1", port=port, user="root")
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT VERSION()")
            (version,) = await cur.fetchone()
    finally:
        conn.close()
    return str(version)
