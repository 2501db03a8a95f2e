"""The service's own MySQL user, made by `migrate` when it is given admin credentials
(`MYSQL_ADMIN_USER`): the API and the worker then run with only the privileges they use,
so a bug or a stolen password cannot drop or alter a table."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import structlog

from counter_svc.settings import Settings

log = structlog.get_logger(__name__)

PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
TABLE = "users"
# Pods come and go with new addresses: the user is not tied to a host.
USER_HOST = "%"

_GRANT_RE = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<target>\S+) TO ", re.IGNORECASE)


class GrantError(RuntimeError):
    """The service user cannot be set up as asked."""


def admin_settings(settings: Settings) -> Settings:
    """The settings `migrate` connects with: the admin's credentials when given."""
    if not settings.mysql_admin_user:
        return settings
    return replace(
        settings,
        mysql_user=settings.mysql_admin_user,
        mysql_password=settings.mysql_admin_password,
    )


async def ensure_service_user(cur: Any, settings: Settings) -> None:
    """Create `MYSQL_USER` if missing, set its password from `MYSQL_PASSWORD` (the Secret
    is the source of truth), grant SELECT, INSERT, UPDATE, DELETE on the users table, and
    take back what MySQL's and MariaDB's images grant their user at first boot (ALL on the
    database). Idempotent; safe while the service runs: the grant comes before any revoke."""
    if not settings.mysql_password:
        raise GrantError("MYSQL_PASSWORD (or _FILE) must be set along with MYSQL_ADMIN_USER")
    db = settings.mysql_database  # validated in Settings: letters, digits, '_'
    user = (settings.mysql_user, USER_HOST)
    await cur.execute(
        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (*user, settings.mysql_password)
    )
    await cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (*user, settings.mysql_password))
    privileges = ", ".join(sorted(PRIVILEGES))
    await cur.execute(f"GRANT {privileges} ON `{db}`.`{TABLE}` TO %s@%s", user)
    await cur.execute("SHOW GRANTS FOR %s@%s", user)
    for (line,) in await cur.fetchall():
        await _take_back_extra(cur, str(line), db, user)
    log.info("service_user_ready", user=settings.mysql_user, privileges=privileges, table=TABLE)


async def _take_back_extra(cur: Any, line: str, db: str, user: tuple[str, str]) -> None:
    match = _GRANT_RE.match(line)
    if not match:
        return
    target = match["target"].replace("\\_", "_")
    privileges = {p.strip().upper() for p in match["privs"].split(",")}
    if target == f"`{db}`.*":
        await cur.execute(f"REVOKE ALL PRIVILEGES ON `{db}`.* FROM %s@%s", user)
        if "WITH GRANT OPTION" in line.upper():
            await cur.execute(f"REVOKE GRANT OPTION ON `{db}`.* FROM %s@%s", user)
    elif target == f"`{db}`.`{TABLE}`":
        table = f"`{db}`.`{TABLE}`"
        extra = privileges - PRIVILEGES
        if "ALL PRIVILEGES" in extra:
            await cur.execute(f"REVOKE ALL PRIVILEGES ON {table} FROM %s@%s", user)
            await cur.execute(f"GRANT {', '.join(sorted(PRIVILEGES))} ON {table} TO %s@%s", user)
        elif extra:
            await cur.execute(f"REVOKE {', '.join(sorted(extra))} ON {table} FROM %s@%s", user)
        if "WITH GRANT OPTION" in line.upper():
            await cur.execute(f"REVOKE GRANT OPTION ON {table} FROM %s@%s", user)
    elif privileges != {"USAGE"}:
        # Granted by someone on purpose, elsewhere than this service's database: say so,
        # but leave it.
        log.warning("service_user_has_other_privileges", grant=line.split(" IDENTIFIED")[0])
