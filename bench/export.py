"""Benchmark exports: time to build each target's signed bundle (each precision of
jetson-orin: fp16, int8 QDQ) and its accuracy agreement with the listed model, for every demo
model; then the watermark: agreement of the marked model with the unmarked one and the mark's
score after stripping and float16 conversion, for the demo models and real published models.
Prints figures measured in this one run.

    .venv/bin/python bench/export.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import PRECISIONS, TARGETS, Signer, build, watermark  # noqa: E402
from export.bundle import accuracy  # noqa: E402
from export.targets import fp16_model  # noqa: E402
from serving import AimarketError, Manifest  # noqa: E402
from storefront import demo  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    signer = Signer(Path(tempfile.mkdtemp()) / "key.pem")
    print(f"{'model':22} {'target':16} {'build ms (median of 3)':>22} {'agreement':>10} "
          f"{'max |diff|':>11} {'bundle kB':>10}")
    for name, make in demo.DEMOS.items():
        data, raw = make()
        manifest = Manifest.model_validate(raw)
        for target, precision in [(t, p) for t in TARGETS for p in PRECISIONS[t]]:
            times, bundle = [], None
            label = target if len(PRECISIONS[target]) == 1 else f"{target}:{precision}"
            for _ in range(3):
                info = {"license_id": uuid.uuid4().hex, "licensee": "bench@example.com",
                        "listing": name, "version": 1, "terms": "bench",
                        "issued_at": "2026-11-25T00:00:00Z"}
                t0 = time.perf_counter()
                try:
                    bundle = build(data, manifest, target, info, signer, min_agreement=0,
                                   precision=precision)
                except AimarketError as exc:
                    print(f"{name:22} {label:16} {'refused: ' + exc.code:>22}")
                    break
                times.append((time.perf_counter() - t0) * 1000)
            if bundle is not None and times:
                print(f"{name:22} {label:16} {statistics.median(times):>22.1f} "
                      f"{bundle.agreement:>10.4f} {bundle.max_diff:>11.3g} "
                      f"{len(bundle.data) / 1024:>10.1f}")
    marks()


def _z(original: bytes, model: bytes, key: bytes, lic: str = "lic") -> str:
    """The licence's z-score in ``model`` (a star when it is traced)."""
    found = watermark.detect(original, model, key, [lic])
    d = watermark.differences(onnx.load_model_from_string(original),
                              onnx.load_model_from_string(model))
    if d is None:
        return "no copy"
    total = watermark.capacity(onnx.load_model_from_string(original))
    return f"{watermark.score(*d, key, lic, total):.1f}{'*' if found else ''}"


def marks() -> None:
    """The watermark on each model with enough weights: agreement with the unmarked model, and
    the z-score of the right licence (threshold {watermark.THRESHOLD}) after each step."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import task_models
    from tests.unit.test_watermark import strip

    key = b"bench-key" * 4
    models = [(n, *m()) for n, m in demo.DEMOS.items()]
    models += [(n, *getattr(task_models, n)()) for n in ("magika", "ppocr_det")]
    print(f"\n{'model':22} {'weights':>9} {'strength':>9} {'agreement':>10} {'z marked':>9} "
          f"{'z stripped':>11} {'z fp16':>8} {'z unmarked fp16':>16}")
    for name, data, raw in models:
        weights = watermark.capacity(onnx.load_model_from_string(data))
        marked = watermark.embed(data, key, "lic")
        if marked is None:
            print(f"{name:22} {weights:>9} {'unmarked: too few weights':>30}")
            continue
        manifest = Manifest.model_validate(raw)
        try:
            agreement = f"{accuracy(data, marked, manifest)[0]:.4f}"
        except Exception:  # a sample the manifest cannot generate (dynamic image sizes)
            agreement = "n/a"

        print(f"{name:22} {weights:>9} {watermark.STRENGTH:>9.2g} {agreement:>10} "
              f"{_z(data, marked, key):>9} {_z(data, strip(marked), key):>11} "
              f"{_z(data, fp16_model(strip(marked)), key):>8} "
              f"{_z(data, fp16_model(data), key):>16}")
    print("(* = traced; the bundle lowers the strength when the agreement is below 0.995)")
    budget()


def budget(licences: int = 12) -> None:
    """The mark's agreement budget on the digits model at each Orin precision: for each of
    ``licences`` licences the bundle tries marks strongest first (re-keyed up to VARIANTS
    times) until the converted export clears 95% and still carries the mark at 2x the
    threshold. Prints the share marked, the export agreement (min / median, marked vs
    unmarked), the strength and variant chosen, the export's own z, and the build time."""
    import io
    import json
    import zipfile

    from export.calibration import choose
    from export.orin import int8_qdq
    from export.targets import convert

    data, raw = demo.digits()
    manifest = Manifest.model_validate(raw)
    signer = Signer(Path(tempfile.mkdtemp()) / "key.pem")
    key = b"bench-key" * 4
    items = choose(manifest, []).items
    print(f"\n{'digits, jetson-orin':22} {'marked':>7} {'agree min':>10} {'agree med':>10} "
          f"{'unmarked':>9} {'strengths':>22} {'variants':>9} {'export z min':>13} "
          f"{'ms marked':>10} {'ms unmarked':>12}")
    for precision in ("fp16", "int8"):
        agree, zs, strengths, variants, ms, marked = [], [], [], [], [], 0
        for i in range(licences):
            info = {"license_id": f"budget-{i:02d}", "licensee": "bench@example.com",
                    "version": 1, "terms": "bench"}
            t0 = time.perf_counter()
            bundle = build(data, manifest, "jetson-orin", info, signer, precision=precision,
                           watermark_key=key)
            ms.append((time.perf_counter() - t0) * 1000)
            agree.append(bundle.agreement)
            mark = json.loads(zipfile.ZipFile(io.BytesIO(bundle.data)).read("accuracy.json")
                              )["watermark"]
            if mark["marked"]:
                marked += 1
                strengths.append(mark["strength"])
                variants.append(mark["variant"])
                zs.append(mark.get("export_z", float("nan")))
        t0 = time.perf_counter()
        plain = build(data, manifest, "jetson-orin", {"license_id": "x", "licensee": "b",
                                                      "version": 1, "terms": "t"},
                      signer, precision=precision)
        plain_ms = (time.perf_counter() - t0) * 1000
        print(f"{'  ' + precision:22} {marked:>4}/{licences:<2} {min(agree):>10.4f} "
              f"{statistics.median(agree):>10.4f} {plain.agreement:>9.4f} "
              f"{','.join(sorted({f'{s:.2g}' for s in strengths})):>22} "
              f"{max(variants, default=0):>9} {min(zs, default=float('nan')):>13.1f} "
              f"{statistics.median(ms):>10.0f} {plain_ms:>12.0f}")
    per_tensor, _ = convert(data, "onnx-int8")  # dynamic, per tensor, for reference
    print(f"  int8 static QDQ per-channel (this export) agreement "
          f"{accuracy(data, int8_qdq(data, items), manifest)[0]:.4f}; "
          f"dynamic per-tensor (onnx-int8) {accuracy(data, per_tensor, manifest)[0]:.4f}")


if __name__ == "__main__":
    main()
