"""A corpus of hostile and malformed uploads: each is refused with its own code, nothing is
written outside the storage directory, the server never answers 500, and a clean model still
passes. A copy of another seller's model is accepted for review but flagged."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import struct
import tarfile
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import bearer, signup

MARKER = Path("/tmp") / f"aimarket-pwned-{uuid.uuid4().hex}"


class RunsACommand:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def tiny(nodes, inputs, outputs, initializers=(), domain_opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v)
                                                    for d, v in domain_opsets])
    model.ir_version = 8
    return model


def vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def manifest(inputs=(("X", [-1, 4]),), outputs=(("Y", [-1, 4]),), **extra) -> dict:
    return {"title": extra.pop("title", f"Corpus {uuid.uuid4().hex[:6]}"), "category": "test",
            "task": "tensor",
            "inputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in inputs],
            "outputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in outputs],
            "pricing": {"per_call": "0.001", "trial_calls": 1}, **extra}


def external_tensor(name: str, location: str, offset: str = "0",
                    length: str = "64") -> TensorProto:
    """A 4x4 float tensor whose values live in ``location`` (external data)."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), name)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        w.external_data.add(key=k, value=v)
    return w


def external(location: str, offset: str = "0", length: str = "64") -> bytes:
    w = external_tensor("W", location, offset, length)
    return tiny([helper.make_node("MatMul", ["X", "W"], ["Y"])], [vi("X", [None, 4])],
                [vi("Y", [None, 4])], [w]).SerializeToString()


