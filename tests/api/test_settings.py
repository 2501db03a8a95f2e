"""Configuration: defaults, casts, errors that name the variable, secrets from files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.config import Config

from counter_svc.settings import Settings, SettingsError


def config(**env: str) -> Config:
    return Config(environ=env)


def test_defaults_work_on_a_developer_machine() -> None:
    """With nothing set, the defaults of docs/configuration.md apply."""
    s = Settings.from_env(config())
    assert (s.mysql_host, s.mysql_port, s.mysql_user, s.mysql_database) == (
        "127.0.0.1",
        3306,
        "root",
        "usercounter",
    )
    assert (s.redis_url, s.key_prefix, s.buckets, s.port) == (
        "redis://127.0.0.1:6379/0",
        "uc",
        64,
        8080,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MYSQL_PORT", "abc"),
        ("MYSQL_PORT", "70000"),
        ("COUNTER_BUCKETS", "0"),
        ("PORT", "-1"),
        ("REDIS_URL", "http://x"),
        ("REDIS_KEY_PREFIX", "has space"),
        ("MYSQL_DATABASE", "drop;table"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("MYSQL_TIMEOUT_SECONDS", "soon"),
        ("MYSQL_PASSWORD_FILE", "/nonexistent/secret"),
    ],
)
def test_bad_value_names_the_variable(key: str, value: str) -> None:
    """A bad value fails with a message that names the variable."""
    with pytest.raises(SettingsError, match=key):
        Settings.from_env(config(**{key: value}))


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Zm9vYmFy/c2VjcmV0@redis.internal:6379/0",  # unencoded '/' in the password
        "redis://:s3cretpass#x@redis.internal:6379/0",  # unencoded '#'
        "redis://:s3cretpass",  # no '@host': the password reads as a port
        "redis://127.0.0.1:99999/0",
        "redis://:pw@/0",
        "redis://:pw@127.0.0.1:6379/zero",
        "redis://:pw@127.0.0.1:6379/0?health_check_interval=often",
    ],
)
def test_a_bad_redis_url_fails_with_a_message_that_hides_it(url: str) -> None:
    """Each stops start-up with a SettingsError naming REDIS_URL and no part of the URL's
    password (a traceback from the URL parser would print it)."""
    with pytest.raises(SettingsError, match="REDIS_URL") as refused:
        Settings.from_env(config(REDIS_URL=url))
    message = str(refused.value)
    for secret in ("Zm9vYmFy", "c2VjcmV0", "s3cretpass", "pw@", "often"):
        assert secret not in message


def test_environment_wins_over_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real environment variable overrides the same key in `.env`."""
    env_file = tmp_path / ".env"
    env_file.write_text("MYSQL_DATABASE=fromfile\nPORT=9000\n")
    monkeypatch.setenv("PORT", "9001")
    s = Settings.from_env(Config(env_file))
    assert (s.mysql_database, s.port) == ("fromfile", 9001)


def test_password_file_is_read_and_never_printed(tmp_path: Path) -> None:
    """MYSQL_PASSWORD_FILE supplies the password; it does not appear in repr or summary."""
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-value\n")
    s = Settings.from_env(
        config(MYSQL_PASSWORD_FILE=str(secret), REDIS_URL="redis://:hunter2@127.0.0.1:6379/0")
    )
    assert s.mysql_password == "s3cr3t-value"
    shown = repr(s) + repr(s.safe_summary())
    assert "s3cr3t-value" not in shown
    assert "hunter2" not in shown


