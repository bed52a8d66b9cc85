"""Export: signed, buyer-bound bundles (ONNX, int8, fp16, Nano Kit, Jetson Orin), per-licence
watermarks in the weights, and their verification."""

from .bundle import MIN_AGREEMENT, Bundle, accuracy, build
from .signing import Signer, verify_signature
from .targets import PRECISIONS, TARGETS, convert, precision_for
from .verify import VerifyError, verify

__all__ = ["MIN_AGREEMENT", "PRECISIONS", "TARGETS", "Bundle", "Signer", "VerifyError",
           "accuracy", "build", "convert", "precision_for", "verify", "verify_signature"]
