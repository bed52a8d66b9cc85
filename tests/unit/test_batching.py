"""Dynamic batching on the local backend: concurrent calls share runs, each gets its own answer,
a bad input fails alone, runs stay within max_batch_size (read off the batcher's counters)."""

import asyncio
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from serving import InferenceFailed, InvalidInput, LocalBackend, ModelRef, ServingOptions
from serving.local import AUTO_BATCH_MIN_US, AUTO_BATCH_ROWS
from serving.runtime import new_session

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from storefront.demo import digits

    data, _ = digits()
    path = tmp_path_factory.mktemp("m") / "d.onnx"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def picker(tmp_path_factory):
    """out[i] = x[i, idx[i]]: an index out of range fails the run, whoever else is in it."""
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["x", "idx"], ["out"], axis=1)], "picker",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("m") / "p.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _ref(path, *, latency_us=15, **serving):
    return ModelRef(key="m@1", path=path, sha256="x", latency_us=latency_us,
                    serving=ServingOptions(**serving))


def test_concurrent_calls_get_their_own_answers_in_bounded_batches(digits):
    rng = np.random.default_rng(0)
    calls = [rng.random((1 + i % 3, 64), dtype=np.float32) * 16 for i in range(24)]
    direct = new_session(str(digits))
    expected = [direct.run(None, {"X": x}) for x in calls]

    async def scenario():
        backend = LocalBackend(threads=1)  # one run at a time: the others queue and coalesce
        await backend.deploy(_ref(digits, max_batch_size=5, batch_wait_ms=0))
        outs = await asyncio.gather(*(backend.infer("m@1", {"X": x}) for x in calls))
        stats = backend.batch_stats("m@1")
        await backend.close()
        return outs, stats

    outs, stats = asyncio.run(scenario())
    for out, (label, probs) in zip(outs, expected, strict=True):
        assert np.array_equal(out["label"], label)
        assert np.allclose(out["probabilities"], probs, atol=1e-6)
    assert stats.calls == 24
    assert stats.batched_runs >= 1 and stats.runs < 24  # calls did share runs
    assert stats.largest_rows <= 5  # never more rows than max_batch_size


def test_a_bad_input_fails_alone(picker):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    good = [{"x": x[i:i + 1], "idx": np.array([[i % 4]])} for i in range(10)]
    broken = {"x": x[:1], "idx": np.array([[7]])}  # out of range: only the run can tell
    wrong_dtype = {"x": x[:1].astype(np.float64), "idx": np.array([[0]])}
    wrong_shape = {"x": np.zeros((1, 5), np.float32), "idx": np.array([[0]])}
    calls = good[:4] + [broken, wrong_dtype] + good[4:7] + [wrong_shape] + good[7:]

    async def scenario():
        backend = LocalBackend(threads=1)
        await backend.deploy(_ref(picker, max_batch_size=16, batch_wait_ms=0))
        outs = await asyncio.gather(*(backend.infer("m@1", c) for c in calls),
                                    return_exceptions=True)
        stats = backend.batch_stats("m@1")
        await backend.close()
        return outs, stats

    outs, stats = asyncio.run(scenario())
    for call, out in zip(calls, outs, strict=True):
        if call is broken:  # the model's own failure, as the same call alone gets it
            assert isinstance(out, InferenceFailed), out
        elif call is wrong_dtype or call is wrong_shape:  # refused before joining a run
            assert isinstance(out, InvalidInput), out
        else:
            i = int(call["idx"][0, 0])
            assert not isinstance(out, BaseException), out
            assert out["out"].tolist() == [[float(call["x"][0, i])]]
    assert stats.fallbacks >= 1  # the broken call's run was rerun call by call


def test_batching_follows_the_serving_options_and_the_model(digits, tmp_path):
    fixed = onnx.load(str(digits))  # the same model with a fixed batch of 1: never batched
    for value in [*fixed.graph.input, *fixed.graph.output]:
        dim = value.type.tensor_type.shape.dim
        if dim:
            dim[0].ClearField("dim_param")
            dim[0].dim_value = 1
    fixed_path = tmp_path / "fixed.onnx"
    onnx.save(fixed, str(fixed_path))

    async def rows(ref):
        backend = LocalBackend(threads=1)
        await backend.deploy(ref)
        stats = backend.batch_stats(ref.key)
        loaded = backend._models[ref.key]
        await backend.close()
        return None if stats is None else loaded.batcher.max_rows

    slow = AUTO_BATCH_MIN_US
    assert asyncio.run(rows(_ref(digits))) is None  # a 15 µs model: not worth it
    assert asyncio.run(rows(_ref(digits, latency_us=slow))) == AUTO_BATCH_ROWS  # auto
    assert asyncio.run(rows(_ref(digits, latency_us=slow, batching="off"))) is None
    assert asyncio.run(rows(_ref(digits, max_batch_size=32))) == 32  # asked for explicitly
    assert asyncio.run(rows(_ref(fixed_path, latency_us=slow, max_batch_size=4))) is None


def test_changed_options_apply_to_a_loaded_model(digits):
    async def scenario():
        backend = LocalBackend(threads=1)
        ref = _ref(digits, max_batch_size=4)
        await backend.deploy(ref)
        before = backend.batch_stats("m@1") is not None
        await backend.deploy(replace(ref, serving=replace(ref.serving, batching="off")))
        after = backend.batch_stats("m@1")
        out = await backend.infer("m@1", {"X": np.zeros((2, 64), np.float32)})
        await backend.close()
        return before, after, out

    before, after, out = asyncio.run(scenario())
    assert before and after is None and out["label"].shape == (2,)


def test_automatic_batching_keeps_to_the_way_that_pays():
    from concurrent.futures import ThreadPoolExecutor

    from serving.batching import PROBE_EVERY, Batcher

    with ThreadPoolExecutor(1) as pool:
        b = Batcher(lambda feeds: [], pool, max_rows=8, wait_s=0, slots=1, adaptive=True)
        b.learn(1, 0.010)  # 10 ms for one image
        b.learn(8, 0.160)  # 20 ms an image in a batch of 8: batching costs here
        limits = []
        for runs in range(1, 2 * PROBE_EVERY + 1):
            b.stats.runs = runs
            limits.append(b.limit())
        assert limits.count(8) == 2 and limits.count(1) == 2 * PROBE_EVERY - 2  # probes only
        for _ in range(10):  # a batch got cheap (say the neighbours went quiet) ...
            b.learn(8, 0.010)
        b.stats.runs = 1
        assert b.limit() == 8  # ... so calls are stacked again
        b.configure(max_rows=8, wait_s=0, adaptive=False)
        b.learn(8, 10.0)
        assert b.limit() == 8  # a seller's explicit max_batch_size is kept whatever it costs
