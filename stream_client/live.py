"""A live source: standard input (`-`) or a URL FFmpeg opens (udp://, rtsp://, srt://, http(s)://, a live HLS
playlist), demuxed on a thread of its own and cut at safe keyframes as its GOPs arrive (`gops.Cutter`).

Each segment is ready as soon as the packet after its last GOP has arrived, and waits in a backlog until the run
sends it. A source faster than the servers fills the backlog: past `backlog_seconds` of video, the oldest waiting
segments are dropped, whole, and counted (the run says how far behind live it is; a segment sent is never dropped).
So the client holds at most the backlog, the GOP being gathered, and the run's window, however long the source runs.

The source ends at its end of stream, when a URL sends nothing for `idle_seconds`, or on `stop()` (Ctrl-C): what was
gathered then is the last segment.
"""

import fcntl
import os
import select
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from statistics import median

import av

from stream_client import gops
from stream_client.manifest import Manifest
from stream_client.probe import layout
from stream_client.sources import MaxFrames, Piece, VideoInfo

STDIN = "-"
# FFmpeg's defaults probe 5 MB or 5 s of a stream before the first packet; these give the first packets about 2 s after
# the stream starts and each keyframe within a second of being written (FACTS.md, "Live input through PyAV").
PROBE = {"probesize": "32768", "analyzeduration": "0"}
STOP_GRACE_S = 2.0  # a reader blocked on a silent source after `stop()`: the run finishes its GOP without it


def is_live(name: str) -> bool:
    """`-` (standard input) or a URL; anything else names a file or a folder."""
    return name == STDIN or "://" in name


class _Pipe:
    """Standard input as the demuxer reads it: a read returns what is there (a buffered reader would wait for a whole
    block, seconds at a low bitrate), and once the run is stopping, what was already sent, then the end of stream."""

    def __init__(self, fd: int, stopping: threading.Event) -> None:
        self.fd, self.stopping = fd, stopping
        self._left: int | None = None  # once stopping: the bytes that had been sent, still to read

    def read(self, size: int) -> bytes:
        while not self.stopping.is_set():
            if select.select([self.fd], [], [], 0.2)[0]:
                return os.read(self.fd, size)
        if self._left is None:  # counted once: a writer that goes on writing does not keep the run going
            try:
                self._left = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0" * 4))[0]
            except OSError:
                self._left = 0
        data = os.read(self.fd, min(size, self._left)) if self._left > 0 else b""
        self._left -= len(data)
        return data


