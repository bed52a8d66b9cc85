"""Per task: the paid ``POST /v1/models/{slug}/predict`` (auth, metering, decoding, model,
post-processing) beside the same task pipeline in-process and raw onnxruntime on the same
tensors. Figures and ratios measured in this one run; asserts nothing.

Starts ``aimarket up`` from this checkout (embedded SQLite + Valkey, local backend) in a temp
dir; the demo catalog brings the real published models (PP-OCRv4 text regions, Magika) when
their packages are installed; the other tasks use the models tests/task_models.py builds.
Needs wrk (``apt-get install -y wrk``). Usage:

    .venv/bin/python bench/tasks.py [--seconds 3] [--connections 4] [--only detection,text]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages (and tests/task_models.py) first

from paid_call import BIN, _ms, free_port  # noqa: E402

from serving import parse_manifest, postprocess, prepare_call  # noqa: E402
from serving.runtime import new_session  # noqa: E402
from serving.tasks.audio import wav_bytes  # noqa: E402
from storefront.demo_tasks import TASK_DEMOS, text_picture  # noqa: E402
from tests import task_models as tm  # noqa: E402

ADMIN = ("admin@bench.local", "bench-pass")


def _png(size: tuple[int, int]) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _clip() -> str:
    t = np.arange(16_000) / 44_100
    return base64.b64encode(wav_bytes((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                                      44_100)).decode()


# task -> (listing slug in the catalog or None to publish, builder, request body)
Case = tuple[str | None, Callable[[], Any], dict[str, Any]]


def cases() -> dict[str, Case]:
    out: dict[str, Case] = {
        "object-detection (toy YOLOv8 head, 64x64)": (None, tm.yolo_like,
                                                      {"image": _png((640, 480))}),
        "audio-classification (toy, 16 kHz)": (None, tm.audio_clf, {"audio": _clip()}),
        "text-classification (string input)": (None, tm.text_clf,
                                               {"texts": ["love it, great"] * 4}),
        "text-embedding (tokenizer.json)": (None, tm.embedder,
                                            {"texts": ["the cat sat on the mat"] * 4}),
    }
    if TASK_DEMOS["ocr-text-regions"]() is not None:
        out["image-segmentation (PP-OCRv4 det, 640x320)"] = (
            "ocr-text-regions", TASK_DEMOS["ocr-text-regions"],
            {"image": text_picture(["Hello world", "aimarket 2026"])})
    magika = TASK_DEMOS["magika-content-types"]()
    if magika is not None:
        out["tensor (Magika, 2048 bytes)"] = ("magika-content-types",
                                             TASK_DEMOS["magika-content-types"],
                                             {"inputs": magika[1]["examples"][0]})
    for slug, task, body_of in (
            ("digit-finder", "object-detection (digit finder, 288x288 page)",
             lambda ex: {"image": ex[0]}),
            ("phone-keypad-tones", "audio-classification (keypad DTMF, 1 s at 16 kHz)",
             lambda ex: {"audio": ex[0]}),
            ("python-question-router", "text-classification (router, tokenizer.json)",
             lambda ex: {"texts": ex * 2}),
            ("python-doc-embeddings", "text-embedding (PMI-SVD, tokenizer.json)",
             lambda ex: {"texts": ex * 2})):
        built = TASK_DEMOS[slug]()
        if built is not None:
            out[task] = (slug, TASK_DEMOS[slug], body_of(built[1]["examples"]))
    return out


def unpack(data: bytes, manifest: Any) -> tuple[bytes, Any]:
    """The ONNX bytes of an upload, and the manifest with its tokenizer.json where the upload
    is an archive holding one (the catalog's text listings)."""
    if not data.startswith(b"PK"):
        tokenizer = tm.tokenizer_json() if manifest.text and manifest.text.inputs else None
        return data, (manifest if tokenizer is None else manifest.model_copy(update={
            "text": manifest.text.model_copy(update={"tokenizer": tokenizer})}))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        model, tokenizer = zf.read("model.onnx"), zf.read("tokenizer.json").decode()
    return model, manifest.model_copy(update={"text": manifest.text.model_copy(
        update={"tokenizer": tokenizer})})


def wrk(url: str, headers: dict[str, str], body: dict[str, Any], seconds: int,
        connections: int, tmp: Path) -> dict[str, float]:
    import re

    lua = tmp / "post.lua"
    lua.write_text('wrk.method = "POST"\n'
                   f"wrk.body = {json.dumps(json.dumps(body))}\n"
                   'wrk.headers["Content-Type"] = "application/json"\n'
                   + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": _ms(out, "50%"), "p99": _ms(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def loop(fn: Callable[[], Any], seconds: float) -> dict[str, float]:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"rps": len(times) / sum(times), "p50": times[len(times) // 2] * 1000,
            "p99": times[int(len(times) * 0.99)] * 1000, "errors": 0}


def publish(c: httpx.Client, seller: dict[str, str], admin: dict[str, str], data: bytes,
            manifest: dict[str, Any]) -> str:
    manifest = {**manifest, "pricing": {"per_call": "0.001", "trial_calls": 0}}
    if manifest["task"] == "text-embedding":  # the tokenizer travels beside the model
        import yaml

        files = {"model": ("bundle.zip", tm.archive({
            "model.onnx": data, "tokenizer.json": tm.tokenizer_json(),
            "manifest.yaml": yaml.safe_dump(manifest)}), "application/zip")}
        form = {"attest_rights": "true", "license": "MIT"}
    else:
        files = {"model": ("m.onnx", data, "application/octet-stream")}
        form = {"attest_rights": "true", "license": "MIT", "manifest": json.dumps(manifest)}
    r = c.post("/v1/models", headers=seller, data=form, files=files)
    r.raise_for_status()
    slug = str(r.json()["slug"])
    c.post(f"/v1/admin/models/{slug}/approve", headers=admin).raise_for_status()
    return slug


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated words of the task names")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="aimarket-bench-tasks-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIMARKET_DATA_DIR": str(tmp / "data"),
           "AIMARKET_ADMIN_EMAIL": ADMIN[0], "AIMARKET_ADMIN_PASSWORD": ADMIN[1]}
    port = free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN), "up", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, dict[str, float], dict[str, float], dict[str, float]]] = []
    try:
        c = httpx.Client(base_url=base, timeout=120)
        while True:
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)

        def login(user: str, password: str = "bench-pass") -> dict[str, str]:
            r = c.post("/v1/auth/token", data={"username": user, "password": password})
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        for who in ("seller", "buyer"):
            c.post("/v1/accounts", json={"email": f"{who}@example.com",
                                         "password": "bench-pass", "role": who})
        admin, seller = login(*ADMIN), login("seller@example.com")
        key = c.post("/v1/keys", headers=login("buyer@example.com"),
                     json={"rate_limit_rps": 10000, "rate_limit_burst": 10000}).json()["key"]
        c.post("/v1/admin/credits", headers=admin,
               json={"account_email": "buyer@example.com", "amount": "100000.00"})
        auth = {"Authorization": f"Bearer {key}"}
        words = [w for w in args.only.split(",") if w]
        for name, (slug, build, body) in cases().items():
            if words and not any(w in name for w in words):
                continue
            data, manifest = build()
            slug = slug or publish(c, seller, admin, data, manifest)
            for _ in range(25):  # use up any trial: every measured call is a paid call
                r = c.post(f"/v1/models/{slug}/predict", json=body, headers=auth)
            assert r.status_code == 200 and r.headers["X-Cost"] != "0.00", r.text
            onnx_bytes, m = unpack(data, parse_manifest(json.dumps(manifest)))
            sess = new_session(onnx_bytes)
            names = [o.name for o in sess.get_outputs()]
            tensors, _ = prepare_call(m, body)

            def pipeline(m: Any = m, sess: Any = sess, names: list[str] = names,
                         body: dict[str, Any] = body) -> Any:
                feeds, context = prepare_call(m, body)
                return postprocess(m, dict(zip(names, sess.run(None, feeds), strict=True)),
                                   context)

            paid = wrk(f"{base}/v1/models/{slug}/predict", auth, body, args.seconds,
                       args.connections, tmp)
            rows.append((name, paid, loop(pipeline, min(args.seconds, 2)),
                         loop(lambda sess=sess, t=tensors: sess.run(None, t),
                              min(args.seconds, 2))))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        log.close()
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s per task, {os.cpu_count()} cores "
          "(server and load generator share them); in-process loops single-threaded")
    print(f"{'task (model)':45} {'paid req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'non2xx':>6} "
          f"{'pipe/s':>8} {'p50':>6} {'ort/s':>8} {'p50':>6} {'paid/ort':>8}")
    for name, paid, pipe, ort in rows:
        print(f"{name:45} {paid['rps']:>10.0f} {paid['p50']:>7.2f} {paid['p99']:>7.2f} "
              f"{paid['errors']:>6.0f} {pipe['rps']:>8.0f} {pipe['p50']:>6.2f} "
              f"{ort['rps']:>8.0f} {ort['p50']:>6.2f} {paid['rps'] / ort['rps']:>8.3f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
