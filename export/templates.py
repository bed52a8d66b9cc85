"""Files written into every bundle (and the Nano Kit extras)."""

PREDICT = r'''#!/usr/bin/env python3
"""Run this model locally. Needs only onnxruntime and numpy (pip install -r requirements.txt).

    python predict.py input.json

input.json holds {"rows": [...]} (tabular: objects keyed by feature name, or value lists) or
{"inputs": {"<input name>": nested lists}} (any task; image tasks take preprocessed pixels).
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())


def session():
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    available = ort.get_available_providers()
    return ort.InferenceSession(str(HERE / "model.onnx"),
                                providers=[p for p in wanted if p in available])


def feeds(payload):
    spec = MANIFEST["inputs"][0]
    if "rows" in payload:
        names = MANIFEST.get("feature_names") or []
        rows = [[r[n] for n in names] if isinstance(r, dict) else r for r in payload["rows"]]
        return {spec["name"]: np.asarray(rows, dtype=spec["dtype"])}
    return {t["name"]: np.asarray(payload["inputs"][t["name"]], dtype=t["dtype"])
            for t in MANIFEST["inputs"]}


def predict(payload, sess=None):
    sess = sess or session()
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds(payload))))
    labels = MANIFEST.get("labels") or []
    if MANIFEST["task"] == "tabular-regression":
        first = out[MANIFEST["outputs"][0]["name"]]
        return {"predictions": [{"value": float(v)} for v in np.asarray(first).reshape(-1)]}
    if MANIFEST["task"] == "tensor":
        return {"outputs": {k: np.asarray(v).tolist() for k, v in out.items()}}
    label_out = next((out[o["name"]] for o in MANIFEST["outputs"]
                      if o["dtype"].startswith(("int", "uint"))), None)
    probs = next((out[o["name"]] for o in MANIFEST["outputs"]
                  if o["dtype"].startswith("float") and len(o["shape"]) == 2), None)
    idx = label_out if label_out is not None else np.argmax(probs, axis=1)
    return {"predictions": [
        {"label": labels[int(i)] if 0 <= int(i) < len(labels) else str(int(i))}
        for i in np.asarray(idx).reshape(-1)]}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    print(json.dumps(predict(json.loads(Path(sys.argv[1]).read_text()))))
'''

TASK_PREDICT = r'''#!/usr/bin/env python3
"""Run this model locally; it answers as the marketplace's /v1/models/{slug}/predict does,
with the marketplace's own pre- and post-processing (serving/, shipped beside this file).
Needs Python 3.10 or newer and requirements.txt (pip install -r requirements.txt).

input.json holds the body /predict takes: {"image": <base64 PNG/JPEG>} or {"images": [...]}
(image tasks), {"audio": <base64 WAV/FLAC/OGG>} (audio), {"texts": [...]} (text),
{"rows": [...]} (tabular), {"inputs": {"<input name>": nested lists}} (tensor).
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shipped serving/ package

import onnxruntime as ort  # noqa: E402

from serving.manifest import Manifest  # noqa: E402
from serving.tasks import postprocess, prepare_call  # noqa: E402

MANIFEST = Manifest.model_validate_json((HERE / "manifest.json").read_text())


def session():
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    available = ort.get_available_providers()
    return ort.InferenceSession(str(HERE / "model.onnx"),
                                providers=[p for p in wanted if p in available])


def predict(payload, sess=None):
    """A /predict request body -> the /predict answer (InvalidInput for bad input)."""
    sess = sess or session()
    feeds, context = prepare_call(MANIFEST, payload)
    names = [o.name for o in sess.get_outputs()]
    return postprocess(MANIFEST, dict(zip(names, sess.run(None, feeds))), context)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="a JSON file with the request body ('-' reads stdin)")
    args = ap.parse_args(argv)
    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    from serving.errors import AimarketError, error_reply

    try:
        answer = predict(json.loads(text))
    except AimarketError as exc:  # the marketplace's error envelope, exit status 2
        print(error_reply(exc).body.decode(), file=sys.stderr)
        return 2
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

README = """# {title} — version {version}, target {target}

Licensed to **{licensee}** (license `{license_id}`, terms: {terms}). The license id is also
written into the model's metadata (`aimarket_license_id`); `license.json` is signed by the
marketplace (Ed25519). Check the bundle with `aimarket verify <bundle.zip>`.

Run it:

    pip install -r requirements.txt
    python predict.py input.json

Accuracy against the listed model on {samples} sample inputs: agreement {agreement:.4f},
largest output difference {max_diff:.3g}.
{notes}
"""

REQUIREMENTS = "onnxruntime>=1.16\nnumpy>=1.24\n"

BUILD_ENGINE = """#!/bin/sh
# Build a TensorRT engine for this Jetson Nano (JetPack 4.6, TensorRT 8.2) from model.onnx.
set -e
cd "$(dirname "$0")"
/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model.plan --fp16 \\
  --workspace=1024 --verbose > build_engine.log 2>&1 || {
  echo "trtexec could not build an engine; run.py will use onnxruntime" >&2; exit 0; }
echo "engine written to model.plan"
"""

DOCKERFILE = """# Runtime image for the Nano Kit: L4T ML (JetPack 4.6.1, TensorRT 8.2, CUDA 10.2)
FROM nvcr.io/nvidia/l4t-ml:r32.7.1-py3
WORKDIR /opt/aimarket-model
COPY . .
RUN pip3 install --no-cache-dir -r requirements.txt && sh build_engine.sh
EXPOSE 8080
CMD ["python3", "run.py", "--port", "8080"]
"""

SERVICE = """[Unit]
Description=aimarket model {title} (license {license_id})
After=network-online.target

[Service]
WorkingDirectory=/opt/aimarket-model
ExecStart=/usr/bin/python3 /opt/aimarket-model/run.py --port 8080
Restart=on-failure
User=aimarket

[Install]
WantedBy=multi-user.target
"""

RUNNER = r'''#!/usr/bin/env python3
"""Serve the model on the kit, answering as the marketplace does:

    POST /predict                 the task's request body, as /v1/models/{slug}/predict takes it
                                  (an image, texts, rows, or {"inputs": ...} for tensor models)
    POST /v2/models/{name}/infer  an Open Inference Protocol v2 body (JSON, or with the binary
                                  tensor extension), as /v2/models/{slug}/infer takes it
    GET  /health

A listing priced per edge call ships edge.json and edge-key.pem: each call served is counted,
and every --receipt-calls calls or --receipt-seconds seconds (and when the runner stops) a
signed receipt is written to usage/receipts/; `aimarket kit sync <this folder>` posts them.
"""
import argparse
import json
import signal
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:  # the marketplace's own error envelope: the shipped pipeline's, else the kit's copy
    from serving.errors import AimarketError, InvalidInput, NotFound, error_reply
