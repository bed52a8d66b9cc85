"""The Backend interface every serving engine implements (local ORT, Ray Serve, Triton)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ModelRef:
    """One listing version as a serving backend sees it."""

    key: str  # stable deployment name, "<slug>@<version>"
    path: Path  # the content-addressed .onnx file
    sha256: str
    latency_us: int = 0  # measured batch-1 latency at review; 0 when unknown


class Backend(Protocol):
    """Deploys listing versions and runs inference on them."""

    name: str

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
