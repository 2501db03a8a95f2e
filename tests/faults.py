"""Fault injection for tests: a TCP proxy that can cut a server off, and private servers.

`FaultProxy` stands between a client and MySQL or Redis on 127.0.0.1 and can drop every
connection on demand; it runs in a background thread, so sync and async tests can use it.
`private_redis` starts a throw-away `redis-server` that a test may SIGKILL and restart from
its own files. `private_mariadb` does the same for `mariadbd` when a proxy is not enough.
Every wait here is bounded in time and every process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

LOCALHOST = "127.0.0.1"
_RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll `check` until it is true; raise `TimeoutError` naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.1f} s")
        time.sleep(step)


def port_open(port: int, host: str = LOCALHOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to `target_host:target_port` that can be cut off.

    `block()` closes every live connection and drops new ones at once (the client sees a
    reset, as when a server dies); `block(hang=True)` accepts new connections but never
    answers (as when a network partition swallows packets), so clients hit their timeouts.
    `restore()` lets traffic through again. `pause()` keeps every connection open but
    holds its bytes, either way, until `resume()` (as when a link stalls without dropping).
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, port))
        self._listener.listen(256)
        self._listener.settimeout(0.05)
        self.port: int = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._blocked = False
        self._hang = False
        self._delay = 0.0
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self.connections = 0  # accepted and passed through, for tests that want to know

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def blocked(self) -> bool:
        return self._blocked

    def block(self, *, hang: bool = False) -> None:
        """Cut every live connection and refuse (or, with `hang`, swallow) new ones."""
        with self._lock:
            self._blocked = True
            self._hang = hang
            live = list(self._live)
            self._live.clear()
        for sock in live:
            _close(sock)

    def delay(self, seconds: float) -> None:
        """Hold every chunk of data, either way, this long before passing it on (0: none)."""
        self._delay = seconds

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def pause(self) -> None:
        """Hold every byte, either way, on live and new connections; none is dropped."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass on what `pause` held, in order, and let traffic flow again."""
        self._flowing.set()

    def restore(self) -> None:
        """Let new connections through again (connections cut by `block` stay cut)."""
        with self._lock:
            self._blocked = False
            self._hang = False
            held = list(self._held)
            self._held.clear()
        for sock in held:
            _close(sock)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        _close(self._listener)
        self.block()
        self.restore()
        self.resume()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                blocked, hang = self._blocked, self._hang
                if blocked and hang:
                    self._held.append(client)
            if blocked:
                if not hang:
                    # SO_LINGER 0: close with RST, the client fails at once.
                    with contextlib.suppress(OSError):
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
                    _close(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._blocked:
                _close(client)
                _close(upstream)
                return
            self._live.update((client, upstream))
            self.connections += 1
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._delay:
                    time.sleep(self._delay)
                # A paused proxy holds the chunk here; TCP holds back the rest.
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._live.discard(src)
            self._live.discard(dst)
        _close(src)
        _close(dst)


class PrivateRedis:
    """A `redis-server` of one test in its own directory and port; can be SIGKILLed and
    started again from its files on the same port."""

    def __init__(self, directory: Path, appendonly: bool, extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def args(self) -> list[str]:
        binary = shutil.which("redis-server") or "redis-server"
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            LOCALHOST,
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        return args + list(self.extra)

    def start(self, timeout: float = 10) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._ready, timeout, f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        with socket.create_connection((LOCALHOST, self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            # While loading the AOF the answer is -LOADING; only +PONG means ready.
            return s.recv(64).startswith(b"+PONG")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed beyond what the OS already has."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, timeout: float = 10) -> None:
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def private_redis(
    tmp_path: Path, appendonly: bool, extra: tuple[str, ...] = ()
) -> Iterator[PrivateRedis]:
    """A running private Redis (AOF `appendfsync everysec` when `appendonly`), stopped on
    exit. `extra` adds raw server arguments, e.g. ("--maxmemory", "2mb")."""
    server = PrivateRedis(tmp_path / f"redis-{free_port()}", appendonly, extra)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class PrivateMariaDB:
    """A `mariadbd` of one test: its own data directory, port and socket; root, no
    password. Slower to start (~2-5 s) than the proxy; use it when a test must really
    stop and start the server."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.datadir = directory / "data"
        self.socket = directory / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        installer = shutil.which("mariadb-install-db") or "mariadb-install-db"
        subprocess.run(
            [
                installer,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=" + _user(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self, timeout: float = 30) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [
                binary,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                f"--bind-address={LOCALHOST}",
                f"--socket={self.socket}",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                f"--log-error={self.dir / 'error.log'}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--user=" + _user(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ready, timeout, f"mariadbd on port {self.port}", step=0.1)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {self.proc.returncode}")
        # The server greets first: a handshake packet means it accepts clients.
        with socket.create_connection((LOCALHOST, self.port), timeout=0.5) as s:
            return len(s.recv(16)) > 4

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _user() -> str:
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")


@contextlib.contextmanager
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A running private MariaDB on its own port, killed and removed on exit."""
    server = PrivateMariaDB(tmp_path / f"mariadb-{free_port()}")
    try:
        server.install()
        server.start()
        yield server
    finally:
        server.stop()
