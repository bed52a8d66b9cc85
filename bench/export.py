"""Benchmark exports: time to build each target's signed bundle and its accuracy agreement
with the listed model, for every demo model. Prints figures measured in this one run.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import TARGETS, Signer, build  # noqa: E402
from serving import AimarketError, Manifest  # noqa: E402
from storefront import demo  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    signer = Signer(Path(tempfile.mkdtemp()) / "key.pem")
    print(f"{'model':22} {'target':10} {'build ms (median of 3)':>22} {'agreement':>10} "
          f"{'max |diff|':>11} {'bundle kB':>10}")
    for name, make in demo.DEMOS.items():
        data, raw = make()
        manifest = Manifest.model_validate(raw)
        for target in TARGETS:
            times, bundle = [], None
            for _ in range(3):
                info = {"license_id": uuid.uuid4().hex, "licensee": "bench@example.com",
                        "listing": name, "version": 1, "terms": "bench",
                        "issued_at": "2026-11-25T00:00:00Z"}
                t0 = time.perf_counter()
                try:
                    bundle = build(data, manifest, target, info, signer, min_agreement=0)
                except AimarketError as exc:
                    print(f"{name:22} {target:10} {'refused: ' + exc.code:>22}")
                    break
                times.append((time.perf_counter() - t0) * 1000)
            if bundle is not None and times:
                print(f"{name:22} {target:10} {statistics.median(times):>22.1f} "
                      f"{bundle.agreement:>10.4f} {bundle.max_diff:>11.3g} "
                      f"{len(bundle.data) / 1024:>10.1f}")


if __name__ == "__main__":
    main()
