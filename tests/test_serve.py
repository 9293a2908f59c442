"""A server that the project starts never outlives what started it: a clean stop, SIGTERM (what systemd, Docker and
supervisors send; for a script's background job, whose SIGINT is ignored, the only way to stop it), and a starter
killed outright (a killed test, a timed-out command), whose server `repo.reaper` stops."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SETTINGS

from repo.build import build

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


def serve(repository: Path, ignore_sigint: bool = False) -> tuple[subprocess.Popen, int]:
    """`python -m repo.serve REPOSITORY` until ready; (its process, the server's process group)."""

    def as_background_job() -> None:
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "repo.serve", str(repository)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, preexec_fn=as_background_job)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("ready:"), line
    (server,) = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid), "tritonserver"],
                                                capture_output=True, text=True).stdout.split()]  # fmt: skip
    assert stubs_of(server) >= 5
    return proc, server


def test_sigterm_stops_the_server_and_its_stubs_even_as_a_background_job(repository):
    proc, server = serve(repository, ignore_sigint=True)
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
