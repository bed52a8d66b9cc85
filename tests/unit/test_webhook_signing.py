"""The alert webhook signature (Stripe's scheme) and the README's receiver check agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from storefront.alerts import webhook_secret
from storefront.webhook_signing import sign, verify

BODY = b'{"id":"evt_1","type":"alert.credits"}'
SECRET = webhook_secret("k" * 48, "salt")


def _readme_verify() -> Any:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Usage alerts and their signed webhooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)  # noqa: S102 (the README's own snippet)
    return scope["verify"]


def test_a_signature_verifies_only_the_same_body_secret_and_recent_time() -> None:
    header = sign(SECRET, BODY, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, BODY, header, now=1_700_000_010)
    assert not verify(SECRET, BODY + b" ", header, now=1_700_000_010)
    assert not verify(webhook_secret("k" * 48, "other"), BODY, header, now=1_700_000_010)
    assert not verify(SECRET, BODY, header, now=1_700_000_000 + 301)  # a replay
    for bad in ("", "t=x,v1=00", "v1=" + "0" * 64, header.replace("t=", "t=1")):
        assert not verify(SECRET, BODY, bad, now=1_700_000_010)


def test_the_readme_receiver_check_accepts_our_signature() -> None:
    readme_verify = _readme_verify()
    header = sign(SECRET, BODY)
    assert readme_verify(SECRET, BODY, header)
    assert not readme_verify(SECRET, BODY.replace(b"credits", b"trial"), header)


def test_secrets_differ_per_salt_and_signing_key() -> None:
    assert SECRET.startswith("whsec_") and len(SECRET) == 6 + 64
    assert webhook_secret("j" * 48, "salt") != SECRET
