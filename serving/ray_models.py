"""Model files for Ray replicas on any node: the bytes travel through Ray's object store.

A replica may start on a node that never saw the gateway's data dir (another machine, a
KubeRay worker pod). The gateway therefore puts each model it deploys into a detached actor,
``aimarket-models``, pinned to the head node; the actor owns the bytes as an object in Ray's
object store (spilled to disk under pressure, gone only with the cluster), and every replica
reads them from there by digest, so a replacement replica started after the deploying gateway
exited still finds its model. Digests are checked on both sides.

Also here: the replica's scheduling priority. Ray starts worker processes at nice 15 unless its
raylet ran with ``RAY_worker_niceness=0``; a replica answers paid calls and must not be starved
by the gateway or anything else on the node, so it raises itself back to nice 0 where allowed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

STORE_NAME = "aimarket-models"
STORE_NAMESPACE = "aimarket"


class ModelStore:
    """The cluster's copy of every deployed model: digest -> an object it owns."""

    def __init__(self) -> None:
        self._refs: dict[str, Any] = {}

    def has(self, sha256: str) -> bool:
        return sha256 in self._refs

    def put(self, sha256: str, data: bytes) -> None:
        import ray

        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"model bytes do not match digest {sha256}")
        self._refs[sha256] = ray.put(data)  # owned by this actor: outlives the caller

    def get(self, sha256: str) -> list[Any]:
        """``[ref]`` (a list, so that Ray hands over the reference, not the bytes), or ``[]``."""
        ref = self._refs.get(sha256)
        return [] if ref is None else [ref]

    def forget(self, sha256: str) -> None:
        self._refs.pop(sha256, None)


def store() -> Any:
    """The store's actor handle, created on the head node when it does not exist yet."""
    import ray

    actor: Any = ray.remote(ModelStore)
    return actor.options(
        name=STORE_NAME, namespace=STORE_NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, resources={"node:__internal_head__": 0.001},
    ).remote()


def publish_model(sha256: str, read: Any) -> None:
    """Put the model into the store unless it is there; ``read()`` returns its bytes."""
    import ray

    handle = store()
    if not ray.get(handle.has.remote(sha256)):
        ray.get(handle.put.remote(sha256, read()))


def fetch_model(sha256: str, timeout_s: float = 120) -> bytes:
    """The model's bytes from the store (inside a replica, on any node)."""
    import ray

    handle = ray.get_actor(STORE_NAME, namespace=STORE_NAMESPACE)
    refs: list[Any] = ray.get(handle.get.remote(sha256), timeout=timeout_s)
    if not refs:
        raise RuntimeError(f"model {sha256} is not in the cluster's model store")
    data: bytes = ray.get(refs[0], timeout=timeout_s)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"model {sha256}: the stored bytes do not match the digest")
    return data


def normal_priority() -> int:
    """Bring every thread of this process to nice 0 (Linux niceness is per thread); returns
    the niceness it ends at."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > 0:
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        except PermissionError:
            log.warning("replica runs at nice %d and may not lower it: start the Ray nodes "
                        "with RAY_worker_niceness=0", os.getpriority(os.PRIO_PROCESS, 0))
            break
        except OSError:
            continue  # a thread that ended meanwhile
    return os.getpriority(os.PRIO_PROCESS, 0)
