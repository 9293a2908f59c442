"""Start a tritonserver on loopback with a model repository, wait until it is ready, stop it cleanly.

Used by the CLI's local server and by the tests. The binary: `tritonserver` from the `nvidia-pytriton` wheel (its
Python backend included), or `tritonserver` on PATH (the NGC images). On a failed start the error carries the
server's log. A server never outlives what started it: a clean stop, an exception, Ctrl-C or SIGTERM stop it in
order; a starter killed outright leaves it to `repo.reaper`, which stops the server's whole process group.

    python -m repo.serve build/repo        # serve until Ctrl-C, on free ports of loopback (it says which)
    python -m repo.serve build/repo --address 0.0.0.0 --http-port 8000 --grpc-port 8001 --metrics-port 8002
    python -m repo.serve build/repo-dali --dali-backend build/native/dali   # Triton's DALI backend, built here
    SEGMENT_KEY=... python -m repo.serve build/repo --key-from-env segment-key=SEGMENT_KEY \\
        --tls-cert server.crt --tls-key server.key      # an access key and TLS (repo/access.py)
"""

import argparse
import importlib.util
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

from repo.access import Access, access_args
from repo.stub_env import SITE_VARIABLE, pytriton_server_root

DALI_BACKEND_LIBRARY = "libtriton_dali.so"
PROTOCOLS = ("http", "grpc", "metrics")


