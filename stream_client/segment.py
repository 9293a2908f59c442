"""The main job: segment videos, however long, and live sources, through one or more servers.

A run is three stages, each a module, that every kind of source feeds alike:
1. where segments come from (`sources`: a file's plan; `live`: a live demuxer cutting GOPs as they arrive): pieces of
   the video that decode on their own, cut at safe keyframes without re-encoding (`gops`);
2. sending (`sending`): at most `window` segments in flight (sent, and not yet written), of one video or of several,
   spread over the servers' streams; a segment that a server rejects is sent again (`retries`);
3. writing (`encoders`, `writing`): as a segment's masks come back, its encoder process decodes the segment here,
   keeps the class's pixels and encodes them; once its files are done it is recorded in the manifest and listed in
   the playlists (the run can be watched while it goes); at the end of a video its segments become one MP4.

`Job` is one video of a run (its source, its output, what it has done); `Run` moves the events of the servers, the
encoders and the live sources to their jobs. `segment_file` runs one video (its failure is the run's);
`segment_videos` runs several on one set of servers, and a video that fails does not stop the others.

Memory stays bounded whatever the length: the client holds the segments in flight and their chunks (and a live
source's backlog, `live`), the server the chunks of the segments in flight.
"""

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import TextIO

import numpy as np

from stream_client import output
from stream_client.access import Tls
from stream_client.encoders import Encoders, SegmentJob, Written
from stream_client.live import LiveSource, is_live
from stream_client.preview import Watch
from stream_client.sending import InFlight, Sender
from stream_client.sources import FileSource, Piece
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream, StreamError
from stream_client.timeline import Timeline
from stream_client.writing import OutputError, VideoOutput, parts_folder

RETURNS = ("segmented", "mask", "both")  # what a run writes: the segmented video, the matte, or both
KINDS = {"segmented": ("segment",), "mask": ("matte",), "both": ("segment", "matte")}

__all__ = ["RETURNS", "Outcome", "SegmentError", "Settings", "Summary", "parts_folder", "segment_file",
           "segment_videos"]  # fmt: skip


