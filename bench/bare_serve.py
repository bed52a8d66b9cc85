"""A model deployed on Ray Serve by hand, as a user would without aimarket (used by
bench/serving.py): the digits model behind Serve's HTTP front door, v2 JSON in and out.

    python bench/bare_serve.py MODEL.onnx --port 8123 --mode default|best

``default``: Serve's defaults (its HTTP proxy, max_ongoing_requests 5). ``best``: the fastest
settings found on these machines: RAY_worker_niceness=0 (Ray starts workers at nice 15),
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct ingress, no
separate user-code thread), RAY_SERVE_ENABLE_HA_PROXY=1 (Serve's HAProxy on the HTTP port,
balancing to the replicas' own ports) and max_ongoing_requests=64, with a plain ``__call__``
reading the raw body with orjson. Prints READY when it answers; stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--mode", choices=["default", "best"], default="default")
args = ap.parse_args()

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if args.mode == "best":
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray spells it so); default 15
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    tmp = tempfile.mkdtemp(prefix="haproxy-")
    for name, leaf in (("CONFIG_FILE_LOC", "haproxy.cfg"), ("SOCKET_PATH", "admin.sock"),
                       ("SERVER_STATE_BASE", "state"), ("SERVER_STATE_FILE", "state/servers"),
                       ("METRICS_SOCKET_PATH", "metrics.sock")):
        os.environ[f"RAY_SERVE_HAPROXY_{name}"] = os.path.join(tmp, leaf)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import orjson  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402


class Digits:
    def __init__(self, path: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, sess_options=opts,
                                         providers=["CPUExecutionProvider"])

    async def __call__(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        inp = body["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        label, probs = self.sess.run(None, {"X": x})
        return Response(orjson.dumps({"model_name": "digits", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": list(label.shape),
             "data": label.tolist()},
            {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
             "data": probs.ravel().tolist()},
        ]}), media_type="application/json")


ray.init(include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bray-"),
         log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": args.port})
options = {"max_ongoing_requests": 64} if args.mode == "best" else {}
serve.run(serve.deployment(Digits).options(**options).bind(os.path.abspath(args.model)),
          name="digits", route_prefix="/")
print("READY", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
stop.wait()
serve.shutdown()
ray.shutdown()
