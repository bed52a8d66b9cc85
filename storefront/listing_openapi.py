"""One listing's OpenAPI 3.1 document, generated from its manifest: the task-level
``/predict`` request and response, the v2 infer routes, the API-key auth, the error envelope
and the metering headers (``GET /v1/models/{slug}/openapi.json``)."""

from __future__ import annotations

from typing import Any

from serving import Manifest

Schema = dict[str, Any]

JSON_TYPES = {"string": "string", "bool": "boolean"}
ERRORS = {
    "401": "no API key, or a revoked or unknown one",
    "402": "trial used up and not enough credits, or a spend cap reached",
    "404": "no live model by this name (or version)",
    "410": "the version is past its sunset (version_sunset); never charged",
    "422": "the body does not fit the model's inputs",
    "429": "rate limited (Retry-After says when to come back)",
    "503": "the model is loading or metering is unavailable; never charged",
}
HEADERS = {
    "X-Request-Id": ("the call's id (its usage event's id)", "string"),
    "X-Model-Version": ("the version that answered", "string"),
    "X-Cost": ("USD charged for this call (0.00 for a trial call)", "string"),
    "X-Trial-Remaining": ("free trial calls left on this model", "string"),
    "X-Credits-Remaining": ("prepaid credits left, USD", "string"),
}


def _scalar(dtype: str) -> Schema:
    if dtype in JSON_TYPES:
        return {"type": JSON_TYPES[dtype]}
    return {"type": "integer"} if dtype[:3] in ("int", "uin") else {"type": "number"}


def _nested(dtype: str, shape: list[int]) -> Schema:
    """A nested-list tensor of ``shape`` (-1: any length)."""
    schema = _scalar(dtype)
    for d in reversed(shape):
        schema = {"type": "array", "items": schema,
                  **({"minItems": d, "maxItems": d} if d > 0 else {})}
    return schema


def _one_or_many(one: str, many: str, what: Schema, max_batch: int) -> Schema:
    return {"type": "object", "properties": {
        one: what, many: {"type": "array", "items": what, "minItems": 1, "maxItems": max_batch}},
        "anyOf": [{"required": [one]}, {"required": [many]}]}


def request_schema(m: Manifest) -> Schema:
    """The body ``/v1/models/{slug}/predict`` takes for this manifest's task."""
    b64 = {"type": "string", "contentEncoding": "base64"}
    if m.task in ("image-classification", "object-detection", "image-segmentation"):
        return _one_or_many("image", "images", {**b64, "description": "PNG or JPEG"},
                            m.max_batch)
    if m.task == "audio-classification":
        return _one_or_many("audio", "audios", {**b64, "description": "WAV, FLAC or OGG"},
                            m.max_batch)
    if m.task in ("text-classification", "text-embedding"):
        return _one_or_many("text", "texts", {"type": "string"}, m.max_batch)
    if m.task.startswith("tabular-"):
        names = m.feature_names or []
        value = _scalar(m.inputs[0].dtype)
        by_name = {"type": "object", "properties": {n: value for n in names},
                   "required": names}
        as_list = {"type": "array", "items": value, "minItems": len(names),
                   "maxItems": len(names)}
        return {"type": "object", "required": ["rows"], "properties": {"rows": {
            "type": "array", "minItems": 1, "maxItems": m.max_batch,
            "items": {"oneOf": [by_name, as_list]}}}}
    return {"type": "object", "required": ["inputs"], "properties": {"inputs": {
        "type": "object", "required": [t.name for t in m.inputs],
        "properties": {t.name: _nested(t.dtype, t.shape) for t in m.inputs}}}}


def _predictions(item: Schema) -> Schema:
    return {"predictions": {"type": "array", "items": item}}


