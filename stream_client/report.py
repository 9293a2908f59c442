"""What a run says: a line per chunk (how far behind live, for a live source), the latency of a live source's frames,
a summary per video as it ends, and the table of a run of several."""

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import TextIO

from stream_client.audio import AudioTrack


@dataclass
class Summary:
    source: str
    output: str | None  # the segmented video, when written
    matte: str | None  # the matte video, when written
    frames: int  # frames of the whole output
    frames_this_run: int  # segmented by this run (less when resumed)
    seconds: float
    frames_per_second: float
    first_chunk_seconds: float | None
    kept_pixels: float  # the share of pixels the mask kept, over the frames of this run
    segments: int
    reencoded_to: str | None  # the codec the client converted to for the server's decoder, if it did
    live: bool = False
    dropped_frames: int = 0  # a live source's frames dropped because it ran ahead of the servers
    # A live source's frames, from entering the client to their segment being listed: min, median, max (s).
    latency_seconds: dict | None = None
    segments_retried: int = 0  # segments a server failed on once and that went through when sent again
    audio: list[dict] = field(default_factory=list)  # per audio track of the source: copied, transcoded or left out
    size_changes: list[str] = field(default_factory=list)  # where the frames change size, and what the MP4 made of it
    source_start_seconds: float | None = None  # a live source's clock at its first frame (the MP4 starts at 0)

    def line(self) -> str:
        first = f"{self.first_chunk_seconds:.2f} s" if self.first_chunk_seconds is not None else "-"
        note = f", re-encoded to {self.reencoded_to} for the server's decoder" if self.reencoded_to else ""
        note += "".join(f"; {AudioTrack(**track).line()}" for track in self.audio)
        note += "".join(f"; {change}" for change in self.size_changes)
        resumed = (
            f" ({self.frames - self.frames_this_run} from a previous run)" if self.frames_this_run < self.frames else ""
        )
        if self.latency_seconds:
            low, mid, high = (self.latency_seconds[k] for k in ("min", "median", "max"))
            note += f", listed {low:.2f}-{high:.2f} s after entering the client (median {mid:.2f} s)"
        if self.dropped_frames:
            note += f", {self.dropped_frames} frames dropped (the source ran ahead)"
        written = " and ".join(p for p in (self.output, self.matte) if p)
        return (
            f"{self.frames} frames{resumed} in {self.segments} segments; this run: {self.frames_this_run} frames in "
            f"{self.seconds:.1f} s, {self.frames_per_second:.1f} frames/s, first chunk after {first}, "
            f"{100 * self.kept_pixels:.1f} % of pixels kept{note} -> {written}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    """How one video of a run ended: "finished" (with its summary), "failed" (with why) or "stopped" (cancelled: what
    it finished is kept for --resume)."""

    source: str
    output: str
    state: str
    summary: Summary | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary.as_dict() if self.summary else None}


@dataclass
class RunResult:
    outcomes: list[Outcome]
    most_videos_in_flight: int  # the most videos with segments in flight at once

    def as_dict(self) -> dict:
        return {"videos": [o.as_dict() for o in self.outcomes], "most_videos_in_flight": self.most_videos_in_flight}

    def table(self) -> str:
        """A row per video: frames, frames/s, the share of pixels kept, errors."""
        rows = [("video", "frames", "frames/s", "kept", "errors")]
        for o in self.outcomes:
            if (s := o.summary) is not None:
                notes = [f"{s.segments_retried} segments sent again"] if s.segments_retried else []
                notes += [f"{s.dropped_frames} frames dropped"] if s.dropped_frames else []
                row = (str(s.frames), f"{s.frames_per_second:.1f}", f"{100 * s.kept_pixels:.1f} %", "; ".join(notes))
            else:
                row = ("-", "-", "-", f"{o.state}: {o.error}")
            rows.append((o.source, *row))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        return "\n".join(
            "  ".join([r[0].ljust(widths[0]), *(r[c].rjust(widths[c]) for c in (1, 2, 3)), r[4]]).rstrip() for r in rows
        )


class Progress:
    """A line per chunk with a bar, frames/s and the time left; for a live source, how far behind live it is."""

    def __init__(self, total: int | None, done: int, out: TextIO, name: str = "", width: int = 24) -> None:
        self.total, self.done, self.out, self.width = total, done, out, width
        self.prefix = f"{name}: " if name else ""
        self.start = time.monotonic()
        self.this_run = 0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.this_run / elapsed if elapsed > 0 else 0.0

    def chunk(self, segment: int, first: int, count: int, behind: float | None = None, dropped: int = 0) -> None:
        self.done += count
        self.this_run += count
        rate = self.rate
        where = f"{self.prefix}segment {segment:4d} chunk {first:7d}-{first + count - 1:<7d}"
        if self.total is None:
            lost = f", {dropped} frames dropped" if dropped else ""
            line = f"{where} {self.done} frames  {rate:7.1f} frames/s  {behind or 0:5.1f} s behind live{lost}"
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            filled = self.width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            line = (
                f"{where} [{bar}] {self.done}/{self.total} {100 * self.done / max(self.total, 1):5.1f}%  "
                f"{rate:7.1f} frames/s  ETA {eta:7.1f} s"
            )
        self.say(line)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def say_about(self, line: str) -> None:
        """A line about this video (named, in a run of several)."""
        self.say(self.prefix + line)

    def undo(self, count: int) -> None:
        """A segment that failed half way: its frames will come again."""
        self.done -= count
        self.this_run -= count


class Latency:
    """Seconds from frames entering the client to their segment being listed: the extremes, and the median of the
    last `keep` frames (memory stays bounded however long a live source runs)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.frames, self.low, self.high = 0, float("inf"), 0.0
        self._recent: deque[float] = deque(maxlen=keep)

    def add(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            self.frames += 1
            self.low, self.high = min(self.low, s), max(self.high, s)
            self._recent.append(s)

    def as_dict(self) -> dict | None:
        if not self.frames:
            return None
        return {"min": round(self.low, 3), "median": round(median(self._recent), 3), "max": round(self.high, 3),
                "frames": self.frames}  # fmt: skip
