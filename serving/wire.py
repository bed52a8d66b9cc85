"""The gateway's direct line into a Ray Serve replica: tensors as raw bytes over TCP.

A DeploymentHandle call costs milliseconds of Ray's machinery per request (router, object
transfer, the replica's request wrapper); a paid call must not. Each replica therefore also
listens on a port of its node and answers length-prefixed frames; Serve still places, health-
checks and replaces the replicas. Nothing is pickled: a frame is a small JSON header (names,
dtypes, shapes) and the arrays' bytes. A connection starts with the shared secret; one that
does not, or names another application, is closed without the one-byte welcome.

request  = u32 length | u16 header length | {"i": [[name, dtype, shape], ...]} | buffers
           (a string tensor, dtype "string": each element a u32 length, then its UTF-8 bytes,
           as the v2 protocol's BYTES)
response = u32 length | u8 status | u16 header length | header | buffers
           status 0 ok ({"o": [...]} and buffers), 1 invalid input / 2 failed ({"m": message})
"""

from __future__ import annotations

import asyncio
import hmac
import math
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from .errors import InferenceFailed, InvalidInput, ServiceUnavailable

DTYPES = {"bool", "uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32",
          "float64"}
SECRET_LEN = 32  # bytes
WIRE_KV_PREFIX = "aimarket:wire:"  # + app + ":" + replica id -> "host:port" in Ray's KV
MAX_FRAME = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 1.0  # a replica's port answers in microseconds when its node is alive
_U32, _U16, _STATUS = struct.Struct("!I"), struct.Struct("!H"), struct.Struct("!BH")
OK, INVALID, FAILED = 0, 1, 2
Runner = Callable[[dict[str, np.ndarray]], Awaitable[tuple[str, Any]]]


_NAMES: dict[np.dtype, str] = {}  # numpy computes dtype names in Python: once is enough


def _name(dtype: np.dtype) -> str:
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype)
    return name


STRING = "string"  # an object array of str (what onnxruntime takes and gives for strings)


def _utf8(x: Any) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode("utf-8")


def _encode_strings(arr: np.ndarray) -> bytes:
    items = [_utf8(x) for x in arr.reshape(-1).tolist()]
    return b"".join(_U32.pack(len(b)) + b for b in items)


def _decode_strings(body: bytes | memoryview, count: int, offset: int
                    ) -> tuple[np.ndarray, int]:
    view = memoryview(body)
    out = np.empty(count, dtype=object)
    for i in range(count):
        if offset + 4 > len(view):
            raise ValueError("string element length runs past the frame")
        (n,) = _U32.unpack(view[offset:offset + 4])
        if offset + 4 + n > len(view):
            raise ValueError("string element runs past the frame")
        out[i] = bytes(view[offset + 4:offset + 4 + n]).decode("utf-8")
        offset += 4 + n
    return out, offset


def encode_arrays(arrays: dict[str, np.ndarray]) -> tuple[bytes, list[bytes | memoryview]]:
    header = orjson.dumps([[k, STRING if v.dtype == object else _name(v.dtype), v.shape]
                           for k, v in arrays.items()])
    return header, [_encode_strings(v) if v.dtype == object
                    else memoryview(np.ascontiguousarray(v).data).cast("B")
                    for v in arrays.values()]


def decode_arrays(specs: Any, body: bytes | memoryview) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, dtype, shape in specs:
        count = math.prod(shape)  # 1 for a scalar
        if dtype == STRING:
            strings, offset = _decode_strings(body, count, offset)
            out[name] = strings.reshape(shape)
            continue
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}")
        arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += arr.nbytes
        out[name] = arr
    return out


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _U32.unpack(await reader.readexactly(4))
    if length > MAX_FRAME:
        raise ValueError("frame too large")
    return await reader.readexactly(length)


# -- the replica's side ---------------------------------------------------------------------
def _hello(secret: bytes, app: str) -> bytes:
    name = app.encode()
    return secret + _U16.pack(len(name)) + name


async def serve_wire(run: Runner, secret: bytes, app: str, host: str) -> asyncio.Server:
    """Listen on ``host`` (a free port) and answer ``app``'s frames with ``run``."""
    expected = _hello(secret, app)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not hmac.compare_digest(await reader.readexactly(len(expected)), expected):
                return
            writer.write(b"\x01")
            while True:
                frame = memoryview(await _read_frame(reader))
                (hlen,) = _U16.unpack(frame[:2])
                inputs = decode_arrays(orjson.loads(frame[2:2 + hlen]), frame[2 + hlen:])
                status, result = await run(inputs)
                if status == "ok":
                    header, buffers = encode_arrays(result)
                    code = OK
                else:
                    header, buffers = orjson.dumps({"m": result}), []
                    code = INVALID if status == "invalid" else FAILED
                size = 3 + len(header) + sum(len(b) for b in buffers)
                # one write, one send(): small frames are the common case
                writer.write(b"".join([_U32.pack(size), _STATUS.pack(code, len(header)),
                                       header, *buffers]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, 0, backlog=1024)


# -- the gateway's side ---------------------------------------------------------------------
class WireClient:
    """Connections to one replica; each carries one call at a time and is reused."""

    def __init__(self, host: str, port: int, secret: bytes, app: str) -> None:
        self.host, self.port, self._hello = host, port, _hello(secret, app)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.broken = False
        self.kv_key = ""  # where the replica announced this address (set by the backend)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        # bounded: a node that went away (no RST from a dead host) must not stall the call;
        # TimeoutError is an OSError, so the caller tries another replica
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
        writer.write(self._hello)
        try:
            if await asyncio.wait_for(reader.readexactly(1), CONNECT_TIMEOUT_S) == b"\x01":
                return reader, writer
        except (asyncio.IncompleteReadError, TimeoutError):
            pass
        writer.close()
        raise OSError("not this application's replica")  # a stale address, port reused

    async def call(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on the replica. ConnectionError before anything was sent (the caller
        may try another replica); ServiceUnavailable when the replica went away mid-call."""
        try:
            reader, writer = await self._connect()
        except OSError as exc:
            self.broken = True
            raise ConnectionError(f"replica {self.host}:{self.port} unreachable") from exc
        header, buffers = encode_arrays(inputs)
        size = 2 + len(header) + sum(len(b) for b in buffers)
        try:
            writer.write(b"".join([_U32.pack(size), _U16.pack(len(header)), header, *buffers]))
            frame = memoryview(await _read_frame(reader))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            self.broken = True
            self._drop_idle()
            raise ServiceUnavailable(
                "the model's replica went away during the call; it was not charged, retry it",
                code="replica_unavailable", headers={"Retry-After": "1"},
            ) from exc
        except BaseException:  # cancelled mid-call: the stream is in an unknown state
            writer.close()
            raise
        self._idle.append((reader, writer))
        code, hlen = _STATUS.unpack(frame[:3])
        header_json = orjson.loads(frame[3:3 + hlen])
        if code == OK:
            return decode_arrays(header_json, frame[3 + hlen:])
        if code == INVALID:
            raise InvalidInput(header_json["m"])
        raise InferenceFailed(header_json["m"])

    def _drop_idle(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()

    def close(self) -> None:
        self._drop_idle()
