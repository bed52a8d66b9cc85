"""Serving: the model manifest, onnxruntime checks, and the backends that run listed models."""

from pathlib import Path

from .backend import Backend, ModelRef, ServingOptions, model_key, parse_model_key
from .codec import decode_v2_request, encode_v2_response, parse_v2_body, v2_model_metadata
from .errors import (
    AimarketError,
    BadRequest,
    Conflict,
    ErrorReply,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    MeteringUnavailable,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    error_reply,
)
from .local import LocalBackend
from .manifest import Manifest, TensorSpec, parse_manifest
from .residency import machine_memory
from .router import BackendRouter
from .runtime import sample_inputs
from .sanitize import description_html, plain_text, safe_html
from .tasks import load_image, postprocess, prepare, prepare_call, sample_payload


def make_backend(
    name: str, *, inline_us: int = 0, memory_budget: int | None = None,
    load_wait_s: float = 30.0, ray_address: str | None = None,
    ray_temp_dir: Path | None = None, ray_wire_secret: str | None = None,
    ray_idle_s: float = 600.0,
    triton_workspace: Path | None = None, triton_url: str | None = None,
    triton_repository: Path | None = None, triton_format: str = "python",
) -> Backend:
    """The serving backend called ``name``."""
    if name == "local":
        return LocalBackend(inline_us=inline_us, memory_budget=memory_budget,
                            load_wait_s=load_wait_s)
    if name == "ray":
        from .ray_backend import RayBackend  # imports Ray only when asked for

        return RayBackend(address=ray_address, temp_dir=ray_temp_dir,
                          wire_secret=ray_wire_secret, idle_s=ray_idle_s,
                          load_wait_s=load_wait_s)
    if name == "triton":
        from .triton_backend import TritonBackend  # imports tritonclient only when asked for
        from .triton_repo import FORMATS

        fmt = next((f for f in FORMATS if f == triton_format), None)
        if fmt is None:
            raise ValueError(f"unknown Triton repository format {triton_format!r}")
        return TritonBackend(workspace=triton_workspace or Path(".aimarket") / "triton",
                             url=triton_url, repository=triton_repository, fmt=fmt,
                             memory_budget=memory_budget, load_wait_s=load_wait_s)
    raise ValueError(f"unknown serving backend {name!r}; available: local, ray, triton")


__all__ = [
    "AimarketError", "Backend", "BackendRouter", "BadRequest", "Conflict", "ErrorReply",
    "Forbidden",
    "InferenceFailed", "InvalidInput", "LocalBackend", "Manifest", "MeteringUnavailable",
    "ModelRef", "NotFound",
    "PayloadTooLarge", "PaymentRequired", "ServiceUnavailable", "ServingOptions", "TensorSpec",
    "TooManyRequests", "Unauthorized", "decode_v2_request", "encode_v2_response", "error_reply",
    "description_html", "load_image", "machine_memory", "make_backend", "model_key",
    "parse_manifest", "parse_model_key", "parse_v2_body", "plain_text", "postprocess", "prepare",
    "prepare_call", "safe_html", "sample_inputs", "sample_payload", "v2_model_metadata",
]
