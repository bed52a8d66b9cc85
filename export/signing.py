"""The platform's Ed25519 signing key (cryptography), and canonical JSON to sign."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Signer:
    """Loads the key from ``path`` (PEM, created once with mode 0600)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            path.write_bytes(pem)
            path.chmod(0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        self._key = key

    def sign(self, obj: Any) -> str:
        return base64.b64encode(self._key.sign(canonical(obj))).decode()

    def derived_key(self, purpose: str) -> bytes:
        """A secret for ``purpose`` derived from the signing key (kept with it, rotated
        with it): the watermark's key is one."""
        raw = self._key.private_bytes(serialization.Encoding.Raw,
                                      serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()

    def edge_key(self, license_id: str) -> Ed25519PrivateKey:
        """The per-export key a kit signs its usage receipts with (export/receipts.py): issued
        in the bundle, derived from the platform key and the licence id, so the marketplace
        re-derives its public half and stores no secret per export."""
        return Ed25519PrivateKey.from_private_bytes(
            self.derived_key("aimarket edge receipts\0" + license_id))

    def public_pem(self) -> str:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def verify_signature(public_pem: str | bytes, obj: Any, signature: str) -> bool:
    key = serialization.load_pem_public_key(
        public_pem.encode() if isinstance(public_pem, str) else public_pem)
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(base64.b64decode(signature), canonical(obj))
    except (InvalidSignature, ValueError):
        return False
    return True