def test_bad_setting_stops_serve_with_a_clear_message() -> None:
    """`python -m counter_svc serve` with a bad value exits 2 naming the variable."""
    env = dict(os.environ, COUNTER_BUCKETS="lots", ENV_FILE=os.devnull)
    proc = subprocess.run(
        [sys.executable, "-m", "counter_svc", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "COUNTER_BUCKETS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_migrate_never_takes_over_root_as_the_service_user() -> None:
    """With admin credentials for migrate, MYSQL_USER=root is refused, naming MYSQL_USER."""
    with pytest.raises(SettingsError, match="MYSQL_USER"):
        Settings.from_env(config(MYSQL_ADMIN_USER="admin", MYSQL_USER="root"))


def test_worker_id_is_checked_and_optional() -> None:
    """SYNC_WORKER_ID: unset means a random lease token; a value is the token, checked."""
    from sync_worker.settings import WorkerSettings

    assert WorkerSettings.from_env(config()).worker_id == ""
    assert WorkerSettings.from_env(config(SYNC_WORKER_ID="sync-worker-7d9f-x2")).worker_id == (
        "sync-worker-7d9f-x2"
    )
    with pytest.raises(SettingsError, match="SYNC_WORKER_ID"):
        WorkerSettings.from_env(config(SYNC_WORKER_ID="two words"))


def test_reading_nothing_gives_the_dataclass_defaults() -> None:
    """Each default is written once, in the dataclass: the reader adds none of its own."""
    from sync_worker.settings import WorkerSettings

    assert Settings.from_env(config()) == Settings()
    assert WorkerSettings.from_env(config()) == WorkerSettings(base=Settings())


def test_sentinel_mode_settings_are_read_and_checked() -> None:
    """REDIS_SENTINELS selects Sentinel mode; bad values name the variable; the
    Sentinels' password is never in the start-up summary."""
    s = Settings.from_env(
        config(
            REDIS_SENTINELS="sentinel-0:26379, [::1]:26380",
            REDIS_SENTINEL_MASTER="counters",
            REDIS_SENTINEL_PASSWORD="s3cret-sentinel",
            REDIS_ACK_REPLICAS="1",
            REDIS_ACK_TIMEOUT_MS="250",
        )
    )
    assert s.redis_sentinels == (("sentinel-0", 26379), ("::1", 26380))
    assert (s.redis_sentinel_master, s.redis_ack_replicas, s.redis_ack_timeout_ms) == (
        "counters",
        1,
        250,
    )
    assert "s3cret-sentinel" not in repr(s) + str(s.safe_summary())
    for key, value in [
        ("REDIS_SENTINELS", "sentinel-0"),
        ("REDIS_SENTINELS", "sentinel-0:99999"),
        ("REDIS_SENTINEL_MASTER", "has space"),
        ("REDIS_ACK_REPLICAS", "-1"),
        ("REDIS_ACK_TIMEOUT_MS", "0"),
    ]:
        with pytest.raises(SettingsError, match=key):
            Settings.from_env(config(**{key: value}))


def test_cluster_mode_settings_are_read_and_checked() -> None:
    """REDIS_CLUSTER_NODES selects Cluster mode; it excludes Sentinel mode and takes
    durable acknowledgements (REDIS_ACK_REPLICAS, a WAIT per node)."""
    s = Settings.from_env(config(REDIS_CLUSTER_NODES="redis-0:6379, [::1]:7001"))
    assert s.redis_cluster_nodes == (("redis-0", 6379), ("::1", 7001))
    acked = Settings.from_env(config(REDIS_CLUSTER_NODES="redis-0:6379", REDIS_ACK_REPLICAS="1"))
    assert acked.redis_ack_replicas == 1
    assert s.environ()["REDIS_CLUSTER_NODES"] == "redis-0:6379,::1:7001"
    assert s.safe_summary()["redis_cluster_nodes"] == ["redis-0:6379", "::1:7001"]
    for env, match in [
        ({"REDIS_CLUSTER_NODES": "redis-0"}, "REDIS_CLUSTER_NODES"),
        (
            {"REDIS_CLUSTER_NODES": "redis-0:6379", "REDIS_SENTINELS": "sentinel-0:26379"},
            "REDIS_SENTINELS and REDIS_CLUSTER_NODES exclude each other",
        ),
    ]:
        with pytest.raises(SettingsError, match=match):
            Settings.from_env(config(**env))


def test_the_ack_timeout_must_stay_below_the_redis_timeout() -> None:
    """A WAIT longer than the socket timeout would drop the connection and report the
    unconfirmed writes as an outage."""
    with pytest.raises(SettingsError, match="REDIS_ACK_TIMEOUT_MS"):
        Settings.from_env(config(REDIS_ACK_TIMEOUT_MS="1000", REDIS_TIMEOUT_SECONDS="1"))
    assert Settings.from_env(config(REDIS_ACK_TIMEOUT_MS="999")).redis_ack_timeout_ms == 999
