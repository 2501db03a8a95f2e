"""`python -m counter_svc migrate`: create the database if it is missing and apply
schema.sql, idempotently; with MYSQL_ADMIN_USER, also the service's least-privilege user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncmy
import structlog

from counter_svc.connections import mysql_kwargs
from counter_svc.grants import admin_settings, ensure_service_user
from counter_svc.settings import Settings

log = structlog.get_logger(__name__)

SCHEMA_SQL = Path(__file__).with_name("schema.sql")


async def migrate(settings: Settings) -> None:
    """Create the database if it is missing and apply schema.sql (idempotent). Given
    MYSQL_ADMIN_USER, do so as that user and set up the service's least-privilege user."""
    conn = await asyncmy.connect(**mysql_kwargs(admin_settings(settings)))
    try:
        async with conn.cursor() as cur:
            # "Database exists" and "table exists" are the expected case of a second run:
            # notes, which would otherwise come out as warnings in every migrate's log.
            await cur.execute("SET SESSION sql_notes = 0")
            # The name is validated in Settings (letters, digits, '_'), so quoting is safe.
            await cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{settings.mysql_database}` "
                "DEFAULT CHARACTER SET utf8mb4"
            )
            await cur.execute(f"USE `{settings.mysql_database}`")
            for statement in _statements(SCHEMA_SQL.read_text(encoding="utf-8")):
                await cur.execute(statement)
            await _collate_usernames(cur)
            if settings.mysql_admin_user:
                await ensure_service_user(cur, settings)
    finally:
        conn.close()


USERNAME_COLLATION = "utf8mb4_unicode_520_ci"
# Up to 10 groups of stored names that the collation would make one.
_MERGED_NAMES = (
    "SELECT GROUP_CONCAT(username ORDER BY id SEPARATOR ' = ') FROM users "  # noqa: S608
    f"GROUP BY username COLLATE {USERNAME_COLLATION} HAVING COUNT(*) > 1 LIMIT 10"
)
_COLLATE_USERNAMES = (
    "ALTER TABLE users MODIFY username VARCHAR(100) CHARACTER SET utf8mb4 "
    f"COLLATE {USERNAME_COLLATION} NOT NULL, "
    f"DEFAULT CHARACTER SET utf8mb4 COLLATE {USERNAME_COLLATION}"
)


class MigrateError(RuntimeError):
    """The schema cannot be brought up to date without a decision by the operator."""


async def _collate_usernames(cur: Any) -> None:
    """Bring a users table created before the collation was named (with the server's
    default) to USERNAME_COLLATION. Checked first: the ALTER rebuilds the table."""
    await cur.execute(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users' AND COLUMN_NAME = 'username'"
    )
    (current,) = await cur.fetchone()
    if current == USERNAME_COLLATION:
        return
    await cur.execute(_MERGED_NAMES)
    if merged := [row[0] for row in await cur.fetchall()]:
        raise MigrateError(
            f"users.username holds names that are one name under {USERNAME_COLLATION}: "
            f"{'; '.join(merged)}. Rename one of each, then run migrate again"
        )
    log.warning("migrate_collation", column="users.username", old=current, new=USERNAME_COLLATION)
    await cur.execute(_COLLATE_USERNAMES)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
