"""The automated review of an upload (file sniffing, safe archive extraction, ONNX checks,
sandboxed smoke inference, weight fingerprints).

Outside this package only what ``__all__`` names is used; the modules are internal.
"""

from .fingerprint import COPY_SCORE, similarity
from .intake import Accepted, intake

__all__ = ["COPY_SCORE", "Accepted", "intake", "similarity"]
