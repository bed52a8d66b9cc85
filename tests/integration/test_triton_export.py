"""``aimarket triton export-repo``: every live version becomes a standard Triton model (the
onnxruntime backend's layout), whose config.pbtxt Triton's own protobuf definitions accept."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def test_export_repo_writes_a_triton_repository_of_every_live_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.protobuf import text_format
    from sqlalchemy import select
    from typer.testing import CliRunner

    from serving import ServingOptions
    from storefront import demo
    from storefront.cli import app
    from storefront.config import Settings
    from storefront.db import make_engine, migrate, session_factory
    from storefront.deployments import set_serving_options
    from storefront.models import Listing

    data = tmp_path / "data"
    monkeypatch.setenv("AIMARKET_DATA_DIR", str(data))
    monkeypatch.delenv("AIMARKET_DATABASE_URL", raising=False)
    settings = Settings(smoke_cpu_s=5)
    data.mkdir()
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    with session_factory(engine)() as db:
        seeded = demo.seed(db, settings)
        digits = db.execute(
            select(Listing).where(Listing.slug == "handwritten-digits")).scalar_one()
        set_serving_options(db, digits, ServingOptions(max_batch_size=8, batch_wait_ms=2,
                                                       min_replicas=2, max_replicas=2), 1)
        slugs = sorted(f"{listing.slug}-v{lv.version}" for listing, lv in seeded)
    engine.dispose()

    out = tmp_path / "repo"
    result = CliRunner().invoke(app, ["triton", "export-repo", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == slugs and len(slugs) >= 2

    for folder in out.iterdir():
        config = model_config_pb2.ModelConfig()
        text_format.Parse((folder / "config.pbtxt").read_text(), config)
        assert config.name == folder.name
        assert config.platform == "onnxruntime_onnx" and not config.backend
        assert (folder / "1" / "model.onnx").stat().st_size > 0
        assert not (folder / "1" / "model.py").exists()
        cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert [i.kind for i in config.instance_group] == [cpu]
        assert config.input and config.output
        if folder.name == "handwritten-digits-v1":
            assert config.max_batch_size == 64  # the manifest's largest caller batch
            assert config.dynamic_batching.preferred_batch_size == [8]
            assert config.dynamic_batching.max_queue_delay_microseconds == 2000
            assert config.instance_group[0].count == 2
            assert [(i.name, list(i.dims)) for i in config.input] == [("X", [64])]
            label = next(o for o in config.output if o.name == "label")
            assert list(label.dims) == [1] and list(label.reshape.shape) == []
        else:
            assert not config.HasField("dynamic_batching")
