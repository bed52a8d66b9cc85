"""The bundle's predict.py answers as the hosted ``/v1/models/{slug}/predict`` does because it
runs the same code: serving's task pipeline (manifest, tensor checks, ``serving/tasks``) is
written into the bundle at build time from the installed package, never a hand-kept copy.

The Nano Kit's runtime (JetPack 4.6: Python 3.6) cannot run that code: its bundles keep the
standalone predict.py of the first tasks, and the tasks that need the pipeline refuse to
export to it with the reason."""

from __future__ import annotations

from pathlib import Path

import serving
from serving import InvalidInput, Manifest

from . import templates

# serving's modules the task pipeline imports (serving/tasks/* and what they import)
SHIPPED = ("errors.py", "codec.py", "manifest.py")
PACKAGE_INIT = ('"""The marketplace\'s task pipeline, shipped with the model: the same code '
                'as the hosted /predict."""\n')
# Targets whose runtime is older than the pipeline's Python (3.10): target -> its runtime
LEGACY_RUNTIMES = {"nano-kit": "JetPack 4.6 runs Python 3.6"}
# Tasks the standalone predict.py answers; any other needs the shipped pipeline
LEGACY_TASKS = ("image-classification", "tabular-classification", "tabular-regression", "tensor")
BASE_REQUIREMENTS = ("onnxruntime>=1.16", "numpy>=1.24", "pydantic>=2.5", "pyyaml>=6",
                     "orjson>=3.9", "pillow>=10")


def requirements(manifest: Manifest) -> str:
    """What the task's pipeline needs, one requirement a line."""
    extra: list[str] = []
    if manifest.task == "audio-classification":
        extra += ["soundfile>=0.12", "scipy>=1.10"]
    if manifest.text is not None and manifest.text.inputs is not None:
        extra += ["tokenizers>=0.15"]
    return "\n".join([*BASE_REQUIREMENTS, *extra]) + "\n"


def pipeline_files() -> dict[str, bytes]:
    """serving's task pipeline as bundle paths -> the installed files' bytes."""
    root = Path(serving.__file__).resolve().parent
    files = {"serving/__init__.py": PACKAGE_INIT.encode()}
    for name in SHIPPED:
        files[f"serving/{name}"] = (root / name).read_bytes()
    for path in sorted((root / "tasks").glob("*.py")):
        files[f"serving/tasks/{path.name}"] = path.read_bytes()
    return files


def bundle_files(manifest: Manifest, target: str) -> dict[str, bytes]:
    """predict.py, requirements.txt and the pipeline it runs, for ``target``; InvalidInput
    (``export_unsupported``) when the target's runtime cannot run the task's pipeline."""
    if target in LEGACY_RUNTIMES:
        if manifest.task not in LEGACY_TASKS:
            raise InvalidInput(
                f"the {target} target cannot run the {manifest.task} pipeline: "
                f"{LEGACY_RUNTIMES[target]}, the pipeline needs Python 3.10 or newer; export "
                "it as onnx, onnx-fp16 or onnx-int8 and run predict.py on a newer runtime",
                code="export_unsupported")
        return {"predict.py": templates.PREDICT.encode(),
                "requirements.txt": templates.REQUIREMENTS.encode()}
    return {"predict.py": templates.TASK_PREDICT.encode(),
            "requirements.txt": requirements(manifest).encode(), **pipeline_files()}
