"""The ``local`` backend: one onnxruntime session per live version, in this process."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from .backend import ModelRef
from .errors import InferenceFailed, InvalidInput, NotFound
from .runtime import new_session


class _Loaded:
    __slots__ = ("session", "output_names", "inline")

    def __init__(self, session: ort.InferenceSession, inline: bool) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.inline = inline


class LocalBackend:
    """Runs models in-process; inference happens on a small thread pool, off the event loop."""

    name = "local"

    def __init__(self, *, threads: int | None = None, inline_us: int = 0) -> None:
        """``inline_us``: models measured faster than this many microseconds per batch-1 call
        run on the event loop itself; a thread hop costs more than such a model."""
        self._models: dict[str, _Loaded] = {}
        self._inline_us = inline_us
        # onnxruntime releases the GIL while it runs, so threads give real parallelism.
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 2, thread_name_prefix="ort"
        )

    async def start(self) -> None:
        return None

    async def deploy(self, ref: ModelRef) -> None:
        if ref.key in self._models:
            return
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._pool, new_session, str(ref.path))
        inline = 0 < ref.latency_us <= self._inline_us
        self._models.setdefault(ref.key, _Loaded(session, inline))

    async def undeploy(self, key: str) -> None:
        self._models.pop(key, None)

    def is_deployed(self, key: str) -> bool:
        return key in self._models

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = self._models.get(key)
        if loaded is None:
            raise NotFound(f"model {key} is not deployed", code="model_not_deployed")
        try:
            if loaded.inline:
                results = loaded.session.run(None, inputs)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._pool, loaded.session.run, None, inputs)
        except InvalidArgument as exc:
            raise InvalidInput(f"the model refused the input: {exc}") from exc
        except Exception as exc:
            raise InferenceFailed(f"inference failed: {type(exc).__name__}") from exc
        return dict(zip(loaded.output_names, results, strict=True))

    async def close(self) -> None:
        self._models.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
