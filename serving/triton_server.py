"""The ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles, run as a child process.

The wheel ships the server binary, its shared libraries (``nvidia_pytriton.libs``) and only the
python backend, whose stub links the running Python's ``libpython``: the child gets
``LD_LIBRARY_PATH=<python's LIBDIR>:<the wheel's libs>`` (without it a model fails to load with
``'_thread.RLock' object has no attribute '_recursion_count'``) and this interpreter's ``bin``
first on ``PATH``: the stub's embedded Python takes its prefix (this venv, where ``model.py``
finds numpy and onnxruntime) from there. (``PYTHONPATH`` instead mixes two numpy builds in the
stub, whose output tensors then arrive empty.)

Everything it writes lives under ``workspace``: the server's files (the binary tree, with the
stub of this Python version in ``backends/python``), the model repository and its log. It runs
in explicit model-control mode, its HTTP and gRPC ports on loopback, no metrics port, and
without config auto-completion: the repository's ``config.pbtxt`` files are complete, and
auto-completing a python-backend model starts one more stub process per load (which imports
numpy and onnxruntime: ~1.5 s of a ~1.9 s load here; ~0.4 s without it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

SHM_BYTES = 4 * 1024 * 1024  # per model instance; the python backend's default is 64 MB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist() -> tuple[Path, Path, Path]:
    """(tritonserver tree, its libs folder, the stub for this Python) inside the wheel."""
    import pytriton

    root = Path(pytriton.__file__).parent
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return (root / "tritonserver", root.parent / "nvidia_pytriton.libs",
            root / "tritonserver" / "python_backend_stubs" / version /
            "triton_python_backend_stub")


def server_env() -> dict[str, str]:
    """The child's environment: the library path and Python path its stubs need."""
    _, libs, _ = _dist()
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # the stub's embedded interpreter finds its prefix (this venv) through PATH, as PyTriton's
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.exec_prefix) / "bin"),
                                              env.get("PATH", "")) if p)
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process (thread) that started it goes, so
    an app killed without a clean stop leaves no tritonserver behind (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class TritonProcess:
    """One bundled tritonserver: ``start`` (waits until ready), ``alive``, ``stop``."""

    _serial = 0

    def __init__(self, workspace: Path, repository: Path | None = None) -> None:
        self.workspace = workspace
        self.repository = repository or workspace / "models"
        self.http_port = 0
        self.grpc_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        TritonProcess._serial += 1
        self._id = f"aimarket{os.getpid()}s{TritonProcess._serial}x"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def _prepare(self) -> Path:
        """The server tree in the workspace (the wheel's, with this Python's stub)."""
        tree, _, stub = _dist()
        dst = self.workspace / "tritonserver"
        marker = dst / ".from"
        if not marker.exists() or marker.read_text() != str(tree):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(tree, dst, ignore=shutil.ignore_patterns("python_backend_stubs",
                                                                      "__pycache__"))
            shutil.copy(stub, dst / "backends" / "python" / "triton_python_backend_stub")
            marker.write_text(str(tree))
        return dst

    def _shm_prefix(self) -> str:
        return f"{self._id}{self._starts}_"

    def start(self, timeout_s: float = 60) -> None:
        """Start the server (new ports unless they are still free) and wait until it is ready."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.repository.mkdir(parents=True, exist_ok=True)
        tree = self._prepare()
        self._clean_shm()
        self._starts += 1
        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [
            str(tree / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            f"--backend-directory={tree / 'backends'}",
            f"--cache-directory={tree / 'caches'}",
            "--exit-timeout-secs=5",
            "--strict-readiness=false",
            "--disable-auto-complete-config",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix()}",
            f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={1024 * 1024}",
        ]
        logfile = open(self.workspace / "tritonserver.log", "ab")  # noqa: SIM115 (the child's)
        try:
            self.proc = subprocess.Popen(cmd, env=server_env(), stdout=logfile,
                                         stderr=subprocess.STDOUT, cwd=self.workspace,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            logfile.close()
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}; see "
                                   f"{self.workspace / 'tritonserver.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("tritonserver did not become ready in time")
            time.sleep(0.05)
        log.info("tritonserver pid %s on http %s, grpc %s", self.proc.pid, self.http_port,
                 self.grpc_port)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/live", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self, timeout_s: float = 15) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # the python backend's stubs are in the server's process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._clean_shm()

    def _clean_shm(self) -> None:
        """Shared-memory regions a killed server's stubs left behind."""
        shm = Path("/dev/shm")
        if self._starts and shm.is_dir():
            for p in shm.glob(f"{self._id}*_*"):
                with contextlib.suppress(OSError):
                    p.unlink()
