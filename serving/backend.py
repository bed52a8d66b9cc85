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
    """How a listing is served: replicas and autoscaling (Ray Serve), dynamic batching.

    ``max_batch_size`` above 1 batches calls up to that many rows on every engine. Left at 1,
    the local backend batches by itself (up to 8 rows) models whose review-measured latency
    makes it pay, unless ``batching`` is "off" (``serving.local.batch_rows``).
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 32
    max_ongoing_requests: int = 64
    max_batch_size: int = 1
    batch_wait_ms: float = 1.0
    batching: str = "auto"  # "off": the local backend never batches this listing by itself
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