def zipped(members: dict[str, bytes], **info) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        model = external("weights.bin")
        info = tarfile.TarInfo("model.onnx")
        info.size = len(model)
        tf.addfile(info, io.BytesIO(model))
        link = tarfile.TarInfo("weights.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    return buf.getvalue()


def absurd() -> bytes:
    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    t.raw_data = b"\0" * 16
    return tiny([helper.make_node("Add", ["X", "W"], ["Y"])], [vi("X", [None, 4])],
                [vi("Y", [None, 4])], [t]).SerializeToString()


def unbounded() -> bytes:
    shape = numpy_helper.from_array(np.array([60_000, 60_000], np.int64), "shape")
    return tiny([helper.make_node("Expand", ["X", "shape"], ["Y"])], [vi("X", [None, 1])],
                [vi("Y", [None, None])], [shape]).SerializeToString()


def spins() -> bytes:
    """A Loop with a trip count of 10^12: it never finishes."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["x_in"], ["x_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         vi("x_in", [None, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), vi("x_out", [None, 4])])
    trip = numpy_helper.from_array(np.array(10**12, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["trip", "cond", "X"], ["Y"], body=body)
    return tiny([loop], [vi("X", [None, 4])], [vi("Y", [None, 4])],
                [trip, cond]).SerializeToString()


def custom_op() -> bytes:
    return tiny([helper.make_node("Evil", ["X"], ["Y"], domain="com.attacker")],
                [vi("X", [None, 4])], [vi("Y", [None, 4])],
                domain_opsets=(("", 17), ("com.attacker", 1))).SerializeToString()


def clean() -> bytes:
    return tiny([helper.make_node("Relu", ["X"], ["Y"])], [vi("X", [None, 4])],
                [vi("Y", [None, 4])]).SerializeToString()


CORPUS = [
    ("pickle that runs a command", pickle.dumps(RunsACommand()), manifest(), "pickle_refused"),
    ("torch-style zip", zipped({"archive/data.pkl": pickle.dumps({"w": 1}),
                                "archive/version": b"3"}), manifest(),
     "pytorch_checkpoint_refused"),
    ("keras h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64, manifest(), "keras_refused"),
    ("safetensors", (20).to_bytes(8, "little") + b'{"w": {"dtype": "F32"}}', manifest(),
     "safetensors_refused"),
    ("external data ../../etc/passwd", external("../../etc/passwd"), manifest(),
     "external_data_traversal"),
    ("external data at an absolute path", external("/etc/passwd"), manifest(),
     "external_data_absolute"),
    ("external data through a symlink", symlink_tar(), manifest(), "archive_link"),
    ("custom-domain operator", custom_op(), manifest(), "custom_operator"),
    ("zip-slip archive", zipped({"model.onnx": clean(), "../../evil.txt": b"x"}), manifest(),
     "archive_path_escape"),
    ("zip bomb", zipped({"model.onnx": clean(), "pad.bin": b"\0" * 60_000_000}), manifest(),
     "archive_bomb"),
    ("truncated protobuf", clean()[:-7], manifest(), "invalid_onnx"),
    ("declared tensor of absurd size", absurd(), manifest(), "absurd_size"),
    ("allocates without bound at run time", unbounded(),
     manifest(inputs=(("X", [-1, 1]),), outputs=(("Y", [-1, -1]),)), "smoke_resources"),
    ("never finishes", spins(), manifest(), "smoke_resources"),
    ("unsupported opset", tiny([helper.make_node("Relu", ["X"], ["Y"])], [vi("X", [None, 4])],
                               [vi("Y", [None, 4])], domain_opsets=(("", 99),)
                               ).SerializeToString(), manifest(), "unsupported_opset"),
]


def post(client, token, blob: bytes, man: dict, **form):
    return client.post(
        "/v1/models", headers=bearer(token),
        data={"attest_rights": "true", "license": "MIT", **form},
        files={"model": ("upload.bin", blob), "manifest": ("m.yaml", yaml.safe_dump(man))})


def test_hostile_corpus_is_refused_class_by_class(client, settings):
    _, seller = signup(client, "seller")
    outside = settings.data_dir.parent
    before = set(outside.rglob("*"))
    codes = {}
    for name, blob, man, code in CORPUS:
        r = post(client, seller, blob, man)
        assert r.status_code == 422, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["code"] == code, (name, err)
        codes[name] = err["code"]
    assert len(set(codes.values())) >= 13  # each class has its own code
    # the pickle was scanned, never loaded: its command did not run
    assert not MARKER.exists()
    r = post(client, seller, pickle.dumps(RunsACommand()), manifest())
    assert any("system" in g for g in r.json()["error"]["details"]["scan"]["dangerous_globals"])
    # nothing outside the storage directory, no leftovers of refused uploads inside it
    assert set(outside.rglob("*")) - before <= {p for p in outside.rglob("*")
                                                if settings.data_dir in p.parents}
    assert not (outside / "evil.txt").exists() and not list(outside.rglob("evil.txt"))
    assert not any((settings.data_dir / "uploads").iterdir())
    # and a clean model still passes
    r = post(client, seller, clean(), manifest())
    assert r.status_code == 201 and r.json()["status"] == "pending_review"


def test_an_archive_with_external_weights_is_accepted_and_normalised(client):
    _, seller = signup(client, "seller")
    weights = np.arange(16, dtype=np.float32).tobytes()
    archive = zipped({"bundle/model.onnx": external("weights.bin"),
                      "bundle/weights.bin": weights,
                      "bundle/manifest.yaml": yaml.safe_dump(manifest()).encode()})
    r = client.post("/v1/models", headers=bearer(seller),
                    data={"attest_rights": "true", "license": "Apache-2.0"},
                    files={"model": ("bundle.zip", archive)})
    assert r.status_code == 201, r.text
    assert any(f["code"] == "external_data" for f in r.json()["findings"])


def test_copies_of_another_sellers_model_are_flagged(client):
    from storefront.demo import digits
    from tests.helpers import admin_token

    data, man = digits()
    _, thief = signup(client, "seller")
    model = onnx.load_model_from_string(data)
    for init in model.graph.initializer:  # rename every weight...
        old = init.name
        init.name = f"stolen_{old}"
        for node in model.graph.node:
            node.input[:] = [f"stolen_{i}" if i == old else i for i in node.input]
    inits = list(model.graph.initializer)
    del model.graph.initializer[:]
    model.graph.initializer.extend(reversed(inits))  # ...and reorder them
    r = post(client, thief, model.SerializeToString(), {**man, "title": "Totally new digits"})
    assert r.status_code == 201, r.text
    flag = next(f for f in r.json()["findings"] if f["code"] == "possible_copy")
    assert flag["evidence"]["listing"] == "handwritten-digits" and flag["evidence"]["identical"]
    # slightly perturbed weights are still recognised
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size >= 64:
            noisy = arr + np.random.default_rng(0).normal(0, 1e-3, arr.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    r = post(client, thief, model.SerializeToString(), {**man, "title": "Noisy digits"})
    flag = next(f for f in r.json()["findings"] if f["code"] == "possible_copy")
    assert flag["evidence"]["listing"] == "handwritten-digits"
    assert not flag["evidence"]["identical"] and flag["evidence"]["score"] >= 0.8
    # the moderator sees the evidence in the queue; the listing is not live
    queue = client.get("/v1/admin/review-queue", headers=bearer(admin_token(client))).json()
    mine = next(i for i in queue["items"] if i["slug"] == r.json()["slug"])
    assert any("possible copy of handwritten-digits" in f["message"] for f in mine["findings"])
    assert client.get(f"/v1/models/{r.json()['slug']}").status_code == 404
    # an unrelated model is not flagged
    r = post(client, thief, clean(), manifest())
    assert not [f for f in r.json()["findings"] if f["code"] == "possible_copy"]


def test_license_is_required_and_shown(client):
    from tests.helpers import admin_token

    _, seller = signup(client, "seller")
    r = client.post("/v1/models", headers=bearer(seller), data={"attest_rights": "true"},
                    files={"model": ("m.onnx", clean()), "manifest": ("m.yaml",
                                                                      yaml.safe_dump(manifest()))})
    assert r.status_code == 422 and r.json()["error"]["code"] == "license_required"
    r = post(client, seller, clean(), manifest(), license="CC-BY-4.0")
    slug = r.json()["slug"]
    admin = bearer(admin_token(client))
    assert client.post(f"/v1/admin/models/{slug}/approve", headers=admin,
                       json={"reason": "looks fine"}).status_code == 200
    assert client.get(f"/v1/models/{slug}").json()["license"] == "CC-BY-4.0"
    log = client.get("/v1/admin/audit-log", headers=admin).json()["items"]
    assert log[0]["slug"] == slug and log[0]["decision"] == "approve"
    assert log[0]["admin"] == "admin@test.local" and log[0]["reason"] == "looks fine"


@pytest.mark.parametrize("blob", [b"", b"\0" * 10, json.dumps({"a": 1}).encode()])
def test_junk_never_gives_500(client, blob):
    _, seller = signup(client, "seller")
    r = post(client, seller, blob, manifest())
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_a_requantized_copy_is_flagged(client):
    from export.targets import convert
    from storefront.demo import digits

    data, man = digits()
    int8, _ = convert(data, "onnx-int8")  # the digits model, weights re-quantized to int8
    _, thief = signup(client, "seller")
    r = post(client, thief, int8, {**man, "title": "Quantized digits"})
    assert r.status_code == 201, r.text
    flag = next(f for f in r.json()["findings"] if f["code"] == "possible_copy")
    assert flag["evidence"]["listing"] == "handwritten-digits"
    assert not flag["evidence"]["identical"]


# External data hidden below the top-level initializers, and offsets that are not offsets.

def external_in_constant(location: str) -> bytes:
    """The weights are a Constant node's ``value`` attribute, stored externally."""
    const = helper.make_node("Constant", [], ["W"], value=external_tensor("value", location))
    return tiny([const, helper.make_node("MatMul", ["X", "W"], ["Y"])], [vi("X", [None, 4])],
                [vi("Y", [None, 4])]).SerializeToString()


def external_in_if_branch(location: str) -> bytes:
    """An If whose then-branch holds an initializer read from ``location``."""
    then = helper.make_graph([helper.make_node("Identity", ["Wt"], ["t_out"])], "then", [],
                             [vi("t_out", [4, 4])], [external_tensor("Wt", location)])
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e_out"],
                          value=numpy_helper.from_array(np.ones((4, 4), np.float32)))],
        "else", [], [vi("e_out", [4, 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return tiny([helper.make_node("If", ["cond"], ["W"], then_branch=then, else_branch=other),
                 helper.make_node("MatMul", ["X", "W"], ["Y"])], [vi("X", [None, 4])],
                [vi("Y", [None, 4])], [cond]).SerializeToString()


def external_in_loop_body(location: str) -> bytes:
    """A Loop (one trip) whose body multiplies by a Constant read from ``location``."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["Wb"], value=external_tensor("value", location)),
         helper.make_node("MatMul", ["x_in", "Wb"], ["x_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), vi("x_in", [None, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), vi("x_out", [None, 4])])
    trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return tiny([helper.make_node("Loop", ["trip", "cond", "X"], ["Y"], body=body)],
                [vi("X", [None, 4])], [vi("Y", [None, 4])], [trip, cond]).SerializeToString()


def external_in_sparse_initializer(location: str) -> bytes:
    values = external_tensor("W", location, length="16")
    values.dims[:] = [4]
    indices = numpy_helper.from_array(np.array([0, 5, 10, 15], np.int64), "W_indices")
    sparse = helper.make_sparse_tensor(values, indices, [4, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [vi("X", [None, 4])], [vi("Y", [None, 4])],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def with_weights(model: bytes) -> bytes:
    """An archive of the model and a 64-byte weights.bin beside it."""
    return zipped({"model.onnx": model, "weights.bin": np.ones(16, np.float32).tobytes()})


HOSTILE_EXTERNAL = [
    ("offset 'abc'", with_weights(external("weights.bin", offset="abc")),
     "external_data_invalid"),
    ("offset -1", with_weights(external("weights.bin", offset="-1")), "external_data_invalid"),
    ("offset 1e3", with_weights(external("weights.bin", offset="1e3")),
     "external_data_invalid"),
    ("length 'abc'", with_weights(external("weights.bin", length="abc")),
     "external_data_invalid"),
    ("Constant attribute reads /etc/passwd", external_in_constant("/etc/passwd"),
     "external_data_absolute"),
    ("Constant attribute reads ../../secret_key", external_in_constant("../../secret_key"),
     "external_data_traversal"),
    ("If branch initializer reads ../../secret_key", external_in_if_branch("../../secret_key"),
     "external_data_traversal"),
    ("If branch initializer reads /etc/passwd", external_in_if_branch("/etc/passwd"),
     "external_data_absolute"),
    ("Loop body Constant reads ../../secret_key", external_in_loop_body("../../secret_key"),
     "external_data_traversal"),
    ("sparse initializer reads /etc/passwd", external_in_sparse_initializer("/etc/passwd"),
     "external_data_absolute"),
    ("a location 5000 characters long", external("a" * 5000), "external_data_invalid"),
    ("Constant in an archive reads ../secret_key",
     with_weights(external_in_constant("../secret_key")), "external_data_traversal"),
]


def refused_and_nothing_stored(client, settings, seller, blob, man, code, name) -> None:
    r = post(client, seller, blob, man)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == code, (name, err)
    assert isinstance(err["message"], str) and err["message"], (name, err)
    assert not any((settings.data_dir / "uploads").iterdir()), name
    assert client.get("/v1/seller/models", headers=bearer(seller)).json()["items"] == [], name


@pytest.mark.parametrize(("name", "blob", "code"), HOSTILE_EXTERNAL,
                         ids=[c[0] for c in HOSTILE_EXTERNAL])
def test_external_data_anywhere_in_the_model_is_checked(client, settings, name, blob, code):
    _, seller = signup(client, "seller")
    refused_and_nothing_stored(client, settings, seller, blob, manifest(), code, name)
    stored = settings.data_dir / "models"
    assert not stored.exists() or not any(
        b"root:" in p.read_bytes() for p in stored.rglob("*.onnx"))


def test_external_weights_of_a_constant_in_the_archive_are_embedded(client):
    _, seller = signup(client, "seller")
    r = post(client, seller, with_weights(external_in_constant("weights.bin")), manifest())
    assert r.status_code == 201, r.text
    assert any(f["code"] == "external_data" for f in r.json()["findings"])


# Manifest examples the demo could not decode.

def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (and holds almost no data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def image_classifier() -> bytes:
    w = numpy_helper.from_array(np.ones((64, 2), np.float32), "W")
    return tiny([helper.make_node("MatMul", ["X", "W"], ["Z"]),
                 helper.make_node("Softmax", ["Z"], ["Y"], axis=1)], [vi("X", [None, 64])],
                [vi("Y", [None, 2])], [w]).SerializeToString()


def image_manifest(examples: list) -> dict:
    return manifest(inputs=(("X", [-1, 64]),), outputs=(("Y", [-1, 2]),),
                    task="image-classification", labels=["dark", "light"],
                    preprocessing={"size": [8, 8], "mode": "L"}, examples=examples)


def regressor() -> bytes:
    w = numpy_helper.from_array(np.ones((2, 1), np.float32), "W")
    return tiny([helper.make_node("MatMul", ["X", "W"], ["Y"])], [vi("X", [None, 2])],
                [vi("Y", [None, 1])], [w]).SerializeToString()


def tabular_manifest(examples: list) -> dict:
    return manifest(inputs=(("X", [-1, 2]),), outputs=(("Y", [-1, 1]),),
                    task="tabular-regression", feature_names=["a", "b"], examples=examples)


BAD_EXAMPLES = [
    ("an image example that is not base64", image_classifier(),
     image_manifest(["this is not base64!"])),
    ("a PNG claiming 50000x50000 pixels", image_classifier(),
     image_manifest([base64.b64encode(png_header(50_000, 50_000)).decode()])),
    ("a PNG claiming 7000x7000 pixels (over the site's limit, under Pillow's)",
     image_classifier(), image_manifest([base64.b64encode(png_header(7000, 7000)).decode()])),
    ("bytes that are not an image", image_classifier(),
     image_manifest([base64.b64encode(b"GIF89a nonsense").decode()])),
    ("a second example that is not an image", image_classifier(),
     image_manifest([base64.b64encode(png(8, 8)).decode(), {"image": "x"}])),
    ("a row missing a feature", regressor(), tabular_manifest([{"a": 1.0}])),
    ("a row holding text", regressor(), tabular_manifest([["1", 2]])),
    ("a tensor example of the wrong shape", clean(), manifest(examples=[{"X": [[1, 2]]}])),
]


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("name", "blob", "man"), BAD_EXAMPLES, ids=[c[0] for c in BAD_EXAMPLES])
def test_examples_the_demo_cannot_use_are_refused(client, settings, name, blob, man):
    _, seller = signup(client, "seller")
    refused_and_nothing_stored(client, settings, seller, blob, man, "invalid_example", name)
    r = post(client, seller, blob, man)
    n = len(man["examples"]) - 1
    assert f"example {n}" in r.json()["error"]["message"], r.json()


def test_examples_the_demo_can_use_are_accepted(client):
    _, seller = signup(client, "seller")
    for blob, man in [
        (image_classifier(), image_manifest([base64.b64encode(png(8, 8)).decode(),
                                             "data:image/png;base64,"
                                             + base64.b64encode(png(30, 20)).decode()])),
        (regressor(), tabular_manifest([{"a": 1.0, "b": 2}, [3, 4.5]])),
        (clean(), manifest(examples=[{"X": [[1, 2, 3, 4]]}])),
    ]:
        r = post(client, seller, blob, man)
        assert r.status_code == 201, r.text
