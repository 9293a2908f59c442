"""Where a run's segments come from: a file, planned whole before its first segment is sent, or a live source, cut as
it plays (`stream_client.live`). Both give `Piece`s, segments that decode on their own, one at a time (`take`).

    source = FileSource(path, max_seconds=4.0)
    source.open(max_frames=lambda height, width: 18000)   # a server's limit per request
    source.start(done=set())                              # resumed: the segments already done are left out
    while (piece := source.take()) is not None: ...
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from stream_client import gops
from stream_client.manifest import Manifest
from stream_client.probe import probe

MaxFrames = Callable[[int, int], int]  # (height, width) -> the most frames a request of that size may hold


@dataclass(frozen=True)
class VideoInfo:
    codec: str  # FFmpeg's name of the codec (what a server's decoder must read)
    height: int
    width: int
    rate: Fraction | None  # frames per second, where known
    time_base: Fraction  # of the segments' timestamps
    chroma: str = ""  # "420", "422", "444", "400"; "" where the container does not say
    bit_depth: int = 0  # 0 where the container does not say


@dataclass(frozen=True)
class Piece:
    """A segment to send, and what its output needs besides its frames."""

    segment: gops.Segment
    audio: tuple[float, float | None] | None = None  # the span (s) of the source file's audio it carries; None: none
    arrived: tuple[float, ...] = ()  # live: when each of its frames (display order) reached the client (monotonic)


class FileSource:
    """A video file, cut at safe keyframes by a plan made before the first segment is sent (`gops`)."""

    live = False

    def __init__(self, path: Path, *, max_seconds: float | None, max_bytes: int | None) -> None:
        self.path, self.name = Path(path), str(path)
        self.max_seconds, self.max_bytes = max_seconds, max_bytes
        self.info: VideoInfo | None = None
        self.plan: list[gops.SegmentPlan] = []
        self.total_frames = 0
        self.ends_early: str | None = None  # said when the file holds fewer frames than its container announces
        self.first_pts = 0  # the timeline's origin: the first frame's timestamp
        self.seconds = 0.0
        self._pending: Iterator[gops.Segment] = iter(())
        self.exhausted = False

    def open(self, max_frames: MaxFrames) -> None:
        """Probe and plan; ValueError with a message for the user when it is not a video."""
        found = probe(self.path)
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            time_base = stream.time_base or Fraction(1, 1)
            pts = [p.pts for p in container.demux(stream) if p.size > 0 and p.pts is not None] or [0]
            # What the container's header says it holds: its frame count (MP4, AVI) or its duration (Matroska).
            seconds = container.duration / 1e6 if container.duration else 0.0
            announced = stream.frames or (round(seconds * found.rate) if found.rate else 0)
        self.plan = gops.plan(self.path, max_seconds=self.max_seconds, max_bytes=self.max_bytes,
                              max_frames=max_frames(found.height, found.width))  # fmt: skip
        self.total_frames = sum(p.frames for p in self.plan)  # a frame cut in half at the file's end is left out
        if announced - self.total_frames > max(1, announced // 50):
            self.ends_early = (f"the file ends early: {self.total_frames} of the {announced} frames its container "
                               "announces; every whole frame before its end is kept")  # fmt: skip
        self.info = VideoInfo(found.codec, found.height, found.width, found.rate, time_base, found.chroma,
                              found.bit_depth)  # fmt: skip
        self.first_pts = min(pts)
        self.seconds = float((max(pts) - self.first_pts) * time_base) + 1 / float(found.rate or 30)

    def manifest(self, options: dict, class_name: str | None) -> Manifest:
        return Manifest.new(self.path, options, self.plan, class_name)

    def start(self, done: set[int]) -> None:
        """From here on, `take` gives the segments not `done`."""
        self._pending = gops.segments(self.path, [p for p in self.plan if p.index not in done])

    def frames_of(self, indices: set[int]) -> int:
        return sum(p.frames for p in self.plan if p.index in indices)

    def take(self) -> Piece | None:
        """The next segment; None once all are taken (or the source was stopped)."""
        segment = None if self.exhausted else next(self._pending, None)
        if segment is None:
            self.exhausted = True
            return None
        index = segment.index
        # From 0 for the first segment: the muxer would shift the whole file to make a negative pts (an AAC encoder's
        # priming packet) non-negative, and the frames would lose their timestamps.
        audio_from = 0.0 if index == 0 else self.plan[index].start_pts
        audio_until = self.plan[index + 1].start_pts if index + 1 < len(self.plan) else None
        return Piece(segment, (audio_from, audio_until))

    def stop(self) -> None:
        self.exhausted = True
