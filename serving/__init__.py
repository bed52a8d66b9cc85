"""Serving: the model manifest, onnxruntime checks, and the backends that run listed models."""

from .backend import Backend, ModelRef
from .codec import decode_v2_request, encode_v2_response
from .errors import (
    AimarketError,
    BadRequest,
    Conflict,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from .local import LocalBackend
from .manifest import Manifest, TensorSpec, parse_manifest
from .runtime import sample_inputs
from .tasks import postprocess, prepare


def make_backend(name: str, *, inline_us: int = 0) -> Backend:
    """The serving backend called ``name``."""
    if name == "local":
        return LocalBackend(inline_us=inline_us)
    raise ValueError(f"unknown serving backend {name!r}; available: local")


__all__ = [
    "AimarketError", "Backend", "BadRequest", "Conflict", "Forbidden", "InferenceFailed",
    "InvalidInput", "LocalBackend", "Manifest", "ModelRef", "NotFound",
    "PayloadTooLarge", "PaymentRequired", "ServiceUnavailable", "TensorSpec", "TooManyRequests",
    "Unauthorized", "decode_v2_request", "encode_v2_response", "make_backend",
    "parse_manifest", "postprocess", "prepare", "sample_inputs",
]
