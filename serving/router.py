"""Several engines at once: each listing version runs on the backend its serving options name.

``BackendRouter`` is itself a Backend. Deploying a version on another backend than the one it
runs on deploys it there first, switches calls over, then undeploys it from the old one: no
call finds it missing (a call that had reached the old backend just before it let go, and
finds the version gone there, runs again on the new one).
"""

from __future__ import annotations

import numpy as np

from .backend import Backend, ModelRef
from .errors import InvalidInput, NotFound


class BackendRouter:
    """Routes each key to the backend it was deployed on; ``name`` is the default's."""

    def __init__(self, backends: dict[str, Backend], default: str) -> None:
        self.backends = backends
        self.default = default
        self.name = default
        self._where: dict[str, str] = {}

    def backend_of(self, key: str) -> str | None:
        return self._where.get(key)

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()

    async def deploy(self, ref: ModelRef) -> None:
        target = ref.serving.backend or self.default
        backend = self.backends.get(target)
        if backend is None:
            raise InvalidInput(f"serving backend {target!r} is not enabled here; enabled: "
                               f"{', '.join(self.backends)}", code="invalid_serving_options")
        await backend.deploy(ref)
        old = self._where.get(ref.key)
        self._where[ref.key] = target
        if old is not None and old != target:
            await self.backends[old].undeploy(ref.key)

    async def undeploy(self, key: str) -> None:
        where = self._where.pop(key, None)
        for name, backend in self.backends.items():
            if where is None or name == where:
                await backend.undeploy(key)

    def is_deployed(self, key: str) -> bool:
        where = self._where.get(key)
        return where is not None and self.backends[where].is_deployed(key)

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        where = self._where.get(key)
        if where is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        try:
            return await self.backends[where].infer(key, inputs)
        except NotFound:
            moved = self._where.get(key)
            if moved is None or moved == where:
                raise
            return await self.backends[moved].infer(key, inputs)  # it moved meanwhile

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()
