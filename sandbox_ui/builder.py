"""A Gradio demo built from a listing's manifest.

image-classification: an uploaded or sketched image -> the top labels
tabular-*: a form with one number per feature -> the label (with scores) or the value
the other tasks: sandbox_ui/task_demos.py (detection, segmentation, audio, text, tensor)
Every call goes to ``call`` (the marketplace's demo path); its refusals show as Gradio errors.
"""

from __future__ import annotations

import html
import inspect
import keyword
import re
from typing import Any

import gradio as gr

from serving import description_html

from . import task_demos
from .common import DemoCall, DemoSpec, example_images, png_b64
from .common import run as run_call


def build_demo(spec: DemoSpec, call: DemoCall, concurrency: int = 4) -> gr.Blocks:
    """The listing's demo; its API endpoint is ``/predict`` (gradio_client's ``api_name``).
    At most ``concurrency`` calls run at once in this process; more wait in Gradio's queue."""
    m = spec.manifest
    # Uploaded and sketched images are deleted an hour after they arrive.
    with gr.Blocks(title=f"Try {spec.title}", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        # Seller-written: the title escaped, the description sanitized, as one raw HTML block
        # (Markdown of its own would get images and forms past the sanitizer)
        gr.Markdown(f"<div class='demo-intro'><h3>Try {html.escape(spec.title)} (version "
                    f"{spec.version})</h3>{description_html(m.description)}</div>")
        if m.task == "image-classification":
            _image_ui(spec, call)
        elif m.task.startswith("tabular-"):
            _tabular_ui(spec, call)
        elif m.task in task_demos.UIS:
            task_demos.UIS[m.task](spec, call)
        else:
            task_demos.tensor_ui(spec, call)
    blocks.queue(default_concurrency_limit=concurrency)
    return blocks


def _labels(answer: dict[str, Any]) -> dict[str, float]:
    return task_demos.labels(answer)


def _image_ui(spec: DemoSpec, call: DemoCall) -> None:
    async def classify(image: Any, request: gr.Request) -> tuple[dict[str, float], str]:
        answer = await run_call(call, spec.slug, {"image": png_b64(image)}, request)
        return _labels(answer), answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            with gr.Tab("Upload"):
                image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Image",
                                 elem_id="demo-image")
                upload_btn = gr.Button("Classify", variant="primary", elem_id="demo-run")
                examples = example_images(spec.manifest)
                if examples:
                    gr.Examples([[e] for e in examples], inputs=[image], label="Examples")
            with gr.Tab("Draw"):
                sketch = gr.Sketchpad(type="pil", label="Draw with the mouse",
                                      canvas_size=(280, 280), elem_id="demo-sketch",
                                      brush=gr.Brush(default_size=18, colors=["#000000"],
                                                     color_mode="fixed"),
                                      layers=False, transforms=())
                sketch_btn = gr.Button("Classify drawing", variant="primary",
                                       elem_id="demo-run-sketch")
        with gr.Column():
            label = gr.Label(num_top_classes=3, label="Top labels", elem_id="demo-output")
            left = gr.Markdown(elem_id="demo-remaining")
    upload_btn.click(classify, [image], [label, left], api_name="predict")
    sketch_btn.click(classify, [sketch], [label, left], api_name="predict_sketch")


def _tabular_ui(spec: DemoSpec, call: DemoCall) -> None:
    m = spec.manifest
    names = m.feature_names or []
    rows = [_row(names, ex) for ex in m.examples or []]
    first = rows[0] if rows else [0.0] * len(names)

    async def predict(request: gr.Request, *values: float | None) -> tuple[Any, str]:
        if any(v is None for v in values):
            raise gr.Error("fill in every feature")
        row = {n: float(v) for n, v in zip(names, values, strict=True)}  # type: ignore[arg-type]
        answer = await run_call(call, spec.slug, {"rows": [row]}, request)
        if m.task == "tabular-regression":
            return answer["predictions"][0]["value"], answer["remaining_text"]
        return _labels(answer), answer["remaining_text"]

    with gr.Row():
        with gr.Column():
            fields = []
            for start in range(0, len(names), 3):  # three features a row keeps it short
                with gr.Row():
                    fields += [gr.Number(value=first[i], label=names[i], elem_id=f"feature-{i}",
                                         min_width=120)
                               for i in range(start, min(start + 3, len(names)))]
            run = gr.Button("Predict", variant="primary", elem_id="demo-run")
            if rows:
                gr.Examples(rows, inputs=fields, label="Examples")
        with gr.Column():
            out: Any = (gr.Number(label="Predicted value", elem_id="demo-output")
                        if m.task == "tabular-regression"
                        else gr.Label(num_top_classes=3, label="Prediction",
                                      elem_id="demo-output"))
            left = gr.Markdown(elem_id="demo-remaining")
    _name_parameters(predict, names)
    run.click(predict, fields, [out, left], api_name="predict")


def _name_parameters(fn: Any, names: list[str]) -> None:
    """Give ``fn(request, *values)`` one named parameter per feature, so gradio_client and the
    API page show ``sepal_length`` rather than ``param_0``."""
    params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=gr.Request)]
    seen: set[str] = {"request"}
    for i, name in enumerate(names):
        ident = re.sub(r"\W", "_", name).strip("_") or f"feature_{i}"
        if ident[0].isdigit() or keyword.iskeyword(ident):
            ident = f"f_{ident}"
        while ident in seen:
            ident += "_"
        seen.add(ident)
        params.append(inspect.Parameter(ident, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=float | None))
    fn.__signature__ = inspect.Signature(params)


def _row(names: list[str], example: Any) -> list[float]:
    if isinstance(example, dict):
        return [float(example[n]) for n in names]
    return [float(v) for v in example]
