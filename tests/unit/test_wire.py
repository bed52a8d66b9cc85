"""serving.wire, the gateway's line into a replica, on loopback with a real onnxruntime model
(no Ray): tensors arrive intact, strangers are refused, a replica gone mid-call is a 503."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving import InferenceFailed, InvalidInput, ServiceUnavailable
from serving.runtime import new_session
from serving.wire import WireClient, serve_wire

SECRET = bytes(range(32))


def _session():  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "one"], ["Y"]),
         helper.make_node("ArgMax", ["X"], ["i"], axis=1, keepdims=0)],
        "plus-one", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return new_session(model.SerializeToString())


async def _start(app: str = "m-v1", fail: str = ""):  # type: ignore[no-untyped-def]
    session = _session()

    async def run(inputs):  # type: ignore[no-untyped-def]
        if fail:
            return (fail, "no good")
        try:
            y, i = session.run(None, inputs)
        except Exception as exc:
            return ("invalid", str(exc))
        return ("ok", {"Y": y, "i": i})

    server = await serve_wire(run, SECRET, app, "127.0.0.1")
    return server, server.sockets[0].getsockname()[1]


async def test_tensors_round_trip_on_reused_connections() -> None:
    server, port = await _start()
    client = WireClient("127.0.0.1", port, SECRET, "m-v1")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    results = await asyncio.gather(*[client.call({"X": x * k}) for k in range(8)])
    for k, out in enumerate(results):
        np.testing.assert_array_equal(out["Y"], x * k + 1)
        assert out["i"].dtype == np.int64 and out["i"].tolist() == ([0, 0, 0] if k == 0
                                                                    else [3, 3, 3])
    await client.call({"X": x})
    assert len(client._idle) == 8  # connections are kept and reused, one call at a time each
    client.close()
    server.close()


async def test_wrong_secret_or_application_is_refused_before_anything_is_sent() -> None:
    server, port = await _start()
    x = {"X": np.zeros((1, 4), np.float32)}
    for client in (WireClient("127.0.0.1", port, bytes(32), "m-v1"),
                   WireClient("127.0.0.1", port, SECRET, "other-v1")):
        with pytest.raises(ConnectionError):
            await client.call(x)
        assert client.broken
    server.close()


async def test_model_faults_map_to_the_error_tree() -> None:
    server, port = await _start()
    client = WireClient("127.0.0.1", port, SECRET, "m-v1")
    with pytest.raises(InvalidInput):
        await client.call({"X": np.zeros((1, 3), np.float32)})
    server.close()
    server, port = await _start(fail="failed")
    with pytest.raises(InferenceFailed):
        await WireClient("127.0.0.1", port, SECRET, "m-v1").call(
            {"X": np.zeros((1, 4), np.float32)})
    server.close()


async def test_a_replica_that_goes_away_mid_call_is_unavailable() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(32 + 2 + 4)
        writer.write(b"\x01")  # welcomes the caller, then dies while it waits for the answer
        accepted.append(writer)
        await reader.readexactly(4)
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = WireClient("127.0.0.1", server.sockets[0].getsockname()[1], SECRET, "m-v1")
    with pytest.raises(ServiceUnavailable) as err:
        await client.call({"X": np.zeros((1, 4), np.float32)})
    assert err.value.code == "replica_unavailable" and client.broken and accepted
    server.close()


async def test_string_tensors_round_trip_to_a_text_model() -> None:
    """A text model's string input (and a string output) cross the wire as UTF-8."""
    from tests import task_models as tm

    session = new_session(tm.text_clf()[0])

    async def run(inputs):  # type: ignore[no-untyped-def]
        label, probs = session.run(None, inputs)
        words = np.asarray([f"échos {t}" for t in inputs["text"].reshape(-1)], dtype=object)
        return ("ok", {"label": label, "probabilities": probs, "echo": words.reshape(-1, 1)})

    server = await serve_wire(run, SECRET, "t-v1", "127.0.0.1")
    client = WireClient("127.0.0.1", server.sockets[0].getsockname()[1], SECRET, "t-v1")
    texts = np.asarray([["love it, great"], ["awful and bad ☹"], [""]], dtype=object)
    out = await client.call({"text": texts})
    want_label, want_probs = session.run(None, {"text": texts})
    np.testing.assert_array_equal(out["label"], want_label)
    np.testing.assert_array_equal(out["probabilities"], want_probs)
    assert out["echo"].dtype == object and out["echo"].shape == (3, 1)
    assert out["echo"].reshape(-1).tolist() == [f"échos {t}" for t in texts.reshape(-1)]
    client.close()
    server.close()
