"""The jetson-orin target (JetPack 6.2): each demo model at each precision, the bundle's files
and their flags, opset down-conversion or refusal, int8 calibration inputs, and the bundle's
HTTP runner answering like the listed model. TensorRT itself cannot run here: the engine
script's command line is checked instead."""

from __future__ import annotations

import io
import json
import shlex
import socket
import subprocess
import sys
import time
import zipfile
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import Signer, build
from export.calibration import choose, from_bodies, from_npz
from export.orin import BASE_IMAGE, ORIN_OPSET, down_convert, opset_of
from export.targets import precision_for
from serving import InvalidInput, Manifest, prepare
from storefront.demo import DEMOS

ORIN_FILES = {"model.onnx", "manifest.json", "predict.py", "requirements.txt", "README.md",
              "license.json", "accuracy.json", "SHA256SUMS", "build_engine.sh", "Dockerfile",
              "aimarket-model.service", "run.py", "errors.py"}
INFO = {"license_id": "orin-licence", "licensee": "buyer@example.com", "version": 1,
        "terms": "MIT"}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer(tmp_path_factory.mktemp("keys") / "k.pem")


def _files(data: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return {n: zf.read(n) for n in zf.namelist()}


def _examples(manifest: Manifest) -> dict[str, np.ndarray]:
    from export.calibration import example_payload

    feeds = [prepare(manifest, example_payload(manifest, e)) for e in manifest.examples or []]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def _answers(model: bytes, manifest: Manifest, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    first = out[manifest.outputs[0].name]
    return np.asarray(first)


@pytest.mark.parametrize("slug", list(DEMOS))
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_each_demo_model_builds_for_the_orin(slug: str, precision: str, signer: Signer) -> None:
    data, raw = DEMOS[slug]()
    manifest = Manifest.model_validate(raw)
    if precision == "int8" and slug != "handwritten-digits":
        # scikit-learn's linear models and trees keep their weights in ONNX-ML operators
        with pytest.raises(InvalidInput) as err:
            build(data, manifest, "jetson-orin", INFO, signer, precision=precision)
        assert err.value.code == "export_unsupported" and "fp16" in err.value.message
        return
    bundle = build(data, manifest, "jetson-orin", INFO, signer, precision=precision)
    files = _files(bundle.data)
    assert set(files) >= ORIN_FILES
    assert bundle.precision == precision and bundle.agreement >= 0.95
    acc = json.loads(files["accuracy.json"])
    assert acc["precision"] == precision
    model = files["model.onnx"]
    assert opset_of(onnx.load_model_from_string(model)) <= ORIN_OPSET
    if precision == "int8":
        assert any(n.op_type == "DequantizeLinear"
                   for n in onnx.load_model_from_string(model).graph.node)
        assert acc["calibration"] == "calibrated on 4 example inputs of the listing"
    # the exported model answers the listing's own examples like the listed model
    feeds = _examples(manifest)
    ours, theirs = _answers(model, manifest, feeds), _answers(data, manifest, feeds)
    if manifest.task == "tabular-regression":
        assert np.allclose(ours, theirs, rtol=1e-2, atol=0.5)
    else:
        assert np.array_equal(ours, theirs)
    _check_engine_files(files, precision)
    # the runner runs the task pipeline: its requirements, with the Orin's pins
    reqs = files["requirements.txt"].decode().splitlines()
    assert "onnxruntime>=1.18" in reqs and "numpy>=1.24,<2" in reqs
    assert {"pydantic>=2.5", "pillow>=10"} <= set(reqs) and "numpy>=1.24" not in reqs


def _check_engine_files(files: dict[str, bytes], precision: str) -> None:
    script = files["build_engine.sh"].decode()
    line = next(line for line in script.replace("\\\n", " ").splitlines()
                if "trtexec" in line and not line.startswith("#"))
    argv = shlex.split(line.split(">")[0])
    assert argv[0] == "/usr/src/tensorrt/bin/trtexec"
    assert "--onnx=model.onnx" in argv and "--saveEngine=model.plan" in argv
    assert "--fp16" in argv
    assert ("--int8" in argv) == (precision == "int8")
    assert not any(a.startswith("--workspace") for a in argv)  # removed in TensorRT 10
    assert "--memPoolSize=workspace:2048M" in argv
    docker = files["Dockerfile"].decode().splitlines()
    assert f"FROM {BASE_IMAGE}" in docker and BASE_IMAGE == "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
    assert any(line.startswith("RUN") and "build_engine.sh" in line for line in docker)
    assert 'CMD ["python3", "run.py", "--port", "8080"]' in docker
    unit = files["aimarket-model.service"].decode()
    assert "ExecStart=/usr/bin/python3 /opt/aimarket-model/run.py --port 8080" in unit
    assert "orin-licence" in unit


def test_precision_is_offered_per_target() -> None:
    assert precision_for("jetson-orin", None) == "fp16"
    assert precision_for("jetson-orin", "int8") == "int8"
    assert precision_for("onnx", None) == "fp32" and precision_for("onnx-int8", "int8") == "int8"
    for target, precision in (("onnx", "int8"), ("nano-kit", "int8"), ("jetson-orin", "fp32")):
        with pytest.raises(InvalidInput) as err:
            precision_for(target, precision)
        assert err.value.code == "precision_unsupported"


def _graph(nodes: list[Any], opset: int, inits: list[Any]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def test_newer_opsets_are_down_converted_or_refused_with_the_reason() -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).random((8, 4)).astype(np.float32), "W")
    mlp = _graph([helper.make_node("MatMul", ["x", "W"], ["h"]),
                  helper.make_node("Relu", ["h"], ["y"])], 22, [w])
    converted, notes = down_convert(mlp)
    assert opset_of(converted) == 20 and notes == ["converted from opset 22 to 20 for "
                                                   "TensorRT 10.3"]
    x = np.random.default_rng(1).random((3, 8)).astype(np.float32)
    before = ort.InferenceSession(mlp.SerializeToString()).run(None, {"x": x})[0]
    after = ort.InferenceSession(converted.SerializeToString()).run(None, {"x": x})[0]
    assert np.allclose(before, after)
    gn = _graph([helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)],
                21, [numpy_helper.from_array(np.ones(8, np.float32), "s"),
                     numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    with pytest.raises(InvalidInput) as err:
        down_convert(gn)
    assert err.value.code == "export_unsupported"
    assert "opset 21" in err.value.message and "GroupNormalization" in err.value.message


def _digits() -> tuple[bytes, Manifest]:
    data, raw = DEMOS["handwritten-digits"]()
    return data, Manifest.model_validate(raw)


def test_calibration_sources_are_said_in_the_bundle(signer: Signer) -> None:
    data, manifest = _digits()
    bare = manifest.model_copy(update={"examples": None})
    assert "GENERATED" in choose(bare, []).source
    uploaded = from_npz(bare, _npz({"X": np.random.default_rng(0).random((20, 64)) * 16}))
    assert len(uploaded) == 20
    bundle = build(data, bare, "jetson-orin", INFO, signer, precision="int8",
                   calibration=choose(bare, uploaded))
    acc = json.loads(_files(bundle.data)["accuracy.json"])
    assert acc["calibration"] == "calibrated on 20 calibration inputs uploaded by the seller"
    assert acc["calibration"] in _files(bundle.data)["README.md"].decode()
    generated = build(data, bare, "jetson-orin", INFO, signer, precision="int8")
    assert "GENERATED" in json.loads(_files(generated.data)["accuracy.json"])["calibration"]


def _npz(arrays: dict[str, Any], **kw: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays, **kw)
    return buf.getvalue()


def test_hostile_calibration_uploads_are_refused() -> None:
    _, manifest = _digits()
    bad = [b"not a zip", _npz({"X": np.random.random((2, 63))}),
           _npz({"X": np.random.random((2, 64)), "extra": np.zeros(3)}),
           _npz({"Y": np.random.random((2, 64))}),
           _npz({"X": np.array([{"a": 1}, {"b": 2}], dtype=object)})]  # a pickle inside
    for data in bad:
        with pytest.raises(InvalidInput) as err:
            from_npz(manifest, data)
        assert err.value.code == "invalid_calibration"
    with pytest.raises(InvalidInput):
        from_bodies(manifest, [{"image": "not base64 at all"}])
    with pytest.raises(InvalidInput):
        from_bodies(manifest, "no list")
    png = manifest.examples[0] if manifest.examples else ""
    assert len(from_bodies(manifest, [{"image": png}] * 3)) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_post(url: str, proc: subprocess.Popen[bytes], **kw: Any) -> Any:
    import httpx

    deadline = time.monotonic() + 60
    while True:  # wait for the runner to listen (not a timing assertion)
        try:
            return httpx.post(url, timeout=10, **kw)
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(proc.communicate()[0].decode()) from None
            time.sleep(0.1)


def test_the_bundles_http_runner_answers_like_the_listed_model(signer: Signer, tmp_path) -> None:
    """The runner takes what the hosted model takes: the task's body on POST /predict (here
    the listing's example images, as /v1/models/{slug}/predict), and a v2 tensor body on
    POST /v2/models/{name}/infer (as /v2/models/{slug}/infer)."""
    import httpx

    data, manifest = _digits()
    bundle = build(data, manifest, "jetson-orin", INFO, signer, precision="int8")
    folder = tmp_path / "kit"
    zipfile.ZipFile(io.BytesIO(bundle.data)).extractall(folder)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # run.py binds every interface on a kit; here it is started from its folder as on the kit
    proc = subprocess.Popen([sys.executable, "-E", "-s", "run.py", "--port", str(port)], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        feeds = _examples(manifest)
        expected = [str(int(i)) for i in _answers(data, manifest, feeds)]
        r = _wait_post(f"{base}/predict", proc, json={"images": list(manifest.examples or [])})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected
        assert all(0.0 <= p["score"] <= 1.0 for p in r.json()["predictions"])
        x = feeds["X"]
        v2 = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                          "data": x.reshape(-1).tolist()}]}
        r = httpx.post(f"{base}/v2/models/digits/infer", json=v2, timeout=10)
        assert r.status_code == 200, r.text
        outs = {o["name"]: o for o in r.json()["outputs"]}
        assert set(outs) == {t.name for t in manifest.outputs}
        assert [str(int(i)) for i in outs[manifest.outputs[0].name]["data"]] == expected
        assert r.json()["model_name"] == "digits"
        # a tensor body on the task route is refused as the hosted /predict refuses it
        r = httpx.post(f"{base}/predict", json={"inputs": {"X": x.tolist()}}, timeout=10)
        assert r.status_code == 422 and "image" in r.json()["error"]["message"]
        for path, body in (("/predict", b"{"), ("/v2/models/digits/infer", b'{"inputs": 3}')):
            bad = httpx.post(f"{base}{path}", content=body, timeout=10)
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
        assert httpx.post(f"{base}/nope", json={}, timeout=10).status_code == 404
        assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
