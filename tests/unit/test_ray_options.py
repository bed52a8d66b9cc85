"""The ray backend's deployment options and settings (no Ray started)."""

from __future__ import annotations

from serving import ServingOptions, make_backend
from serving.ray_backend import IDLE_S, deployment_options, fixed_size
from storefront.config import Settings


def test_a_fixed_size_listing_gets_a_replica_count_the_external_scaler_can_set() -> None:
    fixed = ServingOptions(min_replicas=2, max_replicas=2)
    assert fixed_size(fixed)
    opts = deployment_options(fixed)
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts


def test_an_autoscaling_listing_keeps_serves_autoscaler() -> None:
    auto = ServingOptions(min_replicas=0, max_replicas=4, target_ongoing_requests=3)
    assert not fixed_size(auto)
    opts = deployment_options(auto)
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 0,
                                          "max_replicas": 4, "target_ongoing_requests": 3}


def test_ray_idle_s_reaches_the_backend_with_the_load_wait(tmp_path) -> None:
    assert Settings(data_dir=tmp_path).ray_idle_s == IDLE_S == 600
    backend = make_backend("ray", ray_idle_s=5, load_wait_s=7)
    assert (backend.idle_s, backend.load_wait_s) == (5, 7)  # type: ignore[attr-defined]
