"""The schema and the migrate command."""

from asyncmy.pool import Pool

from counter_svc.connections import migrate
from counter_svc.settings import Settings


async def test_migrate_twice_is_harmless(settings: Settings, mysql: Pool) -> None:
    """Running migrate on an existing schema changes nothing and raises nothing."""
    await migrate(settings)
    await migrate(settings)
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SHOW COLUMNS FROM users")
        columns = {row[0]: row[1] for row in await cur.fetchall()}
    assert list(columns) == ["id", "username", "counter", "created_at", "updated_at"]
    assert columns["counter"].lower().startswith("bigint")
