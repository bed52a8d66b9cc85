import asyncio

import numpy as np
import pytest

from serving import InvalidInput, LocalBackend, ModelRef, NotFound


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from storefront.demo import digits

    data, manifest = digits()
    path = tmp_path_factory.mktemp("m") / "d.onnx"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("inline_us", [0, 10**6])  # thread pool / on the loop
def test_local_backend_serves_deploys_and_undeploys(digits, inline_us):
    ref = ModelRef(key="d@1", path=digits, sha256="x", latency_us=15)

    async def scenario():
        backend = LocalBackend(inline_us=inline_us)
        await backend.deploy(ref)
        await backend.deploy(ref)  # idempotent
        x = np.zeros((3, 64), dtype=np.float32)
        out = await backend.infer("d@1", {"X": x})
        assert out["label"].shape == (3,) and out["probabilities"].shape == (3, 10)
        with pytest.raises(InvalidInput):
            await backend.infer("d@1", {"X": np.zeros((1, 5), dtype=np.float32)})
        await backend.undeploy("d@1")
        with pytest.raises(NotFound):
            await backend.infer("d@1", {"X": x})
        await backend.close()

    asyncio.run(scenario())
