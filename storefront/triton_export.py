"""``aimarket triton export-repo``: a standard Triton model repository of every live version.

One Triton model per listing version, ``<slug>-v<version>/config.pbtxt`` (``platform:
"onnxruntime_onnx"``, ``max_batch_size``, ``dynamic_batching`` from the listing's serving
options, ``instance_group``) and ``<slug>-v<version>/1/model.onnx``: what a full Triton image
(with the onnxruntime backend) serves as it is.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from serving.triton_repo import write_model

from .deployments import serving_options
from .models import Listing, ListingVersion
from .registry import to_live


def export_repository(engine: Engine, data_dir: Path, out: Path) -> list[Path]:
    """Write every live version of every listed listing into ``out``; the model folders."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with Session(engine) as db:
        rows = db.execute(
            select(Listing, ListingVersion)
            .join(ListingVersion, ListingVersion.listing_id == Listing.id)
            .where(Listing.status == "listed", ListingVersion.status == "live")
            .order_by(Listing.slug, ListingVersion.version)
        ).all()
        for listing, lv in rows:
            live = to_live(listing, lv, data_dir, serving_options(db, listing.id))
            written.append(write_model(out, live.ref, "onnxruntime"))
    return written
