"""A server that the project starts never outlives what started it: a clean stop, SIGTERM (what systemd, Docker and
supervisors send; for a script's background job, whose SIGINT is ignored, the only way to stop it), and a starter
killed outright (a killed test, a timed-out command), whose server `repo.reaper` stops. And `python -m repo.serve` on
ports and an address of its own is ready there, stops cleanly on SIGTERM while it starts, and says in one line what
kept a server from starting."""

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SETTINGS
from helpers import collect

from repo.build import build
from repo.models import Settings
from stream_client.stream import SegmentationStream

ROOT = Path(__file__).resolve().parent.parent


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def gone_within(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not group_alive(pgid)


def stubs_of(pgid: int) -> int:
    """The Python-backend stubs in the server's process group."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and b"stub" in (entry / "cmdline").read_bytes():
                    count += 1
            except (OSError, ProcessLookupError):
                pass
    return count


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build(SETTINGS, tmp_path_factory.mktemp("serve") / "repo")


def repo_serve(repository: Path, *options: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """`python -m repo.serve REPOSITORY OPTIONS`, started."""

    def as_background_job() -> None:
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "repo.serve", str(repository), *options], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_background_job)  # fmt: skip


def server_of(proc: subprocess.Popen) -> int | None:
    """The tritonserver that `repo.serve` started (its process group), once there is one."""
    found = subprocess.run(["pgrep", "-P", str(proc.pid), "tritonserver"], capture_output=True, text=True).stdout
    return int(found) if found.strip() else None


def serve(repository: Path, *options: str, ignore_sigint: bool = False) -> tuple[subprocess.Popen, int, str]:
    """`python -m repo.serve REPOSITORY OPTIONS` until ready; (its process, the server's process group, its line)."""
    proc = repo_serve(repository, *options, ignore_sigint=ignore_sigint)
    with selectors.DefaultSelector() as selector:  # before the server's own 300 s limit
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(240), "repo.serve was not ready after 240 s"
    line = proc.stdout.readline()
    assert line.startswith("ready:"), line + proc.stderr.read()
    server = server_of(proc)
    assert stubs_of(server) >= 5
    return proc, server, line


def test_sigterm_stops_the_server_and_its_stubs_even_as_a_background_job(repository):
    proc, server, _ = serve(repository, ignore_sigint=True)
    proc.send_signal(signal.SIGINT)  # a background job of a script ignores it: nothing happens
    time.sleep(2)
    assert proc.poll() is None and group_alive(server)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert gone_within(server, 10), "tritonserver or a stub outlived `python -m repo.serve`"


STARTER = """
import sys, time
from repo.serve import TritonServer
server = TritonServer(sys.argv[1]).start()
print(server.proc.pid, flush=True)
time.sleep(600)
"""


def test_a_starter_killed_outright_leaves_no_server_behind(repository):
    proc = subprocess.Popen([sys.executable, "-c", STARTER, str(repository)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    server = int(proc.stdout.readline())
    assert group_alive(server) and stubs_of(server) >= 5
    proc.kill()  # SIGKILL: no cleanup runs in the starter
    proc.wait()
    assert gone_within(server, 30), "the server outlived its killed starter"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_a_server_on_ports_and_an_address_of_its_own_is_ready_and_serves_there(repository, video):
    http, grpc, metrics = free_ports(3)
    # The options of repo.serve and tritonserver's own after `--`, mixed: each is honoured. 127.0.0.2 is loopback
    # too, and not 127.0.0.1: the server listens where it is told.
    proc, server, line = serve(repository, "--address", "127.0.0.2", "--grpc-port", str(grpc), "--",
                               f"--http-port={http}", "--metrics-port", str(metrics))  # fmt: skip
    try:
        assert line.startswith(f"ready: gRPC 127.0.0.2:{grpc}, HTTP http://127.0.0.2:{http}, metrics port {metrics}")
        with urllib.request.urlopen(f"http://127.0.0.2:{metrics}/metrics", timeout=10) as response:
            assert b"nv_inference_count" in response.read()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http), timeout=10)
        with SegmentationStream(f"127.0.0.2:{grpc}") as stream:
            stream.send("there", video(9))
            result = collect(stream, {"there"})["there"]
        assert not isinstance(result, str), result
        assert sum(len(c) for c in result) == 9
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert gone_within(server, 10)


def test_sigterm_while_the_server_starts_stops_it_cleanly(repository):
    proc = repo_serve(repository)
    deadline = time.monotonic() + 60
    while (server := server_of(proc)) is None:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # its models take seconds to load: it is not ready yet
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and not out and err == "repo.serve: stopped before the server was ready\n", err
    assert gone_within(server, 10)


def test_what_keeps_a_server_from_starting_is_one_line(repository, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out, err = repo_serve(repository, "--", f"--grpc-port={port}").communicate(timeout=60)
    assert err == f"repo.serve: error: the grpc port {port} on 127.0.0.1 is in use: give another\n", err
    # A model that fails to load (the segmenter without its weights): tritonserver exits while starting.
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    broken = build(Settings(model_size=(32, 32)), tmp_path / "repo", weights=weights)
    (broken / "segmenter" / "1" / "fcn_resnet101.pt").unlink()
    proc = repo_serve(broken)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and not out, err
    (line,) = err.splitlines()
    assert re.fullmatch(r"repo\.serve: error: tritonserver exited with \d+ while starting \(log: \S+\.log\)", line)
