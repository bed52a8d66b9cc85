"""The hot path's client for Triton: KServe v2 infer over kept-alive raw HTTP/1.1 connections.

One ``POST /v2/models/{name}/infer`` per call, with Triton's binary tensor extension both ways:
the request is a small JSON header (``Inference-Header-Content-Length``) followed by the input
arrays' raw bytes, the answer the same with the outputs' bytes, which become numpy arrays
without a copy (``np.frombuffer`` over the received body). No JSON tensor data, no client
objects per tensor, no aiohttp: each connection is an asyncio ``Protocol`` that writes one
request and parses one answer at a time, returned to a pool of idle connections after it.

tritonclient's asyncio client (aiohttp underneath) cost ~4x this per call in the gateway
process here (bench/triton_hop.py); it still does the rare control-plane calls
(load / unload / health) in ``serving.triton_backend``.

Failures: a refused or dropped connection is ``TritonDown``; an answer with an error status is
``TritonError`` (status and Triton's message). A kept-alive connection the server closed while
idle is retried once on a fresh one before anything is reported (the server had not seen the
request).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import numpy as np
import orjson

_TO_TRITON = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
_FROM_TRITON = {v: np.dtype(k) for k, v in _TO_TRITON.items()}
MAX_HEAD = 64 * 1024  # the longest status line + headers accepted from the server


class TritonDown(ConnectionError):
    """The connection to Triton failed (refused, reset, closed mid-answer, timed out)."""


class TritonTimeout(TritonDown):
    """Triton did not answer within the call's timeout."""


