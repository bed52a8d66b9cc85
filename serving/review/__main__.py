"""``python -m serving.review``: the sandboxed smoke-inference child (see sandbox.py)."""

from .sandbox import _child

_child()
