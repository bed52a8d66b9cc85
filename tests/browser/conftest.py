"""Playwright driving Debian's Chromium; installed here when missing and running as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(cmd, env=env, capture_output=True)


def chromium_path() -> str | None:
    path = shutil.which("chromium")
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install()
        path = shutil.which("chromium")
    return path


@pytest.fixture(scope="package")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed without root: "
                    "run `apt-get install -y chromium` to run the browser tests")
    from playwright.sync_api import sync_playwright

    # Chromium writes its profile under $HOME: keep it in a temp dir.
    os.environ.setdefault("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("chromium-config")))
    # Package scope: Playwright's sync API holds an event loop that must be gone before the
    # asyncio tests of other packages run.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def browse(browser: Any, server: str) -> Iterator[Any]:
    """New pages on the module's ``server`` (each its own context, closed after the test)."""
    from playwright.sync_api import Page

    contexts = []

    def new() -> Page:
        ctx = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        return page

    yield new
    for ctx in contexts:
        ctx.close()

