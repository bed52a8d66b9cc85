"""How to call a listing: curl, Python, JavaScript and tritonclient, with a key placeholder."""

from __future__ import annotations

import json
from typing import Any

from serving import Manifest

KEY = "YOUR_API_KEY"


def example_body(m: Manifest) -> dict[str, Any]:
    """A task-level request body for /v1/models/{slug}/predict."""
    ex = (m.examples or [None])[0]
    if m.task == "image-classification":
        return {"image": "<base64 PNG or JPEG>"}
    if m.task.startswith("tabular-"):
        names = m.feature_names or []
        if isinstance(ex, dict):
            row = {n: ex[n] for n in names}
        elif isinstance(ex, list):
            row = dict(zip(names, ex, strict=False))
        else:
            row = {n: 0.0 for n in names}
        return {"rows": [row]}
    return {"inputs": ex or {t.name: [[0.0]] for t in m.inputs}}


def snippets(base: str, slug: str, m: Manifest) -> dict[str, str]:
    body = json.dumps(example_body(m))
    url = f"{base}/v1/models/{slug}/predict"
    spec = m.inputs[0]
    shape = [1 if d == -1 else d for d in spec.shape]
    host = base.split("://", 1)[-1]
    dtype = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}.get(
        spec.dtype, spec.dtype.upper())
    return {
        "curl": f"curl {url} \\\n  -H 'Authorization: Bearer {KEY}' \\\n"
                f"  -H 'Content-Type: application/json' \\\n  -d '{body}'",
        "python": "import httpx\n\n"
                  f"r = httpx.post(\n    \"{url}\",\n"
                  f"    headers={{\"Authorization\": \"Bearer {KEY}\"}},\n"
                  f"    json={body},\n)\nprint(r.json(), r.headers[\"X-Cost\"])",
        "javascript": f"const r = await fetch(\"{url}\", {{\n  method: \"POST\",\n"
                      f"  headers: {{\"Authorization\": \"Bearer {KEY}\", "
                      f"\"Content-Type\": \"application/json\"}},\n"
                      f"  body: JSON.stringify({body}),\n}});\nconsole.log(await r.json());",
        "tritonclient": "import numpy as np\nimport tritonclient.http as httpclient\n\n"
                        f"client = httpclient.InferenceServerClient(url=\"{host}\""
                        f"{', ssl=True' if base.startswith('https') else ''})\n"
                        f"x = np.zeros({shape}, dtype=np.{spec.dtype})\n"
                        f"inp = httpclient.InferInput(\"{spec.name}\", {shape}, \"{dtype}\")\n"
                        "inp.set_data_from_numpy(x)\n"
                        f"result = client.infer(\"{slug}\", [inp],\n"
                        f"                      headers={{\"Authorization\": \"Bearer {KEY}\"}})\n"
                        f"print(result.as_numpy(\"{m.outputs[0].name}\"))",
    }
