"""Every listing's model-page snippets (curl, Python, tritonclient) run as written against a
live `aimarket up`: the API key pasted in, a picture or a clip of the caller's own beside them."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

from tests.e2e.test_journey import server  # noqa: F401  (the module's live server)

SNIPPET = re.compile(r"<summary>(\w+)</summary><pre><code>(.*?)</code></pre>", re.S)


def _media(folder: Path) -> None:
    """What a caller has at hand: a photo-like picture and a short recording."""
    img = Image.new("RGB", (320, 240), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 40, 140, 160), fill=(200, 30, 30))
    draw.ellipse((180, 60, 290, 170), fill=(30, 60, 200))
    draw.text((60, 190), "hello snippets 42", fill=(0, 0, 0))
    img.save(folder / "image.png")
    t = np.arange(16_000) / 16_000
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000,
                    format="WAV")
    (folder / "clip.wav").write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def caller(server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    url, _, _ = server
    c = httpx.Client(base_url=url, timeout=60)
    email = "snippets@example.com"
    assert c.post("/v1/accounts", json={"email": email, "password": "snippet-pass",
                                        "role": "buyer"}).status_code == 201

    def login(user: str, password: str) -> dict[str, str]:
        r = c.post("/v1/auth/token", data={"username": user, "password": password})
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    buyer = login(email, "snippet-pass")
    r = c.post("/v1/admin/credits", headers=login("admin@example.com", "change-me-now"),
               json={"account_email": email, "amount": "50.00"})
    assert r.status_code in (200, 201), r.text
    key = c.post("/v1/keys", headers=buyer).json()["key"]
    folder = tmp_path_factory.mktemp("caller")
    _media(folder)
    slugs = [m["slug"] for m in c.get("/v1/models", params={"limit": 100}).json()["items"]]
    return {"client": c, "key": key, "folder": folder, "slugs": slugs}


def _snippets(c: httpx.Client, slug: str) -> dict[str, str]:
    page = c.get(f"/models/{slug}")
    assert page.status_code == 200
    return {lang: html.unescape(code) for lang, code in SNIPPET.findall(page.text)}


def test_every_listings_snippets_work_as_written(caller: dict[str, Any]) -> None:
    c, key, folder = caller["client"], caller["key"], caller["folder"]
    assert len(caller["slugs"]) >= 4
    failures = []
    for slug in caller["slugs"]:
        found = _snippets(c, slug)
        assert {"curl", "python", "tritonclient"} <= set(found), slug
        for lang in ("curl", "python", "tritonclient"):
            code = found[lang].replace("YOUR_API_KEY", key)
            cmd = ["bash", "-c", code] if lang == "curl" else [sys.executable, "-c", code]
            run = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120)
            out = run.stdout + run.stderr
            ok = run.returncode == 0 and '"error"' not in out and "Traceback" not in out
            if lang == "curl":  # curl prints the answer: a JSON object with the call's id
                ok = ok and '"id"' in out
            if not ok:
                failures.append(f"{slug} {lang}: rc={run.returncode} {out[-600:]}")
    assert failures == []
