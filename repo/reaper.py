"""Stops a tritonserver and its Python-backend stubs once the process that started them is gone, however it went.

`repo.serve` starts the server in a session of its own (so that Ctrl-C in a terminal reaches the client, which then
cancels its videos and stops the server in order) and starts this beside it, reading a pipe whose other end only the
starter holds. A clean stop writes a byte first; end of file without it means the starter died (SIGKILL, a killed
test, a crash): then the server's whole process group gets SIGTERM, and SIGKILL after a grace period.

    python -m repo.reaper PGID GRACE_SECONDS < pipe
"""

import os
import signal
import sys
import time


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def main() -> None:
    pgid, grace = int(sys.argv[1]), float(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the starter's terminal is not ours
    if sys.stdin.buffer.read():  # the starter stopped the server itself
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)


if __name__ == "__main__":
    main()
