"""``/try/{slug}``: each live listing's Gradio demo, built on first use, rebuilt when a newer
version goes live, behind one ASGI app mounted into the marketplace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import gradio as gr
from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serving import NotFound, error_reply

from .builder import build_demo
from .common import DemoCall, DemoSpec
from .uploads import UPLOAD_PATH, UploadLimits, guard_upload

# slug -> the live listing version to demo, or None when there is none
Lookup = Callable[[str], Awaitable[DemoSpec | None]]


# Gradio's sketchpad opens with no tool selected ("select the draw tool to start"), so a
# visitor's first strokes select text instead of drawing: pick the brush once it is shown.
PICK_BRUSH = """
() => {
  const pick = () => {
    const pad = document.querySelector('#demo-sketch');
    if (!pad || pad.dataset.brushPicked || pad.offsetParent === null) return;
    const brush = [...pad.querySelectorAll('button')].find(
      (b) => (b.getAttribute('aria-label') || b.title || '').toLowerCase() === 'brush');
    if (brush) { brush.click(); pad.dataset.brushPicked = '1'; }
  };
  new MutationObserver(pick).observe(document.body, {subtree: true, childList: true,
                                                    attributes: true});
  pick();
}
"""

class TryApps:
    """The ASGI app at the mount point: ``/{slug}/...`` goes to that listing's demo."""

    def __init__(self, lookup: Lookup, call: DemoCall, *, concurrency: int = 4,
                 temp_dir: str | None = None, uploads: UploadLimits | None = None) -> None:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        if temp_dir:
            os.environ.setdefault("GRADIO_TEMP_DIR", temp_dir)
        # where Gradio really keeps uploads (an inherited GRADIO_TEMP_DIR wins)
        self.upload_dir = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
        self.uploads = uploads or UploadLimits()
        self.lookup = lookup
        self.call = call
        self.concurrency = concurrency
        self._apps: dict[str, tuple[int, ASGIApp, contextlib.AsyncExitStack]] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        slug = path.lstrip("/").partition("/")[0]
        spec = await self.lookup(slug) if slug else None
        if spec is None:
            reply = error_reply(NotFound(f"no live model '{slug}' to try", code="model_not_found"))
            response = Response(reply.body, status_code=reply.status, headers=reply.headers)
            await response(scope, receive, send)
            return
        app = await self._app(spec)
        if scope["type"] == "http" and scope["method"] == "POST" and \
                "/" + path.strip("/") == f"/{slug}{UPLOAD_PATH}":
            await guard_upload(app, self.uploads, self.upload_dir, scope, receive, send)
            return
        await app(scope, receive, send)

    async def _app(self, spec: DemoSpec) -> ASGIApp:
        hit = self._apps.get(spec.slug)
        if hit is not None and hit[0] == spec.version:
            return hit[1]
        async with self._lock:
            hit = self._apps.get(spec.slug)
            if hit is not None and hit[0] == spec.version:
                return hit[1]
            holder = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
            blocks = build_demo(spec, self.call, self.concurrency)
            gr.mount_gradio_app(holder, blocks, path=f"/{spec.slug}", footer_links=["api"],
                                run_history=False, ssr_mode=False, js=PICK_BRUSH,
                                theme=gr.themes.Default(primary_hue="blue"),  # the site's blue
                                max_file_size=self.uploads.max_file_bytes, show_error=True)
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(holder.router.lifespan_context(holder))
            self._apps[spec.slug] = (spec.version, holder, stack)
            if hit is not None:
                await hit[2].aclose()
            return holder

    async def close(self) -> None:
        for _, _, stack in self._apps.values():
            with contextlib.suppress(Exception):
                await stack.aclose()
        self._apps.clear()


def default_temp_dir(data_dir: Any) -> str:
    """Gradio's upload folder inside the data dir (else the system temp dir)."""
    path = os.path.join(str(data_dir), "gradio") if data_dir else tempfile.gettempdir()
    os.makedirs(path, exist_ok=True)
    return path
