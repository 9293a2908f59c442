"""Start a tritonserver on loopback with a model repository, wait until it is ready, stop it cleanly.

Used by the CLI's local server and by the tests. The binary: `tritonserver` from the `nvidia-pytriton` wheel (its
Python backend included), or `tritonserver` on PATH (the NGC images). On a failed start the error carries the
server's log.

    python -m repo.serve build/repo        # serve until Ctrl-C
"""

import argparse
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from repo.stub_env import SITE_VARIABLE, pytriton_server_root


class ServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pytriton_server(workdir: Path) -> tuple[Path, Path]:
    """The wheel's binary, and a backend directory whose Python stub matches this Python's version."""
    root = pytriton_server_root()
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = workdir / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for f in (root / "backends" / "python").iterdir():
        (python / f.name).symlink_to(f)
    (python / "triton_python_backend_stub").symlink_to(stub / "triton_python_backend_stub")
    return root / "bin" / "tritonserver", backends


class TritonServer:
    """`with TritonServer(repo) as server:` ... `server.url` (gRPC), `server.http_url`."""

    def __init__(self, repository: Path, *, args: list[str] = (), ready_timeout: float = 180.0) -> None:
        self.repository = Path(repository).resolve()
        self.extra_args = list(args)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.ports = {"http": _free_port(), "grpc": _free_port(), "metrics": _free_port()}
        self._workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        self.log_path = self._workdir / "server.log"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def command(self) -> list[str]:
        on_path = shutil.which("tritonserver")
        if on_path:
            binary, backend_args = Path(on_path), []
        else:
            binary, backends = _pytriton_server(self._workdir)
            backend_args = [f"--backend-directory={backends}"]
        return [
            str(binary),
            f"--model-repository={self.repository}",
            *backend_args,
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        log = open(self.log_path, "wb")
        env = {**os.environ, SITE_VARIABLE: site.getsitepackages()[0]}  # the stub imports from this environment
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.proc.returncode} while starting\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.ready_timeout:.0f} s\n{self.log()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self, tail: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "---- server log (last lines) ----\n" + "\n".join(lines[-tail:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path)
    parser.add_argument("server_args", nargs="*", help="more tritonserver options, after --")
    args = parser.parse_args()
    with TritonServer(args.repository, args=args.server_args) as server:
        print(f"ready: gRPC {server.url}, HTTP {server.http_url}, log {server.log_path}", flush=True)
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
