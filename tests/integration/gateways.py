"""`aimarket up` as real subprocesses (what an operator runs), for the scale-out tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LOOSE_THROTTLES
from tests.integration.journey import ADMIN, free_port, until

ROOT = Path(__file__).resolve().parents[2]  # the checkout under test (cwd wins on sys.path)


def gateway_env(data: Path, **settings: Any) -> dict[str, str]:
    """The environment of one ``aimarket up``: its data dir, the test admin, loose throttles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMARKET_")}
    merged = {"data_dir": data, "admin_email": ADMIN[0], "admin_password": ADMIN[1],
              "seed_demo": False, "flush_interval_ms": 50, "smoke_cpu_s": 5,
              **LOOSE_THROTTLES, **settings}
    for name, value in merged.items():
        env[f"AIMARKET_{name.upper()}"] = str(value).lower() if isinstance(value, bool) \
            else str(value)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["ORT_LOGGING_LEVEL"] = "3"
    return env


def cli(*args: str, env: dict[str, str]) -> Any:
    """An ``aimarket`` command in this process (typer's runner), with ``env``'s settings."""
    from typer.testing import CliRunner

    from storefront.cli import app

    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AIMARKET_")}
    return CliRunner().invoke(app, list(args), env={**unset, **env})


@contextlib.contextmanager
def gateway(env: dict[str, str], *args: str, log: Path) -> Iterator[str]:
    """``aimarket up`` on a free port until it answers /healthz; stopped with SIGTERM (its
    own session: a signal to it alone, as a process manager sends). Yields its URL."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storefront.cli", "up", "--port", str(port), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"aimarket up exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(ready, 180, f"aimarket up {' '.join(args)}")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
