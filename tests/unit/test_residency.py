"""Lazy loading under a memory budget: known versions answer whether loaded or not, the least
recently used are unloaded past the budget and reload on their next call; a load slower than
the caller may wait is 503 with Retry-After, and the load goes on for the next call."""

import asyncio

import numpy as np
import pytest

from serving import LocalBackend, ModelRef, NotFound, ServiceUnavailable
from serving.residency import MIN_COST, Residency, resident_cost
from serving.runtime import new_session

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from storefront.demo import digits, iris, wine

    out = {}
    folder = tmp_path_factory.mktemp("m")
    for name, make in (("digits", digits), ("iris", iris), ("wine", wine)):
        data, manifest = make()
        path = folder / f"{name}.onnx"
        path.write_bytes(data)
        width = manifest["inputs"][0]["shape"][1]
        out[name] = (path, np.random.default_rng(1).random((2, width), dtype=np.float32))
    return out


def test_residency_keeps_the_most_recently_used_within_budget():
    r = Residency(budget=300)
    assert r.admit("a", 100) == [] and r.admit("b", 100) == [] and r.admit("c", 100) == []
    r.touch("a")  # b is now the least recently used
    assert r.admit("d", 100) == ["b"]
    assert r.fits(0) and not r.fits(1)
    assert r.admit("big", 1000) == ["c", "a", "d"]  # the newcomer itself always stays
    assert Residency(None).fits(10**15)


def test_three_models_on_a_budget_of_two(models, tmp_path):
    assert all(resident_cost(p) == MIN_COST for p, _ in models.values())  # tiny models
    refs = {n: ModelRef(key=f"{n}@1", path=p, sha256=n) for n, (p, _) in models.items()}
    expected = {n: new_session(str(p)).run(None, {"X": x}) for n, (p, x) in models.items()}

    async def scenario():
        backend = LocalBackend(threads=1, memory_budget=2 * MIN_COST)
        for ref in refs.values():
            await backend.deploy(ref)
        resident_after_deploy = {n for n in refs if backend.is_resident(refs[n].key)}
        answers = []
        for name in ["digits", "iris", "wine", "digits", "wine", "iris"]:
            out = await backend.infer(refs[name].key, {"X": models[name][1]})
            answers.append((name, out))
            assert sum(backend.is_resident(r.key) for r in refs.values()) <= 2
        cold = backend.cold_start_ms("digits@1")
        used = backend.resident_bytes()
        await backend.undeploy("iris@1")
        with pytest.raises(NotFound):
            await backend.infer("iris@1", {"X": models["iris"][1]})
        await backend.close()
        return resident_after_deploy, answers, cold, used

    resident, answers, cold, used = asyncio.run(scenario())
    assert resident == {"iris", "wine"}  # digits, deployed first, was evicted
    for name, out in answers:  # the evicted one reloaded and answered like the others
        label, probs = expected[name]
        assert np.array_equal(out["label"], label)
        assert np.allclose(out["probabilities"], probs, atol=1e-6)
    assert cold is not None and cold > 0 and used <= 2 * MIN_COST


def test_a_call_that_cannot_wait_for_the_load_is_503_and_the_load_goes_on(models):
    path, x = models["digits"]
    ref = ModelRef(key="digits@1", path=path, sha256="d")

    async def scenario():
        backend = LocalBackend(threads=1, memory_budget=MIN_COST, load_wait_s=1e-9)
        other = ModelRef(key="wine@1", path=models["wine"][0], sha256="w")
        await backend.deploy(ref)
        await backend.deploy(other)  # evicts digits
        assert backend.is_deployed("digits@1") and not backend.is_resident("digits@1")
        with pytest.raises(ServiceUnavailable) as refused:
            await backend.infer("digits@1", {"X": x})
        await backend.load("digits@1")  # the load it started, awaited to its end
        out = await backend.infer("digits@1", {"X": x})
        await backend.close()
        return refused.value, out

    err, out = asyncio.run(scenario())
    assert err.status == 503 and err.code == "backend_unavailable"
    assert err.headers["Retry-After"] == "1"
    assert out["label"].shape == (2,)


def test_the_start_loads_the_most_called_first_while_the_budget_allows(models):
    from storefront.preload import preload

    order = ["wine", "digits", "iris"]  # most called first, as by_calls orders them
    refs = [ModelRef(key=f"{n}@1", path=models[n][0], sha256=n) for n in order]

    async def scenario():
        backend = LocalBackend(threads=1, memory_budget=2 * MIN_COST)
        loaded = await preload(backend, refs)
        resident = [r.key for r in refs if backend.is_resident(r.key)]
        await backend.deploy(refs[2])  # its first call (the registry deploys it then)
        out = await backend.infer("iris@1", {"X": models["iris"][1]})
        await backend.close()
        return loaded, resident, out

    loaded, resident, out = asyncio.run(scenario())
    assert loaded == 2 and resident == ["wine@1", "digits@1"]  # nothing evicted at start
    assert out["label"].shape == (2,)
