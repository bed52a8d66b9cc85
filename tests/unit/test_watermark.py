"""The per-licence watermark (export/watermark.py): it survives what a licensee does to a leaked
file, finds the right licence among several, and never names a licence for an unmarked or
foreign model."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from export import Signer, build, watermark
from export.bundle import MARK_AGREEMENT, accuracy
from export.targets import fp16_model
from serving import Manifest
from tests import task_models

KEY = b"k" * 32
LICENCES = [f"licence-{i:02d}" for i in range(6)]


@pytest.fixture(scope="module")
def digits() -> tuple[bytes, Manifest]:
    from storefront.demo import digits as build_digits

    data, manifest = build_digits()
    return data, Manifest.model_validate(manifest)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer(tmp_path_factory.mktemp("keys") / "k.pem")


def _bundle_model(data: bytes, manifest: Manifest, signer: Signer, licence: str,
                  target: str = "onnx", precision: str | None = None) -> tuple[bytes, dict]:
    info = {"license_id": licence, "licensee": f"{licence}@example.com", "version": 1,
            "terms": "MIT"}
    b = build(data, manifest, target, info, signer, precision=precision, watermark_key=KEY)
    zf = zipfile.ZipFile(io.BytesIO(b.data))
    import json

    return zf.read("model.onnx"), json.loads(zf.read("accuracy.json"))


def strip(model_bytes: bytes) -> bytes:
    """What a licensee does to hide a leak: metadata gone, every name changed, the graph
    renamed, initializers reordered, saved again."""
    m = onnx.load_model_from_string(model_bytes)
    del m.metadata_props[:]
    m.producer_name, m.doc_string, m.graph.name = "someone", "", "renamed"
    names = {t.name: f"t{i}" for i, t in enumerate(m.graph.initializer)}
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"
        for j, out in enumerate(n.output):
            if out not in {o.name for o in m.graph.output}:
                names.setdefault(out, f"v{i}_{j}")
    for t in m.graph.initializer:
        t.name = names[t.name]
    for n in m.graph.node:
        n.input[:] = [names.get(x, x) for x in n.input]
        n.output[:] = [names.get(x, x) for x in n.output]
    inits = list(m.graph.initializer)[::-1]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    del m.graph.value_info[:]
    return m.SerializeToString()


def reorder_nodes(model_bytes: bytes) -> bytes:
    m = onnx.load_model_from_string(model_bytes)
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m.SerializeToString()


def test_the_mark_survives_stripping_renaming_resaving_and_fp16(digits, signer, tmp_path):
    data, manifest = digits
    marked, acc = _bundle_model(data, manifest, signer, LICENCES[2])
    assert acc["watermark"]["marked"] and acc["watermark"]["weights"] == 4800
    # the mark is imperceptible: the marked model answers like the unmarked one
    agreement, _ = accuracy(data, marked, manifest)
    assert agreement >= MARK_AGREEMENT
    stripped = strip(marked)
    assert b"licence-02" not in stripped
    # the stripped file still runs and still answers like the listed model
    assert accuracy(data, stripped, manifest)[0] >= MARK_AGREEMENT
    path = tmp_path / "leak.onnx"
    onnx.save(onnx.load_model_from_string(stripped), str(path))
    for leaked in (stripped, path.read_bytes(), reorder_nodes(stripped),
                   fp16_model(stripped), strip(fp16_model(marked))):
        found = watermark.detect(data, leaked, KEY, LICENCES)
        assert found is not None and found.license_id == "licence-02", found
        assert found.z > 2 * watermark.THRESHOLD


def test_each_licence_is_traced_to_itself(digits, signer):
    data, manifest = digits
    for lid in LICENCES[:4]:
        leaked = strip(_bundle_model(data, manifest, signer, lid)[0])
        found = watermark.detect(data, leaked, KEY, LICENCES)
        assert found is not None and found.license_id == lid
        # another platform's key finds nothing
        assert watermark.detect(data, leaked, b"other" * 8, LICENCES) is None


def test_int8_and_fp16_exports_of_the_orin_carry_the_mark(digits, signer):
    data, manifest = digits
    for precision in ("fp16", "int8"):
        model, acc = _bundle_model(data, manifest, signer, "orin-licence", "jetson-orin",
                                   precision)
        assert acc["precision"] == precision and acc["watermark"]["marked"]
        found = watermark.detect(data, strip(model), KEY, ["x", "orin-licence", "y"])
        assert found is not None and found.license_id == "orin-licence"


def test_unmarked_copies_are_untraceable(digits):
    data, _ = digits
    from export.calibration import generated
    from export.orin import int8_qdq

    unmarked = [data, strip(data), fp16_model(data)]
    unmarked.append(int8_qdq(data, generated(digits[1])))
    for copy in unmarked:
        assert watermark.detect(data, copy, KEY, LICENCES) is None


def _mlp(seed: int, shapes: list[tuple[int, int]]) -> bytes:
    """A random MLP: an unrelated model (some with the digits model's very shapes)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(shapes):
        inits += [numpy_helper.from_array(rng.normal(0, 0.2, (a, b)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, (1, b)).astype(np.float32),
                                          f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"])]
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, ["N", shapes[0][0]])], [helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, ["N", shapes[-1][1]])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]
                             ).SerializeToString()


