"""The least-privilege MySQL user that `migrate` sets up when it has admin credentials."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncmy
import pytest
from asyncmy.errors import OperationalError, ProgrammingError
from starlette.config import Config

from counter_svc.connections import mysql_kwargs
from counter_svc.grants import GrantError, admin_settings
from counter_svc.migrate import migrate
from counter_svc.settings import Settings, SettingsError
from tests.helpers import run_cli, running_app, settings_env, worker_settings

ACCESS_DENIED = {1044, 1142}  # on a database; on a table


async def as_root(settings: Settings, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements as the admin (the test run's own MySQL user)."""
    conn = await asyncmy.connect(**mysql_kwargs(admin_settings(settings)))
    rows: list[tuple[Any, ...]] = []
    try:
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
                rows = list(await cur.fetchall())
    finally:
        conn.close()
    return rows


@pytest.fixture
async def app_user(settings: Settings) -> AsyncIterator[Settings]:
    """Settings for a service user of this test (migrate not yet run); dropped after."""
    name = f"uc_app_{secrets.token_hex(4)}"
    service = replace(
        settings,
        mysql_user=name,
        mysql_password=secrets.token_urlsafe(16),
        mysql_admin_user=settings.mysql_user,
        mysql_admin_password=settings.mysql_password,
    )
    yield service
    await as_root(settings, f"DROP USER IF EXISTS '{name}'@'%'")


async def grants_of(service: Settings) -> set[str]:
    rows = await as_root(service, f"SHOW GRANTS FOR '{service.mysql_user}'@'%'")
    # MariaDB adds the password hash to the USAGE line; MySQL does not.
    return {row[0].split(" IDENTIFIED")[0].replace("`", "") for row in rows}


def expected_grants(service: Settings) -> set[str]:
    user, db = service.mysql_user, service.mysql_database
    return {
        f"GRANT USAGE ON *.* TO {user}@%",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {db}.users TO {user}@%",
    }


async def as_service(service: Settings, statement: str) -> None:
    conn = await asyncmy.connect(**mysql_kwargs(service, service.mysql_database))
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


async def test_migrate_creates_a_user_with_only_table_privileges(app_user: Settings) -> None:
    """With MYSQL_ADMIN_USER, migrate creates MYSQL_USER with SELECT, INSERT, UPDATE and
    DELETE on the users table, and nothing else."""
    await migrate(app_user)
    assert await grants_of(app_user) == expected_grants(app_user)


async def test_the_api_runs_as_the_least_privilege_user(app_user: Settings) -> None:
    """Create, increment, count, get, delete and /readyz all work as that user."""
    await migrate(app_user)
    serving = replace(app_user, mysql_admin_user="", mysql_admin_password="")
    async with running_app(serving) as client:
        created = await client.post("/api/v1/users", json={"username": "least"})
        assert created.status_code == 201
        user_id = created.json()["data"]["id"]
        assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
        assert (await client.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 1
        assert (await client.get(f"/api/v1/users/{user_id}")).status_code == 200
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert (await client.delete(f"/api/v1/users/{user_id}")).status_code == 200


async def test_the_worker_runs_as_the_least_privilege_user(app_user: Settings) -> None:
    """`python -m sync_worker --once` as that user writes the counters to MySQL."""
    await migrate(app_user)
    serving = replace(app_user, mysql_admin_user="", mysql_admin_password="")
    async with running_app(serving) as client:
        created = await client.post("/api/v1/users", json={"username": "drained"})
        user_id = created.json()["data"]["id"]
        for _ in range(3):
            await client.put(f"/api/v1/users/{user_id}/increment")
    result = await run_cli(worker_settings(serving), "--once")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    rows = await as_root(
        app_user, f"SELECT counter FROM `{app_user.mysql_database}`.users WHERE id = {user_id}"
    )
    assert rows == [(3,)]


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN x INT",
        "TRUNCATE TABLE users",
        "CREATE TABLE t (id INT)",
        "GRANT SELECT ON users TO CURRENT_USER",
    ],
)
async def test_the_least_privilege_user_cannot_change_the_schema(
    app_user: Settings, statement: str
) -> None:
    """DROP, ALTER, TRUNCATE, CREATE and GRANT are refused with access denied."""
    await migrate(app_user)
    with pytest.raises((OperationalError, ProgrammingError)) as info:
        await as_service(app_user, statement)
    assert info.value.args[0] in ACCESS_DENIED, info.value.args


async def test_migrate_takes_back_what_a_database_image_grants(app_user: Settings) -> None:
    """A user made by the mysql/mariadb image (ALL on the database) is cut down to the
    table privileges: it can no longer DROP TABLE."""
    user, db = app_user.mysql_user, app_user.mysql_database
    await as_root(
        app_user,
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{app_user.mysql_password}'",
        f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%'",
    )
    await migrate(app_user)
    assert await grants_of(app_user) == expected_grants(app_user)
    with pytest.raises(OperationalError) as info:
        await as_service(app_user, "DROP TABLE users")
    assert info.value.args[0] in ACCESS_DENIED


async def test_migrate_again_sets_the_password_from_the_secret(app_user: Settings) -> None:
    """A second migrate with a new MYSQL_PASSWORD rotates it: the new one logs in, the old
    one no longer does."""
    await migrate(app_user)
    rotated = replace(app_user, mysql_password=secrets.token_urlsafe(16))
    await migrate(rotated)
    await as_service(rotated, "SELECT 1")
    with pytest.raises(OperationalError):
        await as_service(app_user, "SELECT 1")
    assert await grants_of(rotated) == expected_grants(rotated)


async def test_migrate_refuses_a_service_user_without_password(app_user: Settings) -> None:
    """No MYSQL_PASSWORD with MYSQL_ADMIN_USER: migrate stops before creating anything."""
    with pytest.raises(GrantError, match="MYSQL_PASSWORD"):
        await migrate(replace(app_user, mysql_password=""))


def test_admin_and_service_user_must_differ() -> None:
    """MYSQL_ADMIN_USER equal to MYSQL_USER is refused at start-up, naming both."""
    env = {"MYSQL_USER": "root", "MYSQL_ADMIN_USER": "root"}
    with pytest.raises(SettingsError, match="MYSQL_ADMIN_USER must differ from MYSQL_USER"):
        Settings.from_env(Config(environ=env))


async def test_migrate_command_with_admin_password_file(app_user: Settings, tmp_path: Path) -> None:
    """`python -m counter_svc migrate` reads MYSQL_ADMIN_PASSWORD_FILE and exits 0,
    printing neither password."""
    path = tmp_path / "admin-password"
    path.write_text(app_user.mysql_admin_password + "\n", encoding="utf-8")
    env = settings_env(app_user) | {
        "MYSQL_ADMIN_USER": app_user.mysql_admin_user,
        "MYSQL_ADMIN_PASSWORD_FILE": str(path),
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "counter_svc", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "service_user_ready" in proc.stderr
    assert app_user.mysql_password not in proc.stderr
    assert await grants_of(app_user) == expected_grants(app_user)
