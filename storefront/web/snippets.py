"""How to call a listing: curl, Python, JavaScript and tritonclient, with a key placeholder."""

from __future__ import annotations

import json
from typing import Any

from serving import Manifest

KEY = "YOUR_API_KEY"


def example_body(m: Manifest) -> dict[str, Any]:
    """A task-level request body for /v1/models/{slug}/predict."""
    ex = (m.examples or [None])[0]
    if m.task in ("image-classification", "object-detection", "image-segmentation"):
        return {"image": "<base64 PNG or JPEG>"}
    if m.task == "audio-classification":
        return {"audio": "<base64 WAV, FLAC or OGG>"}
    if m.task in ("text-classification", "text-embedding"):
        return {"texts": ex if isinstance(ex, list) else ["Hello, world"]}
    if m.task.startswith("tabular-"):
        names = m.feature_names or []
        if isinstance(ex, dict):
            row = {n: ex[n] for n in names}
        elif isinstance(ex, list):
            row = dict(zip(names, ex, strict=False))
        else:
            row = {n: 0.0 for n in names}
        return {"rows": [row]}
    return {"inputs": ex or {t.name: _zeros(t.shape, t.dtype) for t in m.inputs}}


def _zeros(shape: list[int], dtype: str) -> Any:
    """A tensor of the input's shape (dynamic dimensions 1): what the model accepts."""
    value: Any = "" if dtype == "string" else (0 if dtype[:3] in ("int", "uin") else 0.0)
    for d in reversed(shape):
        value = [value] * (1 if d == -1 else d)
    return value


MEDIA = {"image": ("image.png", "base64 -w0 image.png"),
         "audio": ("clip.wav", "base64 -w0 clip.wav")}


V2_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
            "string": "BYTES"}


def _triton_inputs(m: Manifest) -> str:
    """One InferInput per model input (dynamic dimensions 1), zeros or empty strings."""
    lines = []
    for spec in m.inputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        value = (f"np.full({shape}, b\"\", dtype=object)" if spec.dtype == "string"
                 else f"np.zeros({shape}, dtype=np.{spec.dtype})")
        lines.append(f"inp = httpclient.InferInput(\"{spec.name}\", {shape}, "
                     f"\"{V2_TYPES.get(spec.dtype, spec.dtype.upper())}\")\n"
                     f"inp.set_data_from_numpy({value})\ninputs.append(inp)\n")
    return "".join(lines)


def snippets(base: str, slug: str, m: Manifest) -> dict[str, str]:
    example = example_body(m)
    body = json.dumps(example)
    url = f"{base}/v1/models/{slug}/predict"
    media = next((k for k in MEDIA if k in example), None)
    if media is not None:  # a file of the caller's, base64-encoded by the snippet itself
        name, shell = MEDIA[media]
        curl_data = f"-d \"{{\\\"{media}\\\": \\\"$({shell})\\\"}}\""
        py_body = (f"{{\"{media}\": base64.b64encode(open(\"{name}\", \"rb\").read())"
                   ".decode()}")
        py_import = "import base64\n\nimport httpx\n\n"
    else:
        curl_data, py_body, py_import = f"-d '{body}'", body, "import httpx\n\n"
    host = base.split("://", 1)[-1]
    return {
        "curl": f"curl {url} \\\n  -H 'Authorization: Bearer {KEY}' \\\n"
                f"  -H 'Content-Type: application/json' \\\n  {curl_data}",
        "python": py_import +
                  f"r = httpx.post(\n    \"{url}\",\n"
                  f"    headers={{\"Authorization\": \"Bearer {KEY}\"}},\n"
                  f"    json={py_body},\n)\nprint(r.json(), r.headers[\"X-Cost\"])",
        "javascript": f"const r = await fetch(\"{url}\", {{\n  method: \"POST\",\n"
                      f"  headers: {{\"Authorization\": \"Bearer {KEY}\", "
                      f"\"Content-Type\": \"application/json\"}},\n"
                      f"  body: JSON.stringify({body}),\n}});\nconsole.log(await r.json());",
        "tritonclient": "import numpy as np\nimport tritonclient.http as httpclient\n\n"
                        f"client = httpclient.InferenceServerClient(url=\"{host}\""
                        f"{', ssl=True' if base.startswith('https') else ''})\n"
                        f"inputs = []\n{_triton_inputs(m)}"
                        f"result = client.infer(\"{slug}\", inputs,\n"
                        f"                      headers={{\"Authorization\": \"Bearer {KEY}\"}})\n"
                        f"print(result.as_numpy(\"{m.outputs[0].name}\"))",
    }