class LiveSource:
    live = True
    ends_early = None  # a live source has no announced length

    def __init__(
        self,
        name: str,
        wake: Callable[[], None],
        *,
        max_seconds: float | None = 1.0,
        max_bytes: int | None = None,
        backlog_seconds: float = 30.0,
        idle_seconds: float = 30.0,
    ) -> None:
        """`wake`: called (from the reader's thread) when there is something to take or the source has ended."""
        self.name, self._wake = name, wake
        self.max_seconds, self.max_bytes = max_seconds, max_bytes
        self.backlog_seconds, self.idle_seconds = backlog_seconds, idle_seconds
        self.info: VideoInfo | None = None
        self.error: str | None = None  # why it could not be opened
        self.ended_by: str | None = None  # why it ended before its end of stream (a network error, silence)
        self.total_frames = None
        self.first_pts: int | None = None  # the timeline's origin: set by the run from its first segment
        self.seconds = 1.0
        self.newest_pts: int | None = None  # of the newest frame received
        self.received = 0  # frames received (those before the first keyframe included)
        self._lock = threading.Lock()
        self._pieces: deque[tuple[Piece, float]] = deque()  # the backlog: (piece, its seconds of video)
        self._waiting_seconds = 0.0
        self._dropped: list[gops.Segment] = []
        self._cutter: gops.Cutter | None = None
        self._closed = False  # no more segments: ended, or finished by `stop`
        self._stopping = threading.Event()
        self._stopped_at: float | None = None
        self._arrived: dict[int, float] = {}  # gathered packets' pts -> when they came

    def open(self, max_frames: MaxFrames) -> None:
        """Start reading, on a thread (the source may take its time to send anything)."""
        threading.Thread(target=self._read, args=(max_frames,), daemon=True, name=f"live {self.name}").start()

    def manifest(self, options: dict, class_name: str | None) -> Manifest:
        return Manifest.new_live(self.name, options, class_name)

    def start(self, done: set[int]) -> None:
        if done:
            raise ValueError("a live source cannot be resumed: its segments are gone")

    def frames_of(self, indices: set[int]) -> int:
        return 0

    @property
    def exhausted(self) -> bool:
        """Nothing more will come: the source has ended and its backlog is empty."""
        self._finish_if_stuck()
        with self._lock:
            return self._closed and not self._pieces

    def take(self) -> Piece | None:
        self._finish_if_stuck()
        with self._lock:
            if not self._pieces:
                return None
            piece, seconds = self._pieces.popleft()
            self._waiting_seconds -= seconds
            return piece

    def take_dropped(self) -> list[gops.Segment]:
        """The segments dropped from the backlog since the last call."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
            return dropped

    def stop(self) -> None:
        """End the source now: what it has gathered becomes its last segment."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stopping.set()

    def seconds_of(self, pts: int) -> float:
        return float(pts * self.info.time_base) if self.info else 0.0

    def _opened(self) -> av.container.InputContainer:
        if self.name == STDIN:
            return av.open(_Pipe(0, self._stopping), options=PROBE)
        return av.open(self.name, options=PROBE, timeout=(self.idle_seconds, self.idle_seconds))

    def _read(self, max_frames: MaxFrames) -> None:
        try:
            container = self._opened()
        except av.ExitError:  # the timeout's interrupt: silent from the start
            self._end(error=f"nothing came from it within {self.idle_seconds:g} s (--live-timeout)")
            return
        except (av.FFmpegError, OSError) as e:
            self._end(error=f"could not open it: {e}")
            return
        with container:
            if not container.streams.video:
                self._end(error="it holds no video stream")
                return
            stream = container.streams.video[0]
            context = stream.codec_context
            self.info = VideoInfo(context.codec.canonical_name, context.height, context.width,
                                  Fraction(stream.average_rate) if stream.average_rate else None,
                                  stream.time_base or Fraction(1, 90000), *layout(context.pix_fmt))  # fmt: skip
            cutter = gops.Cutter(stream, max_seconds=self.max_seconds, max_bytes=self.max_bytes,
                                 max_frames=max_frames(context.height, context.width))  # fmt: skip
            with self._lock:
                self._cutter = cutter
            try:
                for packet in container.demux(stream):
                    # Standard input ends on its own once stopping (`_Pipe`), with all that was sent: to the end.
                    if (self._stopping.is_set() and self.name != STDIN) or not self._push(cutter, packet):
                        break
            except (av.FFmpegError, OSError) as e:  # the network, or a read timeout: silence for idle_seconds
                self.ended_by = str(e)
            self._end()

    def _push(self, cutter: gops.Cutter, packet: av.Packet) -> bool:
        """False once the source is closed (finished by `stop` while this thread was waiting for data)."""
        with self._lock:
            if self._closed:
                return False
            if packet.size:
                ts = packet.pts if packet.pts is not None else packet.dts
                self.received += 1
                self.newest_pts = ts if self.newest_pts is None else max(self.newest_pts, ts)
                skipped = cutter.skipped
                segment = cutter.push(packet)
                if cutter.skipped == skipped:
                    self._arrived[ts] = time.monotonic()
                if segment is not None:
                    self._add(segment)
        return True

    def _end(self, error: str | None = None) -> None:
        with self._lock:
            if error is not None:
                self.error = error
            if not self._closed and self._cutter is not None and (last := self._cutter.flush()) is not None:
                self._add(last)
            self._closed = True
        self._wake()

    def _finish_if_stuck(self) -> None:
        """After `stop`, a reader still waiting for a silent source: its GOP is finished here (its packets are in
        hand; the reader's thread, a daemon, is left waiting)."""
        if self._stopped_at is not None and not self._closed and time.monotonic() - self._stopped_at > STOP_GRACE_S:
            self.ended_by = self.ended_by or "stopped while it sent nothing"
            self._end()

    def _add(self, segment: gops.Segment) -> None:
        """A segment is ready (the lock held): into the backlog, and the oldest waiting out past its bound."""
        now = time.monotonic()
        arrived = tuple(self._arrived.pop(p, now) for p in segment.pts)
        if self.info is not None and self.info.rate is None and len(segment.pts) > 1:
            step = median(b - a for a, b in zip(segment.pts, segment.pts[1:], strict=False))
            if step > 0:
                self.info = replace(self.info, rate=Fraction(1, 1) / (step * self.info.time_base))
        rate = float(self.info.rate or 30) if self.info else 30.0
        seconds = self.seconds_of(segment.pts[-1] - segment.pts[0]) + 1 / rate
        self._pieces.append((Piece(segment, None, arrived), seconds))
        self._waiting_seconds += seconds
        while len(self._pieces) > 1 and self._waiting_seconds > self.backlog_seconds:
            old, old_seconds = self._pieces.popleft()
            self._waiting_seconds -= old_seconds
            self._dropped.append(old.segment)
        self._wake()
