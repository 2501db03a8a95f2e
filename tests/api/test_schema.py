"""The schema and the migrate command."""

import re
from collections.abc import Iterator
from dataclasses import replace

import asyncmy
import pytest
from asyncmy.pool import Pool

from counter_svc.connections import mysql_kwargs
from counter_svc.migrate import USERNAME_COLLATION, MigrateError, migrate
from counter_svc.settings import Settings
from tests.helpers import drop_run, running_app


async def test_migrate_twice_is_harmless(settings: Settings, mysql: Pool) -> None:
    """Running migrate on an existing schema changes nothing and raises nothing."""
    await migrate(settings)
    await migrate(settings)
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SHOW COLUMNS FROM users")
        columns = {row[0]: row[1] for row in await cur.fetchall()}
    assert list(columns) == ["id", "username", "counter", "created_at", "updated_at"]
    assert columns["counter"].lower().startswith("bigint")


async def test_usernames_compare_the_same_on_mysql_and_mariadb(settings: Settings) -> None:
    """Usernames are unique case- and accent-insensitively (as on MySQL 8's default), and
    names that differ only in a character beyond U+FFFF are two names, on either server."""
    async with running_app(settings) as client:

        async def create(name: str) -> int:
            response = await client.post("/api/v1/users", json={"username": name})
            return response.status_code

        assert [await create(n) for n in ("fan 😀", "fan 😎", "fan 𠀀", "fan 𠀁")] == [201] * 4
        assert [await create(n) for n in ("Émile", "emile", "EMILE", "fan 😀")] == [
            201,
            409,
            409,
            409,
        ]


async def _legacy_table(settings: Settings, names: list[str]) -> None:
    """The users table as migrate made it before the collation was named."""
    conn = await asyncmy.connect(**mysql_kwargs(settings))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{settings.mysql_database}`")
            await cur.execute(f"USE `{settings.mysql_database}`")
            await cur.execute(
                "CREATE TABLE users (id INT AUTO_INCREMENT PRIMARY KEY,"
                " username VARCHAR(100) NOT NULL UNIQUE, counter BIGINT NOT NULL DEFAULT 0,"
                " created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP"
                " DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)"
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
            )
            for n, name in enumerate(names):
                await cur.execute(
                    "INSERT INTO users (username, counter) VALUES (%s, %s)", (name, n + 7)
                )
    finally:
        conn.close()


async def _table_state(settings: Settings) -> tuple[str, list[tuple[str, int]]]:
    conn = await asyncmy.connect(**mysql_kwargs(settings, settings.mysql_database))
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
                " DATABASE() AND TABLE_NAME = 'users' AND COLUMN_NAME = 'username'"
            )
            (collation,) = await cur.fetchone()
            await cur.execute("SELECT username, counter FROM users ORDER BY id")
            return collation, list(await cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def legacy(settings: Settings) -> Iterator[Settings]:
    """A database of its own for a table of an older schema; dropped afterwards."""
    own = replace(settings, mysql_database=f"{settings.mysql_database}_legacy")
    yield own
    drop_run(own)


async def test_migrate_brings_an_older_table_to_the_named_collation(legacy: Settings) -> None:
    """A table made with the server's default collation is altered once, its rows kept,
    its unique index with it; the next migrate finds nothing to do."""
    await _legacy_table(legacy, ["fan 😀", "Bob", "straße"])
    await migrate(legacy)
    await migrate(legacy)
    assert await _table_state(legacy) == (
        USERNAME_COLLATION,
        [("fan 😀", 7), ("Bob", 8), ("straße", 9)],
    )
    async with running_app(legacy) as client:
        for name, status in (("fan 😎", 201), ("bob", 409), ("strasse", 409)):
            response = await client.post("/api/v1/users", json={"username": name})
            assert response.status_code == status, name


async def test_migrate_refuses_names_that_the_collation_would_merge(legacy: Settings) -> None:
    """'strasse' and 'straße' are two names under MariaDB's general collation and one under
    the named one: migrate stops with a message saying what to do, the table unchanged."""
    await _legacy_table(legacy, ["strasse", "straße"])
    with pytest.raises(
        MigrateError, match=re.escape("strasse = straße. Rename one of each, then run")
    ):
        await migrate(legacy)
    assert await _table_state(legacy) == (
        "utf8mb4_general_ci",
        [("strasse", 7), ("straße", 8)],
    )
