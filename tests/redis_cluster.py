"""A real Redis Cluster of three primaries on this machine, for tests (``redis-server
--cluster-enabled yes`` x3, joined by ``redis-cli --cluster create``).

Each node persists with ``appendfsync always`` in its own folder, so a node SIGKILLed and
started again comes back with every write it acknowledged and its place in the cluster
(``nodes.conf``). ``cluster-require-full-coverage no``: while one primary is away the others
keep serving their slots.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import redis
from redis.cluster import RedisCluster

SERVER, CLI = shutil.which("redis-server"), shutil.which("redis-cli")
MISSING = None if SERVER and CLI else "redis-server / redis-cli not installed"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ports(n: int) -> list[int]:
    """``n`` free ports whose cluster-bus ports (+10000) are free too."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000 and port not in out and _free(port + 10000):
            out.append(port)
    return out


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.ports = _ports(nodes)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(parents=True, exist_ok=True)
        assert SERVER is not None
        self.procs[port] = subprocess.Popen(
            [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        for _ in range(200):  # until it answers (it loads its append-only file first)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                threading.Event().wait(0.05)
        raise AssertionError(f"redis-server on {port} did not start")

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        assert CLI is not None
        subprocess.run([CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True,
                       capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every node reports the cluster ok and knows every primary."""
        for _ in range(400):
            states = []
            for port in self.ports:
                try:
                    info = redis.Redis(port=port, socket_connect_timeout=0.5).cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and int(info.get("cluster_known_nodes", 0)) == len(self.ports))
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            threading.Event().wait(0.05)
        raise AssertionError("the cluster did not become ok")

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url, require_full_coverage=False)

    def port_of(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot."""
        with self.client() as c:
            node = c.get_node_from_key(key)
            assert node is not None
            return int(node.port)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move one slot and its keys to the primary on ``to_port`` (what a resharding does,
        one slot at a time): IMPORTING / MIGRATING, MIGRATE the keys, then SETSLOT NODE."""
        src_port = next(p for p in self.ports if self._owner(p, slot))
        src, dst = redis.Redis(port=src_port), redis.Redis(port=to_port)
        src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for port in self.ports:
            redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    @staticmethod
    def _owner(port: int, slot: int) -> bool:
        me = redis.Redis(port=port).cluster("myid")
        me = me.decode() if isinstance(me, bytes) else me
        for line in (redis.Redis(port=port).execute_command("CLUSTER", "NODES")
                     .decode().splitlines()):
            parts = line.split()
            if parts[0] != me:
                continue
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return True
        return False