class ServerError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_use(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def _pytriton_server(workdir: Path, dali_backend: Path | None = None) -> tuple[Path, Path]:
    """The wheel's binary, and a backend directory whose Python stub matches this Python's version (and the DALI
    backend's folder, when given)."""
    root = pytriton_server_root()
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = workdir / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for f in (root / "backends" / "python").iterdir():
        (python / f.name).symlink_to(f)
    (python / "triton_python_backend_stub").symlink_to(stub / "triton_python_backend_stub")
    if dali_backend is not None:
        (backends / "dali").symlink_to(dali_backend)
    return root / "bin" / "tritonserver", backends


def dali_backend_folder(path: Path) -> Path:
    """The folder of a built `libtriton_dali.so` (the file or its folder), or a clear error."""
    folder = path.parent if path.suffix == ".so" else path
    if not (folder / DALI_BACKEND_LIBRARY).is_file():
        raise ServerError(f"no {DALI_BACKEND_LIBRARY} in {folder}")
    return folder.resolve()


def _dali_backend_env(workdir: Path) -> dict[str, str]:
    """What the wheel's tritonserver needs to run Triton's DALI backend beside its Python backend: the backend's
    libraries (DALI's, and the server's library under the name the backend was linked against: the wheel renames
    it), and a `python3` that imports DALI first on PATH (the backend runs it to serialize each `dali.py`)."""
    libs = workdir / "lib"
    libs.mkdir()
    wheel_libs = pytriton_server_root().parent.parent / "nvidia_pytriton.libs"
    (libs / "libtritonserver.so").symlink_to(next(wheel_libs.glob("libtritonserver-*.so")))
    dali = importlib.util.find_spec("nvidia.dali")
    if dali is None or not dali.submodule_search_locations:
        raise ServerError("Triton's DALI backend needs DALI here: pip install nvidia-dali-cuda120")
    paths = [libs, Path(dali.submodule_search_locations[0]), wheel_libs, os.environ.get("LD_LIBRARY_PATH", "")]
    return {
        "LD_LIBRARY_PATH": os.pathsep.join(str(p) for p in paths if str(p)),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


_MEMORY_FIELDS = {"VmRSS:": "rss", "RssAnon:": "anon", "RssShmem:": "shmem"}  # in /proc/PID/status


def processes(pid: int) -> dict[int, str]:
    """A process and its descendants (tritonserver and its Python-backend stubs), each named by what it is: the model
    a stub serves, else the process's name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    named: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # A stub's first argument is its model's file: <repository>/<model>/<version>/model.py.
        stub = argv[0].endswith(b"_stub") and len(argv) > 1
        named[p] = Path(os.fsdecode(argv[1])).parts[-3] if stub else Path(os.fsdecode(argv[0])).name
    return named


def memory_by_process(pid: int) -> dict[str, dict[str, float]]:
    """Memory of a process and its descendants (`processes`), in MiB, keyed by what each is (a model's instances
    summed). Per key: `rss`, and its parts `anon` (heaps) and `shmem` (shared memory, counted once per process that
    maps it: the stubs' regions are mapped by tritonserver too)."""
    memory: dict[str, dict[str, float]] = {}
    for p, name in processes(pid).items():
        try:
            status = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total = memory.setdefault(name, dict.fromkeys(_MEMORY_FIELDS.values(), 0.0))
        for line in status:
            key, *value = line.split()
            if key in _MEMORY_FIELDS:
                total[_MEMORY_FIELDS[key]] += int(value[0]) / 1024
    return memory


def tree_memory_mib(pid: int) -> dict[str, float]:
    """`memory_by_process`, summed."""
    parts = memory_by_process(pid).values()
    return {key: sum(part[key] for part in parts) for key in _MEMORY_FIELDS.values()}


class TritonServer:
    """`with TritonServer(repo) as server:` ... `server.url` (gRPC), `server.http_url`."""

    def __init__(
        self,
        repository: Path,
        *,
        args: list[str] = (),
        ready_timeout: float = 300.0,
        env: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
        address: str = "127.0.0.1",
        dali_backend: Path | None = None,
    ) -> None:
        """`env`: more environment for the server (e.g. CUDA_VISIBLE_DEVICES for a server of one GPU). `ports`: those
        of `PROTOCOLS` to listen on (the others: free ones); `address`: where (loopback by default, 0.0.0.0 every
        interface). `dali_backend`: a built `libtriton_dali.so` (or its folder) for the wheel's server, which has no
        DALI backend of its own."""
        self.repository = Path(repository).resolve()
        self.extra_args = list(args)
        self.env = dict(env or {})
        self.dali_backend = None if dali_backend is None else dali_backend_folder(Path(dali_backend))
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self._reaper_pipe: int | None = None
        self.address = address
        self.ports = {name: (ports or {}).get(name) or _free_port() for name in PROTOCOLS}
        self._workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        self.log_path = self._workdir / "server.log"

    @property
    def host(self) -> str:
        """Where this machine reaches the server: loopback when it listens on every interface."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.address, self.address)
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The server's command line, and the environment its backends need."""
        on_path = shutil.which("tritonserver")
        if on_path:
            binary, backend_args, env = Path(on_path), [], {}
        else:
            binary, backends = _pytriton_server(self._workdir, self.dali_backend)
            backend_args = [f"--backend-directory={backends}"]
            env = {} if self.dali_backend is None else _dali_backend_env(self._workdir)
        return [
            str(binary),
            f"--model-repository={self.repository}",
            *backend_args,
            f"--http-address={self.address}",  # metrics listen there too (tritonserver's default)
            f"--grpc-address={self.address}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ], env

    def start(self) -> "TritonServer":
        for name, port in self.ports.items():
            if _in_use(self.address, port):
                raise ServerError(f"the {name} port {port} on {self.address} is in use: give another")
        log = open(self.log_path, "wb")
        command, backend_env = self.command()
        # The stub imports from this environment's site-packages.
        env = {**os.environ, SITE_VARIABLE: site.getsitepackages()[0], **backend_env, **self.env}
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        read, self._reaper_pipe = os.pipe()
        subprocess.Popen(
            [sys.executable, "-m", "repo.reaper", str(self.proc.pid), "10"],
            stdin=read, start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        os.close(read)
        try:  # a failed start, Ctrl-C or SIGTERM while waiting: the server stops with it
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise ServerError(
                    f"tritonserver exited with {code} while starting (log: {self.log_path})\n{self.log()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise ServerError(
            f"tritonserver was not ready after {self.ready_timeout:.0f} s (log: {self.log_path})\n{self.log()}"
        )

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
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # what is left of the group: a stub that did not stop with the server
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self._reaper_pipe is not None:
            os.write(self._reaper_pipe, b"stopped")
            os.close(self._reaper_pipe)
            self._reaper_pipe = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _key_from_env(text: str) -> tuple[str, str]:
    name, sep, variable = text.partition("=")
    if not sep or variable not in os.environ:
        raise SystemExit(f"--key-from-env wants NAME=ENVVAR with ENVVAR set, got {text!r}")
    return name, os.environ[variable]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# tritonserver's own options for where it listens: repo.serve must know them to reach it, so it takes them over.
_LISTENING = {"--http-port": "http", "--grpc-port": "grpc", "--metrics-port": "metrics", "--http-address": "address",
              "--grpc-address": "address", "--metrics-address": "address"}  # fmt: skip


def _listening(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Take the listening options out of tritonserver's (after `--`) into `args`; what is left of `extra`."""
    found, rest = _options(extra, _LISTENING)
    for name, value in found:
        key = _LISTENING[name]
        if key != "address":
            if not value.isdigit() or not 0 < int(value) < 65536:
                parser.error(f"{name} wants a port (1-65535), not {value!r}")
            value = int(value)
        if getattr(args, key) not in (None, value):
            parser.error(f"{name} {value} differs from the {key} given before ({getattr(args, key)}): give it once")
        setattr(args, key, value)
    if any(value.lower() in ("false", "0") for _, value in _options(rest, {"--allow-http"})[0]):
        parser.error("repo.serve waits for the server's readiness over HTTP: leave out --allow-http=false")
    return rest


def _options(tokens: list[str], names) -> tuple[list[tuple[str, str]], list[str]]:
    """The options `names` among tritonserver's `tokens` (`--name=value` or `--name value`), and the other tokens."""
    found, rest, each = [], [], iter(tokens)
    for token in each:
        name, equals, value = token.partition("=")
        if name in names:
            found.append((name, value if equals else next(each, "")))
        else:
            rest.append(token)
    return found, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path)
    parser.add_argument("server_args", nargs="*", help="more tritonserver options, after --")
    listen = parser.add_argument_group("where it listens (also taken from tritonserver's options after --)")
    listen.add_argument("--address", help="the interface: 127.0.0.1 by default (loopback), 0.0.0.0 for every one")
    for name in PROTOCOLS:
        listen.add_argument(f"--{name}-port", type=int, dest=name, metavar="PORT", help="default: a free one")
    access = parser.add_argument_group("access (repo/access.py; health stays open)")
    access.add_argument("--key-from-env", metavar="NAME=ENVVAR", help="every protocol but health wants this key")
    access.add_argument("--control-key-from-env", metavar="NAME=ENVVAR", help="a separate key for model-repository")
    access.add_argument("--tls-cert", type=Path, help="gRPC over TLS: the server's certificate (PEM)")
    access.add_argument("--tls-key", type=Path, help="... and its private key (PEM)")
    access.add_argument("--tls-ca", type=Path, help="the CA of the clients' certificates (with --mutual-tls)")
    access.add_argument("--mutual-tls", action="store_true", help="clients need a certificate signed by --tls-ca")
    access.add_argument("--model-control", action="store_true", help="allow loading and unloading models (needs a key)")
    parser.add_argument("--dali-backend", type=Path, help="a built libtriton_dali.so (or its folder) for the models of "
                        "`repo.build --target dali`, when the server has no DALI backend of its own")  # fmt: skip
    args = parser.parse_intermixed_args()  # options of its own may come before or after the repository
    extra = _listening(args, list(args.server_args), parser)
    chosen = (args.key_from_env, args.control_key_from_env, args.tls_cert, args.tls_key, args.tls_ca)
    if any(chosen) or args.mutual_tls or args.model_control:
        key = _key_from_env(args.key_from_env) if args.key_from_env else (None, None)
        control = _key_from_env(args.control_key_from_env) if args.control_key_from_env else (None, None)
        try:
            a = Access(*key, *control, args.tls_cert, args.tls_key, args.tls_ca, args.mutual_tls, args.model_control)
        except ValueError as e:
            parser.error(str(e))
        extra = access_args(a) + extra
    # SIGTERM (systemd, Docker, `kill`; and as a script's background job, whose SIGINT is ignored, the only way to
    # stop it) stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    ports = {name: getattr(args, name) for name in PROTOCOLS if getattr(args, name)}
    try:
        server = TritonServer(args.repository, args=extra, ports=ports, address=args.address or "127.0.0.1",
                              dali_backend=args.dali_backend)  # fmt: skip
        server.start()
    except ServerError as e:  # its first line names the log, which holds the rest
        sys.exit(f"repo.serve: error: {str(e).splitlines()[0]}")
    except KeyboardInterrupt:
        print("repo.serve: stopped before the server was ready", file=sys.stderr)
        return
    try:
        print(f"ready: gRPC {server.url}, HTTP {server.http_url}, metrics port {server.ports['metrics']}, listening on "
              f"{server.address}, log {server.log_path}", flush=True)  # fmt: skip
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