def response_schema(m: Manifest) -> Schema:
    """What ``/predict`` answers for this task (beside model, version and id)."""
    label = {"type": "string"}
    score = {"type": "number"}
    if m.task == "object-detection":
        body = _predictions({"type": "object", "required": ["detections"], "properties": {
            "detections": {"type": "array", "items": {
                "type": "object", "required": ["label", "score", "box"], "properties": {
                    "label": label, "score": score,
                    "box": {"type": "array", "items": score, "minItems": 4, "maxItems": 4,
                            "description": "x1, y1, x2, y2 in the image's pixels"}}}}}})
    elif m.task == "image-segmentation":
        body = _predictions({"type": "object", "required": ["mask", "classes"], "properties": {
            "mask": {"type": "string", "contentEncoding": "base64",
                     "description": "PNG of class indices at the image's size"},
            "classes": {"type": "array", "items": {"type": "object", "properties": {
                "label": label, "fraction": score}}}}})
    elif m.task == "text-embedding":
        body = {"embeddings": {"type": "array", "items": {"type": "array", "items": score}}}
    elif m.task == "tabular-regression":
        body = _predictions({"type": "object", "required": ["value"],
                             "properties": {"value": score}})
    elif m.task == "tensor":
        body = {"outputs": {"type": "object", "properties": {
            t.name: _nested(t.dtype, t.shape) for t in m.outputs}}}
    else:  # the classifiers
        ranked = {"type": "object", "required": ["label", "score"],
                  "properties": {"label": label, "score": score}}
        body = _predictions({"type": "object", "required": ["label", "score", "top"],
                             "properties": {"label": label,
                                            "score": {"type": ["number", "null"]},
                                            "top": {"type": "array", "items": ranked}}})
    return {"type": "object", "required": ["model", "version", "id", *body],
            "properties": {"model": {"type": "string"},
                           "version": {"type": "integer"}, "id": {"type": "string"}, **body}}


def _v2_tensor(names: list[str]) -> Schema:
    return {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "enum": names},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
                                                 "INT8", "INT16", "INT32", "INT64", "FP16",
                                                 "FP32", "FP64", "BYTES"]},
        "data": {"type": "array", "description": "the tensor's values, flattened row-major"}}}


def _responses(ok: str) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {
        "description": "answered and metered",
        "headers": {name: {"description": text, "schema": {"type": kind}}
                    for name, (text, kind) in HEADERS.items()}
        | {"Deprecation": {"description": "a deprecated version (RFC 9745)",
                           "schema": {"type": "string"}},
           "Sunset": {"description": "when a deprecated version stops answering (RFC 8594)",
                      "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}}}}
    for status, text in ERRORS.items():
        out[status] = {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def document(base: str, slug: str, version: int, m: Manifest) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one listing (its current version's manifest)."""
    v2_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _v2_tensor([t.name for t in m.inputs])},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object"}}}
    v2_response = {"type": "object", "required": ["model_name", "model_version", "outputs"],
                   "properties": {"model_name": {"type": "string"},
                                  "model_version": {"type": "string"},
                                  "id": {"type": "string"},
                                  "outputs": {"type": "array",
                                              "items": _v2_tensor([t.name for t in m.outputs])}}}

    def call(summary: str, request: str, ok: str, params: list[Any] | None = None
             ) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "security": [{"apiKey": []}], "parameters": params or [],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{request}"}}}},
            "responses": _responses(ok)}}

    pinned = [{"name": "version", "in": "path", "required": True,
               "schema": {"type": "integer", "minimum": 1}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": m.title, "version": str(version),
                 "description": f"{m.task} model '{slug}' on aimarket, billed per call "
                                f"({m.pricing.per_call} USD; {m.pricing.trial_calls} free "
                                "trial calls)."},
        "servers": [{"url": base}],
        "paths": {
            f"/v1/models/{slug}/predict": call(
                f"{m.task}: task-level JSON in, predictions out", "PredictRequest",
                "PredictResponse"),
            f"/v2/models/{slug}/infer": call(
                "Open Inference Protocol v2: tensors in, tensors out", "InferRequest",
                "InferResponse"),
            f"/v2/models/{slug}/versions/{{version}}/infer": call(
                "the same, pinned to one version", "InferRequest", "InferResponse", pinned),
        },
        "components": {
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "an API key from /account (Authorization: Bearer <key>)"}},
            "schemas": {
                "PredictRequest": request_schema(m), "PredictResponse": response_schema(m),
                "InferRequest": v2_request, "InferResponse": v2_response,
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "details": {}}}}},
            },
        },
    }
