"""The ``ray`` backend's deployments: their Serve options, and the scale-to-zero bookkeeping
in Ray's KV store and Serve's controller.

Each function blocks (a KV or controller round trip): the backend runs them in a thread.
Keys of the KV store, per Serve application (``slug-v3``):

- ``aimarket:parked:<app>``: set while the application is scaled to zero for idleness, so
  that every gateway process (and one that adopts the application) knows to wake it;
- ``aimarket:lastcall:<app>``: the wall time of its last call as some gateway process last
  published it (once per reaper tick, never on the hot path).
"""

from __future__ import annotations

import logging
from typing import Any

from .backend import ServingOptions, parse_model_key
from .wire import WIRE_KV_PREFIX

PARKED_KV_PREFIX = "aimarket:parked:"
LAST_CALL_KV_PREFIX = "aimarket:lastcall:"
# Placement: Serve schedules replicas with Ray's SPREAD strategy (round robin over the nodes,
# see NODE_ENV), which spreads one listing's replicas across nodes; it only does so for actors
# that ask for some resource (Ray's GCS sends zero-resource actors to a random node). So a
# replica asks for a token share of a CPU: a 2-core node still holds 200 listed models, and
# onnxruntime uses one thread per session.
REPLICA_CPUS = 0.01


def app_name(key: str) -> str:
    """The Serve application of a listing version: ``slug@3`` -> ``slug-v3``."""
    slug, version = parse_model_key(key)
    return f"{slug}-v{version}"


def fixed_size(options: ServingOptions) -> bool:
    """A listing with min = max replicas: called over the wire, scaled by this backend."""
    return options.min_replicas == options.max_replicas


def deployment_options(options: ServingOptions) -> dict[str, Any]:
    """Serve deployment options for a listing's serving options. A fixed-size listing gets
    ``num_replicas`` (Serve's external scaler, which parks it, needs no autoscaling config)."""
    scaling: dict[str, Any] = {"num_replicas": options.min_replicas} if fixed_size(options) else {
        "autoscaling_config": {
            "min_replicas": options.min_replicas,
            "initial_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }}
    return {
        "name": "model",
        "max_ongoing_requests": options.max_ongoing_requests,
        **scaling,
        "user_config": {"max_batch_size": options.max_batch_size,
                        "batch_wait_ms": options.batch_wait_ms},
        "ray_actor_options": {"num_cpus": REPLICA_CPUS},
        "health_check_period_s": 2,
    }

log = logging.getLogger(__name__)


def scale(app: str, replicas: int) -> None:
    """Set the application's deployment to ``replicas`` through Serve's external scaler (a
    count-only change: the replicas it keeps are not restarted)."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    controller = client._controller
    ray.get(controller.update_deployment_replicas.remote(
        DeploymentID(name="model", app_name=app), replicas))


def park(app: str, called_before: float | None) -> bool:
    """Scale ``app`` to zero unless some process called it after ``called_before`` (wall
    time; None: unconditionally). Forgets its replicas' wire addresses."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put

    if called_before is not None:
        last = _internal_kv_get(LAST_CALL_KV_PREFIX + app)
        if last is not None and float(last) > called_before:
            return False  # another gateway process called it meanwhile
    try:
        scale(app, 0)
    except Exception as exc:  # e.g. deployed before the external scaler was enabled
        log.warning("cannot scale %s to zero: %r", app, exc)
        return False
    _internal_kv_put(PARKED_KV_PREFIX + app, b"1")
    _internal_kv_del(f"{WIRE_KV_PREFIX}{app}:", del_by_prefix=True)
    log.info("scaled %s to zero replicas: idle", app)
    return True


def unpark(app: str, replicas: int) -> None:
    """Scale ``app`` back to ``replicas`` and clear its parked mark."""
    from ray.experimental.internal_kv import _internal_kv_del

    scale(app, replicas)
    _internal_kv_del(PARKED_KV_PREFIX + app)


def is_parked(app: str) -> bool:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(PARKED_KV_PREFIX + app) is not None


def publish_calls(calls: dict[str, float]) -> None:
    """Record each application's last call (wall time) for the other gateway processes."""
    from ray.experimental.internal_kv import _internal_kv_put

    for app, wall in calls.items():
        _internal_kv_put(LAST_CALL_KV_PREFIX + app, repr(wall).encode())
