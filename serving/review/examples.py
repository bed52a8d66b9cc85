"""The manifest's examples: the demo offers each one, so each must go through the task pipeline
of ``/v1/models/{slug}/predict`` (images and clips decoded under the site's limits, texts
within theirs, rows keyed by the features, tensors of the inputs' shapes). One that does not
is refused at upload."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..manifest import IMAGE_TASKS, TEXT_TASKS, Manifest
from ..tasks import prepare


def _payload(manifest: Manifest, example: Any) -> dict[str, Any]:
    if manifest.task in IMAGE_TASKS or manifest.task == "audio-classification":
        if isinstance(example, str):  # base64 wrapped over lines in YAML is still base64
            example = "".join(example.split())
        return {"audio" if manifest.task == "audio-classification" else "image": example}
    if manifest.task in TEXT_TASKS:  # an example is one text
        return {"texts": [example]}
    if manifest.task.startswith("tabular-"):
        return {"rows": [example]}
    return {"inputs": example}


def check_examples(manifest: Manifest) -> None:
    """Raise InvalidInput (``invalid_example``) naming the first example the demo cannot use."""
    for i, example in enumerate(manifest.examples or []):
        try:
            prepare(manifest, _payload(manifest, example))
        except InvalidInput as exc:
            raise InvalidInput(
                f"manifest example {i} (examples.{i}) cannot be used by the demo: {exc.message}",
                code="invalid_example", details={"field": f"examples.{i}", "example": i},
            ) from exc