except ImportError:
    from errors import AimarketError, InvalidInput, NotFound, error_reply
try:  # the v2 codec ships with the task pipeline (not on the Python 3.6 Nano Kit)
    from serving.codec import decode_v2_request, encode_v2_response, parse_v2_body
except ImportError:
    decode_v2_request = None
import predict as bundle

HERE = Path(__file__).resolve().parent
SESSION = bundle.session()
VERSION = str(json.loads((HERE / "license.json").read_text())["license"].get("version", "1"))
METER = None  # the edge-call counter (receipts.Meter) of a listing priced per edge call


def infer_v2(name, raw, header_length):
    if decode_v2_request is None:
        raise NotFound("this kit's runtime serves POST /predict only")
    feeds, wanted = decode_v2_request(parse_v2_body(raw, header_length), bundle.MANIFEST)
    names = [o.name for o in SESSION.get_outputs()]
    outputs = dict(zip(names, SESSION.run(None, feeds)))
    return encode_v2_response(name, VERSION, uuid.uuid4().hex, outputs, wanted)


def answer(path, raw, header_length):
    parts = path.strip("/").split("/")
    if path == "/predict":
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput("the body is not JSON: %s" % exc) from exc
        return bundle.predict(body, SESSION)
    if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer":
        return infer_v2(parts[2], raw, header_length)
    raise NotFound("no route %s; POST /predict or /v2/models/<name>/infer" % path)


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, headers, data):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"Content-Type": "application/json"}, b'{"status": "ok"}')
        else:
            reply = error_reply(NotFound("no route %s; GET /health" % self.path))
            self._send(reply.status, reply.headers, reply.body)

    def do_POST(self):
        status, headers = 200, {"Content-Type": "application/json"}
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                data = json.dumps(answer(self.path, raw,
                                         self.headers.get("Inference-Header-Content-Length"))
                                  ).encode()
                if METER is not None:
                    METER.count()
            except AimarketError:
                raise
            except Exception as exc:  # bad input: say what, keep serving
                raise InvalidInput(str(exc)) from exc
        except AimarketError as exc:  # the same JSON error envelope as the marketplace
            reply = error_reply(exc)
            status, headers, data = reply.status, reply.headers, reply.body
        self._send(status, headers, data)


def _stop(*_):
    sys.exit(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--receipt-calls", type=int, default=1000)
    ap.add_argument("--receipt-seconds", type=float, default=3600.0)
    args = ap.parse_args()
    if (HERE / "edge.json").exists():
        from receipts import Meter

        METER = Meter(HERE, args.receipt_calls, args.receipt_seconds)
    signal.signal(signal.SIGTERM, _stop)
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    try:
        server.serve_forever()
    finally:
        if METER is not None:
            METER.close()  # the calls since the last receipt
'''