class SegmentError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    """What a run does with every video it segments."""

    class_name: str | None = None  # the VOC class to keep (None: the server's default)
    threshold: float | None = None
    returns: str = "segmented"  # one of RETURNS
    window: int = 2  # segments in flight at once, sent and not yet written, over all videos
    max_seconds: float | None = 10.0  # a file's segments: cut at the first safe keyframe past this (None: no limit)
    max_bytes: int | None = None  # ... or past this many bytes
    live_seconds: float | None = 1.0  # a live source's segments: cut at the first safe keyframe past this
    live_window: int | None = None  # a live source's playlist lists only its last N segments
    live_backlog: float = 30.0  # seconds of a live source's video that may wait to be sent; older ones are dropped
    live_timeout: float = 30.0  # a live URL that sends nothing for this long has ended
    resume: bool = False
    retries: int = 1  # times a segment the server rejected is sent again
    encoding: output.Encoding = output.Encoding()
    encoders: int | None = None  # encoder processes (default: one per core, at most `window`)
    dump_images: Path | None = None  # also the original and segmented frames as PNG

    def __post_init__(self) -> None:
        if self.returns not in RETURNS:
            raise SegmentError(f"returns must be one of {', '.join(RETURNS)}, not {self.returns!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS[self.returns]

    def options(self, live: bool) -> dict:
        """What changes the output (a resumed run must have the same)."""
        seconds = self.live_seconds if live else self.max_seconds
        return {"class": self.class_name, "threshold": self.threshold, "max_seconds": seconds,
                "max_bytes": self.max_bytes, "returns": self.returns, "preset": self.encoding.preset,
                "crf": self.encoding.crf}  # fmt: skip


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
    reencoded_to: str | None  # the codec the client re-encoded to for a CPU server, if it did
    live: bool = False
    dropped_frames: int = 0  # a live source's frames dropped because it ran ahead of the servers
    # A live source's frames, from entering the client to their segment being listed: min, median, max (s).
    latency_seconds: dict | None = None
    segments_retried: int = 0  # segments a server failed on once and that went through when sent again

    def line(self) -> str:
        first = f"{self.first_chunk_seconds:.2f} s" if self.first_chunk_seconds is not None else "-"
        note = f", re-encoded to {self.reencoded_to} for the server's CPU decoder" if self.reencoded_to else ""
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


class _Arrived:
    """Event: a live source has a segment ready, or has ended."""


class Job:
    """One video of a run: its source, its output, and what it has done."""

    def __init__(self, number: int, source: FileSource | LiveSource, out: Path, settings: Settings,
                 progress_out: TextIO, watch: Watch | None, name: str, dump_images: Path | None) -> None:  # fmt: skip
        self.number, self.source, self.settings = number, source, settings
        self.output = VideoOutput(out, settings.kinds, settings.live_window if source.live else None)
        self.progress_out, self.watch, self.name, self.dump_images = progress_out, watch, name, dump_images
        self.state, self.error = "waiting", None  # then "running", "finished", "failed" or "stopped"
        self.in_flight = 0
        self.writing: set[int] = set()
        self.progress = Progress(None, 0, progress_out, name)
        self.kept_class = settings.class_name
        self.started = time.monotonic()
        self.first_chunk: float | None = None
        self.kept = self.total = 0.0
        self.reencoded: str | None = None
        self.latency = Latency()
        self.dropped_frames = 0
        self.retried = 0
        self.newest_done: int | None = None  # a live source's newest frame whose mask is back (pts)
        self._arrivals: dict[int, tuple[float, ...]] = {}  # a live source's segments until listed

    def start(self, sender: Sender) -> None:
        """Open the source and the output (SegmentError when either cannot be)."""
        self.state, self.started = "running", time.monotonic()
        try:
            self.source.open(sender.max_frames)
        except ValueError as e:
            raise SegmentError(f"{self.source.name}: {e}") from None
        self.kept_class = self.settings.class_name or sender.default_class()
        live = self.source.live
        timeline = Timeline(1, grows=True) if live else Timeline(self.source.seconds)
        manifest = self.source.manifest(self.settings.options(live), self.kept_class)
        try:
            manifest = self.output.prepare(manifest, self.settings.resume, timeline)
            self.source.start(set(manifest.done))
        except (OutputError, ValueError) as e:
            raise SegmentError(f"{self.source.name}: {e}" if live else str(e)) from None
        done = self.source.frames_of(set(manifest.done))
        self.progress = Progress(self.source.total_frames, done, self.progress_out, self.name)
        if self.watch is None:  # else its page is where to watch it
            playlist = self.output.parts / self.output.playlists[0][1]
            self.progress.say(f"{self.progress.prefix}watch it while it runs: {playlist}")
        else:
            self.watch.start(manifest, self.output.timeline, self.source.total_frames, done,
                             [s.url for s in sender.streams], self.settings.kinds[0], live)  # fmt: skip
        if self.dump_images:
            self.dump_images.mkdir(parents=True, exist_ok=True)

    def take(self) -> Piece | None:
        return self.source.take() if self.state == "running" else None

    def launched(self, state: InFlight, reencoded: str | None, pool: Encoders, model_size: tuple[int, int]) -> None:
        """A segment was sent: its encoder starts."""
        segment, info = state.piece.segment, self.source.info
        if self.source.first_pts is None:
            self.source.first_pts = segment.pts[0]
        self.reencoded = reencoded or self.reencoded
        self.in_flight += 1
        if self.source.live:
            self.output.cut(max(self.output.manifest.segments, segment.index + 1))
            self._arrivals[segment.index] = state.piece.arrived
        if self.watch is not None:
            self.watch.sent(state.stream.url)
        pool.start(SegmentJob(
            segment.index, segment.data, list(segment.pts), segment.first_frame, (info.height, info.width), model_size,
            info.time_base, info.rate, self.settings.kinds, self.output.parts,
            None if self.source.live else self.source.path, self.settings.encoding, self.dump_images, self.number,
        ))  # fmt: skip

    def chunk(self, state: InFlight, event: Chunk, pool: Encoders) -> None:
        if self.first_chunk is None:
            self.first_chunk = time.monotonic() - self.started
        share = float(event.mask.mean())
        self.kept += share * len(event)
        self.total += len(event)
        ready = state.reorder.push(event.first, event.mask)
        if ready:
            pool.masks(state.key, np.stack(ready))
            state.frames += len(ready)
        segment, info = state.piece.segment, self.source.info
        pts = np.array(segment.pts[event.first : event.first + len(event)], np.int64)
        seconds = (pts - self.source.first_pts) * float(info.time_base)
        self.output.timeline.add(segment.index, seconds, event.mask.mean(axis=(1, 2)))
        behind = None
        if self.source.live:
            self.newest_done = int(pts.max()) if self.newest_done is None else max(self.newest_done, int(pts.max()))
            behind = self.source.seconds_of(self.source.newest_pts - self.newest_done)
        self.progress.chunk(segment.index, segment.first_frame + event.first, len(event), behind, self.dropped_frames)
        if self.watch is not None:
            self.watch.chunk(state.stream.url, len(event), behind)

    def segment_back(self, state: InFlight, pool: Encoders) -> None:
        """All of a segment's masks are here: its encoder finishes its files on its own."""
        state.reorder.finish()
        segment = state.piece.segment
        if state.frames != segment.frames:
            raise SegmentError(f"segment {segment.index}: {state.frames} frames came back of {segment.frames}")
        audio_from, audio_until = state.piece.audio or (None, None)
        pool.finish(state.key, audio_from, audio_until, 1 / float(self.source.info.rate or 30))
        self.in_flight -= 1
        self.writing.add(segment.index)
        if self.watch is not None:
            self.watch.returned(state.stream.url)

    def segment_failed(self, state: InFlight, message: str, pool: Encoders) -> None:
        """The server failed on a segment: it is sent again, or (past `retries`) the video fails."""
        index = state.piece.segment.index
        self.in_flight -= 1
        if self.watch is not None:
            self.watch.failed(index, message)
            self.watch.returned(state.stream.url, state.frames)
        if state.attempts > self.settings.retries:
            raise SegmentError(
                f"the server failed on segment {index} of {self.source.name}: {message} ({self.output.what_is_done()})"
            )
        self.progress.say(f"{self.progress.prefix}segment {index} failed ({message}): trying again")
        self.progress.undo(state.frames)
        self.output.timeline.drop(index)
        pool.abandon(state.key)
        self.retried += 1

    def written(self, event: Written) -> None:
        self.writing.discard(event.index)
        if event.error is not None:
            raise SegmentError(f"segment {event.index} could not be written: {event.error}")
        self._listed(self.output.written(event.index, event.duration))

    def poll(self) -> None:
        """Segments a live source dropped meanwhile (it ran ahead of the servers)."""
        if not self.source.live or self.state != "running":
            return
        dropped = self.source.take_dropped()
        if dropped:
            self.dropped_frames += sum(s.frames for s in dropped)
            self.output.cut(max(self.output.manifest.segments, max(s.index for s in dropped) + 1))
            self.progress.say(
                f"{self.progress.prefix}dropped segments {', '.join(str(s.index) for s in dropped)} "
                f"({self.dropped_frames} frames in all): the source runs ahead of the servers"
            )
            self._listed(self.output.dropped([s.index for s in dropped]))

    def _listed(self, indices: list[int]) -> None:
        now = time.monotonic()
        for index in indices:
            arrived = self._arrivals.pop(index, ())
            if arrived:
                self.latency.add(now - t for t in arrived)
                self.progress.say(
                    f"{self.progress.prefix}listed segment {index} ({len(arrived)} frames): "
                    f"{now - max(arrived):.2f}-{now - min(arrived):.2f} s after its frames entered the client"
                )
        if indices and self.watch is not None and self.source.live:
            self.watch.listed(self.latency.as_dict(), self.dropped_frames)

    @property
    def over(self) -> bool:
        """Nothing more to send or write."""
        return self.state == "running" and self.source.exhausted and not self.in_flight and not self.writing

    def finish(self) -> Outcome:
        """All that it will send is written: the MP4, unless the run was stopped before the video's end."""
        manifest = self.output.manifest
        if self.source.live and not manifest.segments:
            raise SegmentError(f"{self.source.name}: {self.source.error or 'no video came from it'}")
        if not manifest.complete:
            return self.stop("stopped before its end: run again with --resume to go on")
        self.output.finish(self.kept_class)
        self.state = "finished"
        if self.watch is not None:
            self.watch.written()
        return Outcome(self.source.name, str(self.output.out), "finished", self.summary())

    def summary(self) -> Summary:
        seconds = time.monotonic() - self.started
        paths = self.output.written_paths
        return Summary(
            self.source.name, str(paths["segment"]) if "segment" in paths else None,
            str(paths["matte"]) if "matte" in paths else None, self.progress.done, self.progress.this_run, seconds,
            self.progress.this_run / seconds if seconds > 0 else 0.0, self.first_chunk,
            self.kept / max(self.total, 1), self.output.manifest.segments, self.reencoded, self.source.live,
            self.dropped_frames, self.latency.as_dict(), self.retried,
        )  # fmt: skip

    def fail(self, error: str) -> Outcome:
        self.state, self.error = "failed", error
        self.source.stop()
        if self.watch is not None:
            self.watch.end(error)
        return Outcome(self.source.name, str(self.output.out), "failed", None, error)

    def stop(self, why: str) -> Outcome:
        self.state, self.error = "stopped", why
        if self.watch is not None:
            self.watch.end("cancelled")
        return Outcome(self.source.name, str(self.output.out), "stopped", None, why)


class Run:
    """The jobs of a run on one set of servers and one pool of encoders, and the loop that moves events to them."""

    def __init__(self, jobs: list[Job], settings: Settings, sender: Sender, pool: Encoders, events: queue.Queue,
                 fail_fast: bool, finished: Callable[[Outcome], None] | None) -> None:  # fmt: skip
        self.jobs, self.settings, self.sender, self.pool, self.events = jobs, settings, sender, pool, events
        self.fail_fast, self.finished = fail_fast, finished
        self.outcomes: dict[int, Outcome] = {}
        self.stopping = False
        self.most_videos_in_flight = 0

    def go(self) -> None:
        while True:
            self._fill()
            for job in self.jobs:
                self._guarded(job, job.poll)
                if job.over:
                    self._guarded(job, lambda job=job: self._ended(job, job.finish()))
            if all(job.state not in ("waiting", "running") for job in self.jobs):
                return
            event = self._next()
            if event is not None:
                self._handle(event)

    def stop(self) -> None:
        """Ctrl-C with a live source: the sources end, and what they gave is finished and written."""
        self.stopping = True
        for job in self.jobs:
            if job.state == "waiting":
                self._ended(job, job.stop("cancelled before it started"))
            else:
                job.source.stop()
        self.events.put(_Arrived())

    def _fill(self) -> None:
        """Send segments while the window has room: a live source's first, then the files' in order (the next file
        starts when those before it have sent all theirs, so short clips keep the servers busy)."""
        while len(self.sender.in_flight) + sum(len(j.writing) for j in self.jobs) < self.settings.window:
            found = self._next_piece()
            if found is None:
                break
            job, piece = found
            self._send(job, piece)
        videos = len({f.video for f in self.sender.in_flight.values()})
        self.most_videos_in_flight = max(self.most_videos_in_flight, videos)

    def _next_piece(self) -> tuple[Job, Piece] | None:
        ordered = sorted(self.jobs, key=lambda j: not j.source.live)
        for job in ordered:
            if job.state == "waiting" and not self.stopping and (job.source.live or self._files_sent_all()):
                self._guarded(job, lambda job=job: job.start(self.sender))
            if (piece := job.take()) is not None:
                return job, piece
        return None

    def _files_sent_all(self) -> bool:
        return all(j.source.exhausted for j in self.jobs if j.state == "running" and not j.source.live)

    def _send(self, job: Job, piece: Piece, attempts: int = 1) -> None:
        s = self.settings
        state, reencoded = self.sender.send(job.number, piece, job.source.info, s.class_name, s.threshold, attempts)
        job.launched(state, reencoded, self.pool, self.sender.model_size)

    def _next(self) -> "Chunk | Finished | Failed | Written | _Arrived | None":
        """The next event, or None after a second without one (the encoders and the servers' silence checked)."""
        try:
            return self.events.get(timeout=1.0)
        except queue.Empty:
            try:
                self.pool.check()
            except RuntimeError as e:
                raise SegmentError(str(e)) from None
            self.sender.check_silence()
            return None

    def _handle(self, event: "Chunk | Finished | Failed | Written | _Arrived") -> None:
        if isinstance(event, _Arrived):
            return
        if isinstance(event, Written):
            job = self.jobs[event.video]
            if job.state == "running":
                self._guarded(job, lambda: job.written(event))
            return
        if isinstance(event, Failed) and event.video is None:
            raise StreamError(f"the stream failed: {event.message}")
        self.sender.heard()
        state = self.sender.in_flight.get(event.video)
        if state is None:  # a segment given up: its video failed
            if isinstance(event, (Finished, Failed)):
                self.sender.ended(event.video)
            return
        job = self.jobs[state.video]
        if isinstance(event, Chunk):
            self._guarded(job, lambda: job.chunk(state, event, self.pool))
            return
        del self.sender.in_flight[event.video]
        if isinstance(event, Finished):
            self._guarded(job, lambda: job.segment_back(state, self.pool))
        elif self._guarded(job, lambda: job.segment_failed(state, event.message, self.pool)):
            self._send(job, state.piece, state.attempts + 1)

    def _guarded(self, job: Job, step: Callable[[], object]) -> bool:
        """Run a step of a job; a SegmentError fails the job (and with `fail_fast` the run). Whether it went well."""
        try:
            step()
            return True
        except SegmentError as e:
            self._ended(job, job.fail(str(e)))
            for state in self.sender.give_up(job.number):
                self.pool.abandon(state.key)
            if self.fail_fast:
                raise
            return False

    def _ended(self, job: Job, outcome: Outcome) -> None:
        self.outcomes[job.number] = outcome
        if self.finished is not None:
            self.finished(outcome)


def segment_file(
    source: Path | str,
    out: Path,
    urls: list[str] | str,
    *,
    class_name: str | None = None,
    threshold: float | None = None,
    returns: str = "segmented",
    window: int = 2,
    max_seconds: float | None = 10.0,
    max_bytes: int | None = None,
    resume: bool = False,
    retries: int = 1,
    encoding: output.Encoding | None = None,
    encoders: int | None = None,
    dump_images: Path | None = None,
    progress_out: TextIO | None = None,
    tls: Tls | None = None,
    headers: dict[str, str] | None = None,
    watch: Watch | None = None,
) -> Summary:
    """Segment `source` into `out` (MP4; with `returns` "mask" or "both" also its matte, `output.matte_path(out)`)
    through the servers at `urls`; the parts folder beside it grows meanwhile. `source` may be live (`-` for standard
    input, or a URL; see `segment_videos` for the settings of live sources).

    `progress_out`: where the per-chunk lines go (default: standard error). `tls` and `headers` (an access key):
    for every server's stream, see `stream_client.access`. `encoders`: worker processes (default: one per core, at
    most `window`). `watch`: told of every step (the preview page shows it). Also writes the timeline (the class's
    share of pixels per second) beside the output: OUT_timeline.json, .csv, .png."""
    settings = Settings(class_name, threshold, returns, window, max_seconds, max_bytes, resume=resume,
                        retries=retries, encoding=encoding or output.Encoding(), encoders=encoders,
                        dump_images=dump_images)  # fmt: skip
    result = segment_videos([source], [out], urls, settings, progress_out=progress_out, tls=tls, headers=headers,
                            watches=[watch], fail_fast=True)  # fmt: skip
    return result.outcomes[0].summary


def segment_videos(
    sources: list[Path | str],
    outs: list[Path],
    urls: list[str] | str,
    settings: Settings,
    *,
    progress_out: TextIO | None = None,
    tls: Tls | None = None,
    headers: dict[str, str] | None = None,
    watches: list[Watch | None] | None = None,
    fail_fast: bool = False,
    finished: Callable[[Outcome], None] | None = None,
    idle_timeout: float = 300.0,
) -> RunResult:
    """Segment each of `sources` (files, or live: `-`, a URL) into its `outs` through the servers at `urls`, with
    segments of several videos in flight in one window. A video that fails does not stop the others (unless
    `fail_fast`: then its SegmentError ends the run); `finished` is told of each video as it ends. Ctrl-C (SIGINT, or
    SIGTERM) with a live source in the run ends the sources, and what they gave is finished and written; a second
    Ctrl-C cancels at once. A stream that sends nothing for `idle_timeout` s while segments are in flight fails."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    progress_out = progress_out or sys.stderr
    watches = watches or [None] * len(sources)
    events: queue.Queue = queue.Queue()
    many = len(sources) > 1

    def wake() -> None:
        events.put(_Arrived())

    jobs = []
    for number, (source, out, watch) in enumerate(zip(sources, outs, watches, strict=True)):
        name = str(source)
        if is_live(name):
            feed: FileSource | LiveSource = LiveSource(
                name, wake, max_seconds=settings.live_seconds, max_bytes=settings.max_bytes,
                backlog_seconds=settings.live_backlog, idle_seconds=settings.live_timeout,
            )  # fmt: skip
        else:
            feed = FileSource(Path(source), max_seconds=settings.max_seconds, max_bytes=settings.max_bytes)
        images = settings.dump_images / Path(out).stem if many and settings.dump_images else settings.dump_images
        jobs.append(Job(number, feed, Path(out), settings, progress_out, watch, name if many else "", images))

    with contextlib.ExitStack() as stack:
        # Connect first: a server that refuses (no access key, a wrong one, TLS that does not match) or is not there
        # leaves no parts folder behind, and no run to resume.
        streams = [
            stack.enter_context(SegmentationStream(url, events=events, tls=tls, headers=headers)) for url in urls
        ]
        sender = Sender(streams, progress_out, idle_timeout)
        stack.enter_context(_tidied(jobs))  # after the encoders have stopped writing
        workers = settings.encoders or min(settings.window, os.cpu_count() or 1)
        pool = stack.enter_context(Encoders(workers, events))
        run = Run(jobs, settings, sender, pool, events, fail_fast, finished)
        stack.enter_context(_resumable(jobs))
        if any(job.source.live for job in jobs):
            stack.enter_context(_stopped_by_signals(run.stop))
        run.go()
        sender.close()
    for job in jobs:  # a page that says finished shows a run that is over: its streams closed, its encoders stopped
        if job.state == "finished" and job.watch is not None:
            job.watch.end()
    return RunResult([run.outcomes[job.number] for job in jobs], run.most_videos_in_flight)


@contextlib.contextmanager
def _tidied(jobs: list[Job]) -> Iterator[None]:
    """Videos that did not finish leave what a resumed run uses (`VideoOutput.tidy`), and their pages say why."""
    try:
        yield
    except BaseException as e:
        for job in jobs:
            if job.state == "running" and job.watch is not None:
                job.watch.end("cancelled" if isinstance(e, KeyboardInterrupt) else str(e))
        for job in jobs:
            if job.state != "finished":
                job.output.tidy()
        raise
    for job in jobs:
        if job.state != "finished":
            job.output.tidy()


@contextlib.contextmanager
def _resumable(jobs: list[Job]) -> Iterator[None]:
    """A broken stream (a server gone) ends the run with what is done and how to go on."""
    try:
        yield
    except StreamError as e:
        if len(jobs) == 1:
            raise StreamError(f"{e} ({jobs[0].output.what_is_done()})") from None
        done = sum(job.state == "finished" for job in jobs)
        raise StreamError(f"{e} ({done} of {len(jobs)} videos are done; run again with --resume to go on)") from None


@contextlib.contextmanager
def _stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C (or SIGTERM) calls `stop`; a second cancels the run at once. Only where signals can be
    handled (the main thread); elsewhere Ctrl-C cancels."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handle(signum, frame) -> None:
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        stop()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
