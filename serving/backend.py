"""The Backend interface every serving engine implements (local ORT, Ray Serve, Triton)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


def model_key(slug: str, version: int) -> str:
    """The one name of a listing version across backends: ``slug@3``."""
    return f"{slug}@{version}"


def parse_model_key(key: str) -> tuple[str, int]:
    """``slug@3`` -> ("slug", 3)."""
    slug, _, version = key.rpartition("@")
    return slug, int(version)


@dataclass(frozen=True)
class ServingOptions:
    """How a listing is served by engines that scale (Ray Serve); the local backend ignores it.

    ``max_batch_size`` 1 turns dynamic batching off: it pays for heavy models and costs
    throughput on a microsecond one.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 32
    max_ongoing_requests: int = 64
    max_batch_size: int = 1
    batch_wait_ms: float = 1.0
    backend: str = ""  # the engine, among the enabled ones, that runs the listing; "": default


@dataclass(frozen=True)
class ModelRef:
    """One listing version as a serving backend sees it."""

    key: str  # stable deployment name, model_key(slug, version)
    path: Path  # the content-addressed .onnx file
    sha256: str
    latency_us: int = 0  # measured batch-1 latency at review; 0 when unknown
    serving: ServingOptions = ServingOptions()
    max_batch: int = 64  # the largest batch a caller may send (the manifest's max_batch)


class Backend(Protocol):
    """Deploys listing versions and runs inference on them."""

    name: str

    async def start(self) -> None:
        """Connect to or start the engine; called once before anything else."""

    async def deploy(self, ref: ModelRef) -> None:
        """Make ``ref`` servable; idempotent."""

    async def undeploy(self, key: str) -> None:
        """Stop serving ``key``; idempotent."""

    def is_deployed(self, key: str) -> bool:
        """Whether ``key`` is servable now."""

    async def infer(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; raises InferenceFailed (model fault) or InvalidInput (input fault)."""

    async def close(self) -> None:
        """Release every resource."""
