"""Text classification and embedding: texts to a string input, or tokenized with the upload's
Hugging Face tokenizer.json (the ``tokenizers`` library); embeddings pooled and normalised."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..codec import check_tensor
from ..errors import InvalidInput
from ..manifest import Manifest
from .common import MAX_TEXT_CHARS

FIELDS = ("input_ids", "attention_mask", "token_type_ids")


@lru_cache(maxsize=32)
def tokenizer(text: str, max_length: int, pad_to: int) -> Any:
    """The tokenizer of a tokenizer.json, truncating at ``max_length``, padding to the longest
    text (``pad_to`` 0) or to ``pad_to`` tokens."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:
        raise InvalidInput(f"tokenizer.json could not be loaded: {exc}",
                           code="invalid_tokenizer") from exc
    tok.enable_truncation(max_length)
    pad_id = tok.token_to_id("[PAD]") or tok.token_to_id("<pad>") or 0
    if pad_to:
        tok.enable_padding(pad_id=pad_id, length=pad_to)
    else:
        tok.enable_padding(pad_id=pad_id)
    return tok


def texts_of(manifest: Manifest, payload: dict[str, Any]) -> list[str]:
    texts = payload.get("texts", [payload["text"]] if "text" in payload else None)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInput("send 'text' (a string) or 'texts' (a list of strings)")
    if len(texts) > manifest.max_batch:
        raise InvalidInput(f"at most {manifest.max_batch} texts per call (max_batch)")
    for i, t in enumerate(texts):
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text {i} is {len(t):,} characters long; at most "
                               f"{MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)")
    return texts


def prepare(manifest: Manifest, payload: dict[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
    texts = texts_of(manifest, payload)
    cfg = manifest.text
    if cfg is None or cfg.inputs is None:
        spec = manifest.inputs[0]
        arr = np.asarray(texts, dtype=object)
        arr = arr.reshape([len(texts)] + [1] * (len(spec.shape) - 1))
        return {spec.name: check_tensor(spec, arr, manifest.max_batch)}, None
    if not cfg.tokenizer:
        raise InvalidInput("this listing has no tokenizer.json", code="invalid_tokenizer")
    mapping = {f: n for f, n in cfg.inputs.model_dump().items() if n is not None}
    ids_spec = manifest.input(mapping["input_ids"])
    assert ids_spec is not None
    static = ids_spec.shape[-1] if len(ids_spec.shape) == 2 and ids_spec.shape[-1] != -1 else 0
    tok = tokenizer(cfg.tokenizer, min(cfg.max_length, static or cfg.max_length), static)
    encs = tok.encode_batch(texts)
    fields = {"input_ids": [e.ids for e in encs],
              "attention_mask": [e.attention_mask for e in encs],
              "token_type_ids": [e.type_ids for e in encs]}
    out: dict[str, np.ndarray] = {}
    for field, name in mapping.items():
        given = manifest.input(name)
        assert given is not None
        out[name] = check_tensor(given, np.asarray(fields[field], dtype=given.dtype),
                                 manifest.max_batch)
    return out, np.asarray(fields["attention_mask"], dtype=np.float32)


def embeddings(manifest: Manifest, outputs: dict[str, np.ndarray], mask: Any) -> dict[str, Any]:
    cfg = manifest.embedding
    name = cfg.output if cfg and cfg.output else manifest.outputs[0].name
    arr = np.asarray(outputs[name], dtype=np.float32)
    pooling = cfg.pooling if cfg else "mean"
    if arr.ndim == 3:  # [N, T, D] token states
        if pooling == "cls":
            arr = arr[:, 0]
        elif pooling == "mean":
            m = np.ones(arr.shape[:2], np.float32) if mask is None else np.asarray(mask)
            m = m[:, :arr.shape[1], None]
            arr = (arr * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    if arr.ndim == 2 and (cfg is None or cfg.normalize):
        arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return {"embeddings": arr.tolist()}
