"""serving.triton_http against a small asyncio HTTP server that answers as Triton does: binary
requests and answers, answers split across reads, chunked answers, error statuses, kept-alive
connections reused, one closed while idle retried, a server that never answers timed out, a
refused connection; plus the batcher's awaited runner and the router's retry after a move."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import pytest

from serving import BackendRouter, NotFound
from serving.batching import Batcher
from serving.triton_http import (
    TritonDown,
    TritonError,
    TritonHTTP,
    TritonTimeout,
    decode_response,
    encode_request,
)

pytestmark = pytest.mark.unit

Reply = Callable[[dict[str, Any], bytes], Awaitable[bytes | None]]


def _answer(outputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A binary infer answer (body, header length), as Triton writes it."""
    specs, blobs = [], []
    for name, a in outputs.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[a.dtype.name]
        data = a.tobytes()
        specs.append({"name": name, "datatype": datatype, "shape": list(a.shape),
                      "parameters": {"binary_data_size": len(data)}})
        blobs.append(data)
    header = json.dumps({"model_name": "m", "outputs": specs}).encode()
    return header + b"".join(blobs), len(header)


def _http(status: int, body: bytes, header_length: int | None = None, *,
          chunked: bool = False, close: bool = False) -> bytes:
    head = [f"HTTP/1.1 {status} X"]
    if header_length is not None:
        head.append(f"Inference-Header-Content-Length: {header_length}")
    if close:
        head.append("Connection: close")
    if chunked:
        head.append("Transfer-Encoding: chunked")
        mid = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]))
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload + b"0\r\n\r\n"
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class FakeTriton:
    """Reads requests (Content-Length framed), answers with ``reply`` piece by piece."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[dict[str, Any], bytes]] = []
        self.server: asyncio.AbstractServer | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in head.decode().split("\r\n")[1:])
                           if k}
                body = await reader.readexactly(int(headers["content-length"]))
                n = int(headers["inference-header-content-length"])
                request = json.loads(body[:n])
                self.requests.append((request, body[n:]))
                out = await self.reply(request, body[n:])
                if out is None:
                    writer.close()
                    return
                for i in range(0, len(out), 7):  # answers arrive in small pieces
                    writer.write(out[i:i + 7])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[Reply], Awaitable[FakeTriton]]]:
    servers: list[FakeTriton] = []

    async def start(reply: Reply) -> FakeTriton:
        f = FakeTriton(reply)
        f.server = await asyncio.start_server(f.serve, "127.0.0.1", 0)
        servers.append(f)
        return f

    yield start
    for f in servers:
        assert f.server is not None
        f.server.close()


def _echo_sum(chunked: bool = False) -> Reply:
    async def reply(request: dict[str, Any], data: bytes) -> bytes:
        x = np.frombuffer(data, np.float32).reshape(request["inputs"][0]["shape"])
        body, n = _answer({"label": x.sum(axis=1).astype(np.int64),
                           "probabilities": x * 2})
        return _http(200, body, n, chunked=chunked)
    return reply


def test_the_request_header_names_binary_inputs_and_outputs() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, blobs = encode_request({"X": x}, ["label"])
    spec = orjson.loads(header)
    assert spec["inputs"] == [{"name": "X", "shape": [2, 3], "datatype": "FP32",
                               "parameters": {"binary_data_size": 24}}]
    assert spec["outputs"] == [{"name": "label", "parameters": {"binary_data": True}}]
    assert bytes(blobs[0]) == x.tobytes()
    strings = np.asarray([b"ab", b"c"], dtype=object)
    header, blobs = encode_request({"s": strings}, [])
    assert orjson.loads(header)["inputs"][0]["datatype"] == "BYTES"
    assert bytes(blobs[0]) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


def test_an_answer_decodes_binary_and_json_outputs() -> None:
    body, n = _answer({"p": np.asarray([[0.5, 1.5]], np.float32)})
    assert decode_response(body, n)["p"].tolist() == [[0.5, 1.5]]
    plain = json.dumps({"outputs": [{"name": "l", "datatype": "INT64", "shape": [2],
                                     "data": [3, 4]}]}).encode()
    out = decode_response(plain, None)["l"]
    assert out.dtype == np.int64 and out.tolist() == [3, 4]


@pytest.mark.parametrize("chunked", [False, True])
async def test_calls_reuse_one_kept_alive_connection(fake: Any, chunked: bool) -> None:
    server = await fake(_echo_sum(chunked))
    client = TritonHTTP(server.url)
    for i in range(3):
        x = np.full((2, 4), i, np.float32)
        out = await client.infer("m", {"X": x}, ["label", "probabilities"])
        assert out["label"].tolist() == [4 * i, 4 * i]
        assert np.array_equal(out["probabilities"], x * 2)
    assert server.connections == 1
    await client.close()


async def test_concurrent_calls_get_their_own_answers(fake: Any) -> None:
    server = await fake(_echo_sum())
    client = TritonHTTP(server.url)
    xs = [np.full((1, 3), i, np.float32) for i in range(20)]
    outs = await asyncio.gather(*(client.infer("m", {"X": x}, ["label"]) for x in xs))
    assert [int(o["label"][0]) for o in outs] == [3 * i for i in range(20)]
    assert server.connections <= 20
    await client.close()


async def test_an_error_status_carries_tritons_message(fake: Any) -> None:
    async def reply(request: dict[str, Any], data: bytes) -> bytes:
        return _http(400, b'{"error":"unexpected shape for input \'X\'"}')

    client = TritonHTTP((await fake(reply)).url)
    with pytest.raises(TritonError) as err:
        await client.infer("m", {"X": np.zeros((1, 2), np.float32)}, ["label"])
    assert err.value.status == 400 and "unexpected shape" in err.value.message
    await client.close()


async def test_a_connection_closed_while_idle_is_retried_on_a_fresh_one(fake: Any) -> None:
    calls = 0

    async def reply(request: dict[str, Any], data: bytes) -> bytes | None:
        nonlocal calls
        calls += 1
        if calls == 2:
            return None  # the server dropped the kept-alive connection: no answer
        body, n = _answer({"label": np.asarray([calls], np.int64)})
        return _http(200, body, n)

    server = await fake(reply)
    client = TritonHTTP(server.url)
    x = np.zeros((1, 2), np.float32)
    assert (await client.infer("m", {"X": x}, ["label"]))["label"].tolist() == [1]
    assert (await client.infer("m", {"X": x}, ["label"]))["label"].tolist() == [3]
    assert server.connections == 2
    await client.close()


async def test_connection_close_answers_are_not_reused(fake: Any) -> None:
    async def reply(request: dict[str, Any], data: bytes) -> bytes:
        body, n = _answer({"label": np.asarray([1], np.int64)})
        return _http(200, body, n, close=True)

    server = await fake(reply)
    client = TritonHTTP(server.url)
    for _ in range(2):
        await client.infer("m", {"X": np.zeros((1, 2), np.float32)}, ["label"])
    assert server.connections == 2
    await client.close()


async def test_a_server_that_never_answers_times_out(fake: Any) -> None:
    async def reply(request: dict[str, Any], data: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    client = TritonHTTP((await fake(reply)).url, timeout_s=0.05)
    with pytest.raises(TritonTimeout):
        await client.infer("m", {"X": np.zeros((1, 2), np.float32)}, ["label"])
    await client.close()


async def test_a_refused_connection_is_triton_down() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TritonHTTP(f"127.0.0.1:{port}")
    with pytest.raises(TritonDown):
        await client.infer("m", {"X": np.zeros((1, 2), np.float32)}, ["label"])


async def test_the_batcher_awaits_a_coroutine_runner_and_splits_the_answers() -> None:
    runs: list[int] = []

    async def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(len(feeds["x"]))
        await asyncio.sleep(0.01)
        return [feeds["x"] * 10]

    batcher = Batcher(run, None, max_rows=8, wait_s=0.0, slots=1)
    outs = await asyncio.gather(*(batcher.submit({"x": np.asarray([[i]], np.float32)}, 1)
                                  for i in range(6)))
    assert [o[0].tolist() for o in outs] == [[[i * 10.0]] for i in range(6)]
    assert sum(runs) == 6 and len(runs) < 6 and max(runs) > 1


class _Gone:
    """A backend that does not have the version; ``move`` says whether the router moved it
    to "new" while the call was in here (a move completing)."""

    name = "old"

    def __init__(self, router: BackendRouter, move: bool) -> None:
        self.router, self.move = router, move

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.move:
            self.router._where[key] = "new"
        raise NotFound(f"model {key} is not deployed", code="model_not_deployed")


class _Here:
    name = "new"

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] + 1}


async def test_the_router_runs_a_call_again_where_the_version_moved() -> None:
    for moved in (True, False):
        router = BackendRouter({}, "old")
        router.backends = {"old": _Gone(router, moved), "new": _Here()}  # type: ignore[dict-item]
        router._where["m@1"] = "old"
        if moved:
            out = await router.infer("m@1", {"x": np.asarray([1.0])})
            assert out["y"].tolist() == [2.0]
        else:  # not moved: the NotFound stands
            with pytest.raises(NotFound):
                await router.infer("m@1", {"x": np.asarray([1.0])})


async def test_calls_beyond_the_connection_limit_wait_for_a_free_one(fake: Any) -> None:
    server = await fake(_echo_sum())
    client = TritonHTTP(server.url, max_connections=2)
    xs = [np.full((1, 2), i, np.float32) for i in range(10)]
    outs = await asyncio.gather(*(client.infer("m", {"X": x}, ["label"]) for x in xs))
    assert [int(o["label"][0]) for o in outs] == [2 * i for i in range(10)]
    assert server.connections <= 2
    await client.close()
