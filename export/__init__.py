"""Export: signed, buyer-bound bundles (ONNX, int8, fp16, Nano Kit) and their verification."""

from .bundle import MIN_AGREEMENT, Bundle, accuracy, build
from .signing import Signer, verify_signature
from .targets import TARGETS, convert
from .verify import VerifyError, verify

__all__ = ["MIN_AGREEMENT", "TARGETS", "Bundle", "Signer", "VerifyError", "accuracy", "build",
           "convert", "verify", "verify_signature"]