class TritonError(Exception):
    """Triton answered the call with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _tensor_bytes(array: np.ndarray) -> tuple[str, bytes | memoryview]:
    """(Triton datatype, the bytes on the wire) of one input."""
    if array.dtype.kind in "OSU":  # strings: Triton's BYTES, each element length-prefixed
        from tritonclient.utils import serialize_byte_tensor

        data = serialize_byte_tensor(array)  # one object element: the bytes
        return "BYTES", b"" if data is None or data.size == 0 else bytes(data.item())
    datatype = _TO_TRITON.get(array.dtype.name)
    if datatype is None:
        raise TypeError(f"Triton has no datatype for {array.dtype}")
    return datatype, np.ascontiguousarray(array).data.cast("B")


def encode_request(inputs: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, list[Any]]:
    """(the JSON header, the input payloads in order) of one binary infer request."""
    specs, blobs = [], []
    for name, array in inputs.items():
        datatype, data = _tensor_bytes(array)
        specs.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                      "parameters": {"binary_data_size": len(data)}})
        blobs.append(data)
    header = orjson.dumps({"inputs": specs, "outputs": [
        {"name": n, "parameters": {"binary_data": True}} for n in outputs]})
    return header, blobs


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The output arrays of an infer answer (binary outputs read in place)."""
    view = memoryview(body)
    head = orjson.loads(view[:header_length] if header_length is not None else view)
    offset = header_length or 0
    out: dict[str, np.ndarray] = {}
    for spec in head.get("outputs", ()):
        datatype, shape = spec["datatype"], spec["shape"]
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is None:  # sent as JSON data
            dtype = object if datatype == "BYTES" else _FROM_TRITON[datatype]
            out[spec["name"]] = np.asarray(spec["data"], dtype=dtype).reshape(shape)
            continue
        chunk = view[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            from tritonclient.utils import deserialize_bytes_tensor

            out[spec["name"]] = deserialize_bytes_tensor(bytes(chunk)).reshape(shape)
        else:
            out[spec["name"]] = np.frombuffer(chunk, dtype=_FROM_TRITON[datatype]).reshape(shape)
    return out


class _Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection: one request at a time, its answer parsed here."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # answered a request before (a stale keep-alive may fail first)
        self._buf = bytearray()
        self._waiter: asyncio.Future[_Answer] | None = None
        self._head: tuple[int, dict[bytes, bytes]] | None = None
        self._length = -1  # body bytes expected; -2: chunked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TritonDown(f"the connection closed: {exc!r}"))

    @property
    def heard_nothing(self) -> bool:
        """No byte of an answer arrived since the last request was sent."""
        return self._head is None and not self._buf

    def send(self, parts: list[Any]) -> asyncio.Future[_Answer]:
        assert self.transport is not None
        self._buf.clear()
        self._head, self._length = None, -1
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"".join(parts))  # one send: small calls are mostly syscalls
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._fail("the answer's headers are too long")
                return
            try:
                self._head = self._parse_head(bytes(self._buf[:end]))
            except (ValueError, IndexError):
                self._fail("an answer that is not HTTP")
                return
            del self._buf[:end + 4]
        if self._length == -2:
            self._chunked()
        elif len(self._buf) >= self._length:
            self._done(bytes(self._buf[:self._length]))

    def _parse_head(self, raw: bytes) -> tuple[int, dict[bytes, bytes]]:
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self._length = -2
        else:
            self._length = int(headers.get(b"content-length", b"0"))
        return status, headers

    def _chunked(self) -> None:
        body, pos = bytearray(), 0
        while True:
            end = self._buf.find(b"\r\n", pos)
            if end < 0:
                return
            size = int(bytes(self._buf[pos:end]).split(b";")[0], 16)
            if size == 0:
                if self._buf.find(b"\r\n", end + 2) < 0:
                    return  # the trailer's end has not arrived
                self._done(bytes(body))
                return
            if len(self._buf) < end + 2 + size + 2:
                return
            body += self._buf[end + 2:end + 2 + size]
            pos = end + 2 + size + 2

    def _done(self, body: bytes) -> None:
        assert self._head is not None
        status, headers = self._head
        waiter, self._waiter = self._waiter, None
        self.used = True
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(_Answer(status, headers, body))

    def _fail(self, why: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TritonDown(why))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class TritonHTTP:
    """A pool of kept-alive connections to one Triton server's HTTP port."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, max_idle: int = 64,
                 max_connections: int = 256) -> None:
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.timeout_s = timeout_s
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_idle
        self._open_slots = asyncio.Semaphore(max_connections)  # calls beyond it wait
        self._host_header = f"Host: {self.host}:{self.port}\r\n".encode()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise TritonDown(f"cannot connect to Triton at {self.host}:{self.port}: {exc}") \
                from exc
        return conn

    async def infer(self, model: str, inputs: dict[str, np.ndarray],
                    outputs: list[str]) -> dict[str, np.ndarray]:
        """Run ``model``; TritonDown / TritonError as the module says."""
        header, blobs = encode_request(inputs, outputs)
        length = len(header) + sum(len(b) for b in blobs)
        head = (b"POST /v2/models/" + model.encode() + b"/infer HTTP/1.1\r\n" + self._host_header
                + b"Content-Type: application/octet-stream\r\n"
                + b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                % (len(header), length))
        async with self._open_slots:
            answer = await self._exchange([head, header, *blobs])
        if answer.status != 200:
            raise TritonError(answer.status, _error_message(answer.body))
        raw_length = answer.headers.get(b"inference-header-content-length")
        return decode_response(answer.body, int(raw_length) if raw_length else None)

    async def _exchange(self, parts: list[Any]) -> _Answer:
        for attempt in (0, 1):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            waiter = conn.send(parts)
            timer = asyncio.get_running_loop().call_later(self.timeout_s, _expire, waiter, conn)
            try:
                answer = await waiter
            except TritonTimeout:
                raise
            except TritonDown:
                conn.close()
                if reused and attempt == 0 and conn.heard_nothing:
                    continue  # an idle connection the server had closed: once more, fresh
                raise
            except asyncio.CancelledError:
                conn.close()  # its answer may still come: the connection is not reusable
                raise
            finally:
                timer.cancel()
            self._give(conn)
            return answer
        raise TritonDown("unreachable")  # pragma: no cover

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def _give(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if len(self._idle) >= self._max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        await asyncio.sleep(0)  # let the transports finish closing


def _expire(waiter: asyncio.Future[_Answer], conn: _Connection) -> None:
    if not waiter.done():
        waiter.set_exception(TritonTimeout("Triton did not answer in time"))
    conn.close()


def _error_message(body: bytes) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(orjson.loads(body).get("error", ""))
    return body[:200].decode("utf-8", "replace")
