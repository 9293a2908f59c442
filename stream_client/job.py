"""One video of a run: its source, its output and what it has done, told of its segments' events by the run
(`segment`), and the settings every video of a run shares."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from stream_client import audio, output
from stream_client.audio import AudioTrack
from stream_client.encoders import Encoders, SegmentJob, Written
from stream_client.live import LiveSource
from stream_client.preview import Watch
from stream_client.report import Latency, Outcome, Progress, Summary
from stream_client.sending import InFlight, Sender
from stream_client.sources import FileSource, Piece
from stream_client.stream import Chunk
from stream_client.timeline import Timeline
from stream_client.writing import OutputError, VideoOutput

RETURNS = ("segmented", "mask", "both")  # what a run writes: the segmented video, the matte, or both
KINDS = {"segmented": ("segment",), "mask": ("matte",), "both": ("segment", "matte")}


class SegmentError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    """What a run does with every video it segments."""

    class_name: str | None = None  # the VOC class to keep (None: the server's default)
    threshold: float | None = None
    returns: str = "segmented"  # one of RETURNS
    window: int = 2  # segments at the servers at once, over all videos (being written: up to one more per encoder)
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
        self.audio: list[AudioTrack] = []  # the source file's tracks and what the output gets of each
        self.size_changes: list[str] = []

    def start(self, sender: Sender) -> None:
        """Open the source and the output (SegmentError when either cannot be)."""
        self.state, self.started = "running", time.monotonic()
        try:
            self.source.open(sender.max_frames)
            if not self.source.live:  # a live source's format is known once it plays: its first segment says
                sender.check(self.source.info)
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
        if self.source.ends_early:
            self.progress.say_about(self.source.ends_early)
        if self.watch is None:  # else its page is where to watch it
            if not live:  # a live source's: once something has come from it (`launched`)
                self._say_where_to_watch()
        else:
            self.watch.start(manifest, self.output.timeline, self.source.total_frames, done,
                             [s.url for s in sender.streams], self.settings.kinds[0], live)  # fmt: skip
        if "segment" in self.settings.kinds and not live:  # the matte has no audio; a live source's is not carried
            self.audio = audio.tracks(self.source.path, self.output.parts, self.progress.say_about)
        if self.dump_images:
            self.dump_images.mkdir(parents=True, exist_ok=True)

    def take(self) -> Piece | None:
        return self.source.take() if self.state == "running" else None

    def _say_where_to_watch(self) -> None:
        self.progress.say_about(f"watch it while it runs: {self.output.parts / self.output.playlists[0][1]}")

    def launched(self, state: InFlight, reencoded: str | None, pool: Encoders, model_size: tuple[int, int]) -> None:
        """A segment was sent: its encoder starts."""
        segment, info = state.piece.segment, self.source.info
        if self.source.first_pts is None:
            self.source.first_pts = segment.pts[0]
            if self.source.live:
                self.output.manifest.source_start = float(segment.pts[0] * info.time_base)
        self.reencoded = reencoded or self.reencoded
        self.in_flight += 1
        if self.source.live:
            if not self.output.manifest.segments and self.watch is None:
                self._say_where_to_watch()
            self.output.cut(max(self.output.manifest.segments, segment.index + 1))
            self._arrivals[segment.index] = state.piece.arrived
        if self.watch is not None:
            self.watch.sent(state.stream.url)
        pool.start(SegmentJob(
            segment.index, segment.data, list(segment.pts), segment.first_frame, (info.height, info.width), model_size,
            info.time_base, info.rate, self.settings.kinds, self.output.parts, tuple(self.audio),
            self.settings.encoding, self.dump_images, self.number,
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
        self.progress.say_about(f"segment {index} failed ({message}): trying again")
        self.progress.undo(state.frames)
        self.output.timeline.drop(index)
        pool.abandon(state.key)
        self.retried += 1

    def written(self, event: Written) -> None:
        self.writing.discard(event.index)
        if event.error is not None:
            raise SegmentError(f"segment {event.index} could not be written: {event.error}")
        self._listed(self.output.written(event.index, event.duration, event.sizes))

    def poll(self) -> None:
        """Segments a live source dropped meanwhile (it ran ahead of the servers)."""
        if not self.source.live or self.state != "running":
            return
        dropped = self.source.take_dropped()
        if dropped:
            self.dropped_frames += sum(s.frames for s in dropped)
            self.output.cut(max(self.output.manifest.segments, max(s.index for s in dropped) + 1))
            self.progress.say_about(
                f"dropped segments {', '.join(str(s.index) for s in dropped)} "
                f"({self.dropped_frames} frames in all): the source runs ahead of the servers"
            )
            self._listed(self.output.dropped([s.index for s in dropped]))

    def _listed(self, indices: list[int]) -> None:
        now = time.monotonic()
        for index in indices:
            arrived = self._arrivals.pop(index, ())
            if arrived:
                self.latency.add(now - t for t in arrived)
                self.progress.say_about(
                    f"listed segment {index} ({len(arrived)} frames): "
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
        info = self.source.info
        first = (info.height, info.width)
        self.size_changes = self.output.size_changes(first, info.time_base, self.source.first_pts)
        for change in self.size_changes:
            self.progress.say_about(
                f"the video changes size: {change}; {self.output.parts / output.PLAYLIST} has every frame at its own "
                f"size, {self.output.out} (MP4: one size) has them scaled to {info.width}x{info.height}, their aspect "
                "kept"
            )
        refit = self.output.refit(first, info.rate, self.settings.encoding) if self.size_changes else None
        self.output.finish(self.kept_class, refit)
        self.state = "finished"
        if self.watch is not None:
            self.watch.written()
        return Outcome(self.source.name, str(self.output.out), "finished", self.summary())

    def keep_written(self) -> None:
        """A live recording cancelled (a second Ctrl-C): the segments written so far become its MP4, said where."""
        manifest = self.output.manifest
        if manifest is None or not manifest.listed():
            return
        listed = manifest.listed()
        self.output.finish(self.kept_class)
        seconds = sum(duration for _, duration in listed)
        self.progress.say_about(f"cancelled: {self.output.out} has the {len(listed)} segments written before "
                                f"({seconds:.1f} s)")  # fmt: skip

    def summary(self) -> Summary:
        seconds = time.monotonic() - self.started
        paths = self.output.written_paths
        return Summary(
            self.source.name, str(paths["segment"]) if "segment" in paths else None,
            str(paths["matte"]) if "matte" in paths else None, self.progress.done, self.progress.this_run, seconds,
            self.progress.this_run / seconds if seconds > 0 else 0.0, self.first_chunk,
            self.kept / max(self.total, 1), self.output.manifest.segments, self.reencoded, self.source.live,
            self.dropped_frames, self.latency.as_dict(), self.retried, [track.as_dict() for track in self.audio],
            [f"{change}, scaled to {self.source.info.width}x{self.source.info.height} in the MP4"
             for change in self.size_changes], self.output.manifest.source_start,
        )  # fmt: skip

    def fail(self, error: str) -> Outcome:
        self.state, self.error = "failed", error
        self.writing.clear()  # its encoders finish on their own; the run no longer waits for them
        self.source.stop()
        if self.watch is not None:
            self.watch.end(error)
        return Outcome(self.source.name, str(self.output.out), "failed", None, error)

    def stop(self, why: str) -> Outcome:
        self.state, self.error = "stopped", why
        if self.watch is not None:
            self.watch.end("cancelled")
        return Outcome(self.source.name, str(self.output.out), "stopped", None, why)