def test_foreign_models_never_match(digits, signer):
    """20 unrelated models (10 with the digits MLP's own shapes), marked with the same
    licences under the same key, and two real published models: none is taken for a copy of
    the digits listing, none for another's licence."""
    data, manifest = digits
    digits_shapes = [(64, 64), (64, 10)]
    others = [_mlp(s, digits_shapes) for s in range(10)]
    others += [_mlp(100 + s, [(32 + s, 48), (48, 8)]) for s in range(10)]
    for i, other in enumerate(others):
        marked = watermark.embed(other, KEY, LICENCES[i % len(LICENCES)])
        assert marked is not None
        assert watermark.detect(data, marked, KEY, LICENCES) is None
        assert watermark.detect(data, other, KEY, LICENCES) is None
        # and the digits listing's own marked exports are no copy of these models
        leak = strip(_bundle_model(data, manifest, signer, LICENCES[0])[0]) if i == 0 else None
        if leak is not None:
            assert watermark.detect(other, leak, KEY, LICENCES) is None


def test_false_positives_are_bounded(digits, signer):
    """Against 300 licences it was not issued for, a marked model scores like noise: mean near
    0, spread near 1, and every score far below the threshold."""
    data, manifest = digits
    leaked = fp16_model(strip(_bundle_model(data, manifest, signer, "the-real-one")[0]))
    found = watermark.differences(onnx.load_model_from_string(data),
                                  onnx.load_model_from_string(leaked))
    assert found is not None
    total = watermark.capacity(onnx.load_model_from_string(data))
    scores = np.array([watermark.score(*found, KEY, f"wrong-{i}", total) for i in range(300)])
    assert abs(scores.mean()) < 0.3 and 0.7 < scores.std() < 1.3
    assert scores.max() < watermark.THRESHOLD / 2
    assert watermark.score(*found, KEY, "the-real-one", total) > 4 * watermark.THRESHOLD
    assert watermark.confidence(watermark.THRESHOLD, 1000) > 0.999999


def test_too_small_models_are_exported_unmarked_and_say_so(signer):
    from storefront.demo import iris

    data, manifest = iris()
    _, acc = _bundle_model(data, Manifest.model_validate(manifest), signer, "small")
    assert acc["watermark"]["marked"] is False
    assert "not watermarked" in acc["watermark"]["note"]
    assert watermark.embed(data, KEY, "small") is None


@pytest.mark.parametrize("family", ["magika", "ppocr_det"])
def test_real_published_models_carry_the_mark(family, signer):
    data, manifest = getattr(task_models, family)()
    if family == "magika":  # through the bundle: the strength that keeps the answers
        marked, acc = _bundle_model(data, Manifest.model_validate(manifest), signer,
                                    "real-licence")
        assert acc["watermark"]["marked"]
        assert acc["watermark"]["agreement_with_unmarked"] >= MARK_AGREEMENT
    else:
        marked = watermark.embed(data, KEY, "real-licence")
        assert marked is not None
    for leaked in (strip(marked), fp16_model(marked)):
        found = watermark.detect(data, leaked, KEY, ["someone-else", "real-licence"])
        assert found is not None and found.license_id == "real-licence"
    assert watermark.detect(data, fp16_model(data), KEY, ["real-licence"]) is None


def test_the_pattern_is_keyed(tmp_path: Path):
    a = watermark.pattern(KEY, "x", 1000)
    assert set(np.unique(a)) == {-1, 1}
    assert np.array_equal(a, watermark.pattern(KEY, "x", 1000))
    assert abs(int(np.sum(a * watermark.pattern(KEY, "y", 1000)))) < 150
    assert abs(int(np.sum(a * watermark.pattern(b"other", "x", 1000)))) < 150


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_mark_keeps_within_its_agreement_budget_at_each_orin_precision(
        precision, digits, signer):
    """The marked export (after fp16 or int8) stays over the export's 95% bar for every
    licence, and the mark itself agrees with the unmarked model on >= 99.5% of the samples."""
    data, manifest = digits
    for licence in [f"budget-{i:02d}" for i in range(8)]:
        info = {"license_id": licence, "licensee": "b@example.com", "version": 1, "terms": "MIT"}
        bundle = build(data, manifest, "jetson-orin", info, signer, precision=precision,
                       watermark_key=KEY)
        acc = json.loads(zipfile.ZipFile(io.BytesIO(bundle.data)).read("accuracy.json"))
        assert bundle.agreement >= 0.95 and bundle.watermarked, (licence, bundle.agreement)
        assert acc["watermark"]["agreement_with_unmarked"] >= MARK_AGREEMENT
        model = zipfile.ZipFile(io.BytesIO(bundle.data)).read("model.onnx")
        found = watermark.detect(data, strip(model), KEY, [licence, "someone-else"])
        assert found is not None and found.license_id == licence


def test_a_mark_that_would_sink_the_export_is_left_out_and_said(digits):
    from export.bundle import _mark_and_convert
    from export.calibration import choose

    data, manifest = digits
    items = choose(manifest, []).items
    converted, _, mark = _mark_and_convert(data, manifest, "jetson-orin", "int8", items, KEY,
                                           "licence-x", min_agreement=1.01)
    assert mark["marked"] is False and "pushed the int8 export under" in mark["note"]
    assert watermark.detect(data, converted, KEY, ["licence-x"]) is None
