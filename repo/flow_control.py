"""Flow control between the entry model and the decoder: the decoder runs only as far ahead as it is allowed.

A decoupled BLS call gives the caller no backpressure: the decoder would decode a whole video into GPU memory as
fast as NVDEC goes, whatever the segmenter keeps up with. So the entry model hands the decoder credits through a
named pipe (a FIFO in /dev/shm; all models of a server share its host): one byte per response the decoder may
send. The entry model gives `chunks_in_flight` at the start and one more per chunk sent to the client.

Closing the pipe also cancels: the decoder reads end-of-file at its next wait and stops decoding that video (the
Python backend of tritonserver 2.51 has no way to cancel a BLS request).

The parameter is optional: a decoder without it (or the native DALI backend, which ignores it) runs free.
"""

import os
import secrets
import select
import tempfile
from pathlib import Path

CREDITS_PARAMETER = "credits_fifo"


class Credits:
    """The entry model's side: `with Credits(first) as credits:` pass `credits.path`, call `credits.give()`."""

    def __init__(self, first: int) -> None:
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.path = folder / f"segment-video-credits-{secrets.token_hex(8)}"
        os.mkfifo(self.path, 0o600)  # fails if the name is taken
        # Read-write: opening does not wait for the decoder, and the pipe has a writer until this side closes.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.give(first)

    def give(self, count: int = 1) -> None:
        os.write(self._fd, b"\1" * count)

    def close(self, cancel: bool = False) -> None:
        """`cancel`: also take back the credits not used yet, so that the decoder stops at its next wait."""
        if self._fd >= 0:
            if cancel:
                try:
                    while os.read(self._fd, 4096):
                        pass
                except BlockingIOError:
                    pass
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Credits":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(cancel=exc_type is not None)


class CreditsClosed(RuntimeError):
    pass


class CreditWait:
    """The decoder's side: `take()` before each response; raises CreditsClosed once the entry model has let go."""

    def __init__(self, path: str, timeout: float) -> None:
        self.timeout = timeout
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise CreditsClosed("the caller has already let go of this video") from None

    def take(self) -> None:
        while True:
            readable, _, _ = select.select([self._fd], [], [], self.timeout)
            if not readable:
                raise CreditsClosed(f"no credit from the caller for {self.timeout:.0f} s")
            try:
                got = os.read(self._fd, 1)
            except BlockingIOError:  # another reader of the same pipe took it first
                continue
            if not got:
                raise CreditsClosed("cancelled by the caller")
            return

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "CreditWait":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
