"""Bounds on what visitors may upload to the demos (``POST /try/{slug}/gradio_api/upload``).

Before Gradio sees an upload: the body is read (at most ``files_per_request`` files of
``max_file_bytes`` each, else 413), its files are counted (more than allowed: 413), the bytes
are charged to the visitor's daily allowance (``charge``, given by the composition root: 429
past it), and the upload folder is pruned, oldest files first, so that it stays under
``dir_max_bytes`` with this upload in it. Refusals are JSON envelopes (``error_reply``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import AimarketError, PayloadTooLarge, error_reply

# Charge ``nbytes`` of an upload to the visitor of ``scope``; raises an AimarketError to refuse.
UploadCharge = Callable[[Scope, int], Awaitable[None]]
UPLOAD_PATH = "/gradio_api/upload"
_SLACK = 64 * 1024  # multipart headers and boundaries around the files


@dataclass(frozen=True)
class UploadLimits:
    files_per_request: int = 2
    max_file_bytes: int = 10 * 1024 * 1024
    dir_max_bytes: int = 256 * 1024 * 1024
    charge: UploadCharge | None = None


def count_files(content_type: str, body: bytes) -> int:
    """Parts of a multipart/form-data body that carry a file (a filename)."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return 0
    count = 0
    for part in body.split(b"--" + boundary.encode())[1:]:
        head = part.split(b"\r\n\r\n", 1)[0].lower()
        if b"content-disposition" in head and b"filename" in head:
            count += 1
    return count


def prune(folder: str, max_bytes: int) -> int:
    """Remove the oldest files under ``folder`` until the rest take at most ``max_bytes``;
    the bytes removed."""
    files: list[tuple[float, int, str]] = []
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
            total += st.st_size
    removed = 0
    for _, size, path in sorted(files):
        if total - removed <= max_bytes:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        removed += size
    return removed


async def _refuse(exc: AimarketError, scope: Scope, receive: Receive, send: Send) -> None:
    reply = error_reply(exc)
    await Response(reply.body, status_code=reply.status, headers=reply.headers)(
        scope, receive, send)


def _too_large(limits: UploadLimits) -> PayloadTooLarge:
    mb = limits.max_file_bytes / 2**20
    return PayloadTooLarge(
        f"a demo upload holds at most {limits.files_per_request} file(s) of {mb:g} MB",
        code="upload_too_large")


async def guard_upload(app: ASGIApp, limits: UploadLimits, folder: str, scope: Scope,
                       receive: Receive, send: Send) -> None:
    """Check an upload against ``limits``, then hand it (replayed) to the Gradio ``app``."""
    cap = limits.files_per_request * limits.max_file_bytes + _SLACK
    headers = {k.decode("latin-1").lower(): v.decode("latin-1")
               for k, v in scope.get("headers", ())}
    declared = headers.get("content-length", "")
    if limits.files_per_request == 0 or (declared.isdigit() and int(declared) > cap):
        await _refuse(_too_large(limits), scope, receive, send)
        return
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            await _refuse(_too_large(limits), scope, receive, send)
            return
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if count_files(headers.get("content-type", ""), body) > limits.files_per_request:
        await _refuse(_too_large(limits), scope, receive, send)
        return
    try:
        if limits.charge is not None:
            await limits.charge(scope, len(body))
    except AimarketError as exc:
        await _refuse(exc, scope, receive, send)
        return
    await asyncio.to_thread(prune, folder, max(limits.dir_max_bytes - len(body), 0))
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    await app(scope, replay, send)
