"""The main job: segment one video file, however long, through one or more servers.

1. Plan: cut the file at safe keyframes into segments that decode on their own (`gops`, no re-encoding).
2. Send each segment as one request, at most `window` in flight, spread over the servers' streams; a segment
   that a server rejects is retried, and re-encoded first for a server whose decoder cannot read its codec.
3. The server sends back the class mask of each frame; as a segment's chunks arrive, hand them to the segment's
   encoder (`encoders`: worker processes that decode the segment here, keep the class's pixels and encode the
   segmented video and the matte, in parallel with the other segments in flight); when its files are done, record
   the segment in the manifest and extend the playlists (the run can be watched while it goes: `output`).
4. At the end, remux the segments into one MP4 per video written. With `resume`, finished segments are kept.

Memory stays bounded whatever the length: the client holds the segments in flight and their chunks, the server
the chunks of the segments in flight.
"""

import contextlib
import os
import queue
import shutil
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TextIO

import av
import numpy as np

from stream_client import gops, output, videos
from stream_client.access import Tls
from stream_client.encoders import Encoders, SegmentJob, Written
from stream_client.manifest import Manifest
from stream_client.preview import Watch
from stream_client.probe import probe
from stream_client.reorder import Reorderer
from stream_client.stream import Event, Failed, Finished, SegmentationStream, StreamError
from stream_client.timeline import Timeline

RETURNS = ("segmented", "mask", "both")  # what a run writes: the segmented video, the matte, or both


class SegmentError(RuntimeError):
    pass


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

    def line(self) -> str:
        first = f"{self.first_chunk_seconds:.2f} s" if self.first_chunk_seconds is not None else "-"
        note = f", re-encoded to {self.reencoded_to} for the server's CPU decoder" if self.reencoded_to else ""
        resumed = (
            f" ({self.frames - self.frames_this_run} from a previous run)" if self.frames_this_run < self.frames else ""
        )
        written = " and ".join(p for p in (self.output, self.matte) if p)
        return (
            f"{self.frames} frames{resumed} in {self.segments} segments; this run: {self.frames_this_run} frames in "
            f"{self.seconds:.1f} s, {self.frames_per_second:.1f} frames/s, first chunk after {first}, "
            f"{100 * self.kept_pixels:.1f} % of pixels kept{note} -> {written}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


class Progress:
    """A line per chunk with a bar, frames/s and the time left."""

    def __init__(self, total: int, done: int, out: TextIO, width: int = 24) -> None:
        self.total, self.done, self.out, self.width = total, done, out, width
        self.start = time.monotonic()
        self.this_run = 0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.this_run / elapsed if elapsed > 0 else 0.0

    def chunk(self, segment: int, first: int, count: int) -> None:
        self.done += count
        self.this_run += count
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        print(
            f"segment {segment:4d} chunk {first:7d}-{first + count - 1:<7d} [{bar}] {self.done}/{self.total} "
            f"{100 * self.done / max(self.total, 1):5.1f}%  {rate:7.1f} frames/s  ETA {eta:7.1f} s",
            file=self.out,
            flush=True,
        )

    def undo(self, count: int) -> None:
        """A segment that failed half way: its frames will come again."""
        self.done -= count
        self.this_run -= count


def source_timestamps(path: Path) -> tuple[Fraction, array]:
    """The time base and pts of every non-empty video packet, in demux order (the order `gops` counts them)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = array("q", (p.pts if p.pts is not None else -1 for p in container.demux(stream) if p.size > 0))
        return stream.time_base, pts


@dataclass
class InFlight:
    """A segment on its way: where it was sent, its masks so far."""

    segment: gops.Segment
    stream: SegmentationStream
    pts: list[int]  # its frames' timestamps in display order
    reorder: Reorderer = field(default_factory=Reorderer)
    attempts: int = 1
    frames: int = 0


def segment_file(
    source: Path,
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
    through the servers at `urls`; the parts folder beside it grows meanwhile.

    `progress_out`: where the per-chunk lines go (default: standard error). `tls` and `headers` (an access key):
    for every server's stream, see `stream_client.access`. `encoders`: worker processes (default: one per core, at
    most `window`). `watch`: told of every step (the preview page shows it). Also writes the timeline (the class's
    share of pixels per second) beside the output: OUT_timeline.json, .csv, .png."""
    source, out = Path(source), Path(out)
    encoding = encoding or output.Encoding()
    if returns not in RETURNS:
        raise SegmentError(f"returns must be one of {', '.join(RETURNS)}, not {returns!r}")
    kinds = {"segmented": ("segment",), "mask": ("matte",), "both": ("segment", "matte")}[returns]
    urls = [urls] if isinstance(urls, str) else list(urls)
    progress_out = progress_out or sys.stderr
    try:
        found = probe(source)
    except ValueError as e:
        raise SegmentError(f"{source}: {e}") from None
    time_base, packet_pts = source_timestamps(source)
    parts = parts_folder(out)
    options = {"class": class_name, "threshold": threshold, "max_seconds": max_seconds, "max_bytes": max_bytes,
               "returns": returns, "preset": encoding.preset, "crf": encoding.crf}  # fmt: skip
    events: queue.Queue[Event | Written] = queue.Queue()
    start = time.monotonic()

    with contextlib.ExitStack() as stack:
        # Connect first: a server that refuses (no access key, a wrong one, TLS that does not match) or is not there
        # leaves no parts folder behind, and no run to resume.
        streams = [
            stack.enter_context(SegmentationStream(url, events=events, tls=tls, headers=headers)) for url in urls
        ]
        infos = {s.url: s.server_info() for s in streams}
        # No longer than every server takes: a request's frames must fit its share of the server's memory.
        max_frames = min(i.max_frames(found.height, found.width, frames=False) for i in infos.values())
        plan = gops.plan(source, max_seconds=max_seconds, max_bytes=max_bytes, max_frames=max_frames)
        kept_class = class_name or infos[streams[0].url].default_class
        manifest = _prepare_parts(parts, Manifest.new(source, options, plan, kept_class), resume)
        stack.enter_context(_tidied_on_failure(manifest, parts))  # after the encoders have stopped writing
        if watch is None:  # else its page is where to watch it
            print(f"watch it while it runs: {parts / _playlists(kinds)[0][1]}", file=progress_out)
        if dump_images:
            dump_images.mkdir(parents=True, exist_ok=True)
        workers = encoders or min(window, os.cpu_count() or 1)
        pool = stack.enter_context(Encoders(workers, events))

        todo = [p for p in plan if p.index not in manifest.done]
        progress = Progress(found.packets, sum(p.frames for p in plan if p.index in manifest.done), progress_out)
        first_pts = min(packet_pts)
        video_seconds = float((max(packet_pts) - first_pts) * time_base) + 1 / float(found.rate or 30)
        timeline = (Timeline.load(parts) if resume else None) or Timeline(video_seconds)
        if watch is not None:
            watch.start(manifest, timeline, progress.total, progress.done, urls, kinds[0])
            stack.enter_context(_reported(watch))
        pending = gops.segments(source, todo)
        in_flight: dict[str, InFlight] = {}
        writing: set[int] = set()
        reencoded = None
        first_chunk = None
        kept = total = 0
        frame_duration = 1 / float(found.rate or 30)
        model_size = infos[streams[0].url].model_size
        stack.enter_context(_resumable(manifest, parts))

        def send(state: InFlight) -> None:
            nonlocal reencoded
            data = state.segment.data
            codecs = infos[state.stream.url].codecs
            if found.codec not in codecs:  # a segment is the source's packets: its codec is the source's
                data = videos.reencode_for_cpu(data, found.rate)
                if reencoded is None:
                    print(
                        f"the server decodes on the {infos[state.stream.url].decoder_device} and reads "
                        f"{', '.join(codecs)}: re-encoding {found.codec} to {videos.CPU_CODEC} for it",
                        file=progress_out,
                    )
                reencoded = videos.CPU_CODEC
            # The mask alone comes back: the client has the frames (it sent them) and keeps the pixels itself.
            state.stream.send(request_id(state), data, class_name=class_name, threshold=threshold, returns="mask",
                              size=(found.height, found.width))  # fmt: skip

        def launch(segment: gops.Segment, attempts: int = 1) -> None:
            stream = min(streams, key=lambda s: sum(f.stream is s for f in in_flight.values()))
            part = plan[segment.index]
            pts = sorted(packet_pts[part.first_packet : part.end_packet])
            state = InFlight(segment, stream, pts, attempts=attempts)
            in_flight[request_id(state)] = state
            if watch is not None:
                watch.sent(stream.url)
            pool.start(SegmentJob(
                segment.index, segment.data, pts, segment.first_frame, (found.height, found.width), model_size,
                time_base, found.rate, kinds, parts, source, encoding, dump_images,
            ))  # fmt: skip
            send(state)

        def finish(state: InFlight) -> None:
            """The segment's masks are all here: its encoder finishes the files on its own."""
            state.reorder.finish()
            index = state.segment.index
            if state.frames != state.segment.frames:
                raise SegmentError(f"segment {index}: {state.frames} frames came back of {state.segment.frames}")
            # From 0 for the first segment: the muxer would shift the whole file to make a negative pts (an AAC
            # encoder's priming packet) non-negative, and the frames would lose their timestamps.
            audio_from = 0.0 if index == 0 else plan[index].start_pts
            audio_until = plan[index + 1].start_pts if index + 1 < len(plan) else None
            pool.finish(index, audio_from, audio_until, frame_duration)
            writing.add(index)

        def written(event: Written) -> None:
            writing.discard(event.index)
            if event.error is not None:
                raise SegmentError(f"segment {event.index} could not be written: {event.error}")
            manifest.done[event.index] = event.duration
            manifest.save(parts)
            timeline.commit(event.index)
            timeline.save(parts)
            for kind, name in _playlists(kinds):
                output.write_playlist(parts, manifest.finished_prefix(), finished=False, name=name, kind=kind)

        while True:
            while len(in_flight) < window and (segment := next(pending, None)) is not None:
                launch(segment)
            if not in_flight and not writing:
                break
            event = _next(streams[0], events, pool, idle=not in_flight)
            if isinstance(event, Written):
                written(event)
                continue
            if isinstance(event, Failed):
                if event.video is None or event.video not in in_flight:
                    raise StreamError(f"the stream failed: {event.message}")
                state = in_flight.pop(event.video)
                if watch is not None:
                    watch.failed(state.segment.index, event.message)
                    watch.returned(state.stream.url, state.frames)
                if state.attempts > retries:
                    raise SegmentError(
                        f"the server failed on segment {state.segment.index} of {source}: {event.message} "
                        f"({_what_is_done(manifest, parts)})"
                    )
                print(f"segment {state.segment.index} failed ({event.message}): trying again", file=progress_out)
                progress.undo(state.frames)
                timeline.drop(state.segment.index)
                pool.abandon(state.segment.index)
                launch(state.segment, state.attempts + 1)
                continue
            state = in_flight[event.video]
            if isinstance(event, Finished):
                finish(in_flight.pop(event.video))
                if watch is not None:
                    watch.returned(state.stream.url)
                continue
            first_chunk = first_chunk if first_chunk is not None else time.monotonic() - start
            share = float(event.mask.mean())
            kept += share * len(event)
            total += len(event)
            ready = state.reorder.push(event.first, event.mask)
            if ready:
                pool.masks(state.segment.index, np.stack(ready))
                state.frames += len(ready)
            frames_pts = np.array(state.pts[event.first : event.first + len(event)], np.int64)
            timeline.add(state.segment.index, (frames_pts - first_pts) * float(time_base), event.mask.mean(axis=(1, 2)))
            progress.chunk(state.segment.index, state.segment.first_frame + event.first, len(event))
            if watch is not None:
                watch.chunk(state.stream.url, len(event))
        seconds = time.monotonic() - start
        timeline.save(parts)
        for kind, name in _playlists(kinds):
            output.write_playlist(parts, manifest.finished_prefix(), finished=True, name=name, kind=kind)
            output.concat(parts, len(plan), out if kind == "segment" else output.matte_path(out), kind)
        timeline.write_beside(out, kept_class)
    done = progress.this_run
    return Summary(
        str(source), str(out) if "segment" in kinds else None,
        str(output.matte_path(out)) if "matte" in kinds else None, progress.done, done, seconds,
        done / seconds if seconds > 0 else 0.0, first_chunk, kept / max(total, 1), len(plan), reencoded,
    )  # fmt: skip


@contextlib.contextmanager
def _reported(watch: "Watch") -> Iterator[None]:
    """The run's end, as the watch should show it: finished, or failed with why."""
    try:
        yield
    except KeyboardInterrupt:
        watch.end("cancelled")
        raise
    except Exception as e:
        watch.end(str(e))
        raise
    else:
        watch.end()


def _next(stream: SegmentationStream, events: queue.Queue, pool: Encoders, idle: bool) -> Event | Written:
    """The next event; when nothing is in flight, only the encoders are awaited (no server idle time applies, but an
    encoder process that died fails the run)."""
    if not idle:
        return stream.next_event()  # all streams share one queue
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            try:
                pool.check()
            except RuntimeError as e:
                raise SegmentError(str(e)) from None


def _playlists(kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    names = {"segment": output.PLAYLIST, "matte": output.MATTE_PLAYLIST}
    return [(kind, names[kind]) for kind in kinds]


def _prepare_parts(parts: Path, manifest: Manifest, resume: bool) -> Manifest:
    """The parts folder for this run: a new one, or with `resume` the earlier run's (which must be the same run)."""
    if resume and (previous := Manifest.load(parts)) is not None:
        if not previous.same_run(manifest):
            raise SegmentError(f"{parts} holds a run of another source or other options: remove it to start anew")
        manifest = previous
    elif parts.exists():
        if Manifest.load(parts) is not None and not resume:
            raise SegmentError(f"{parts} holds an earlier run: add --resume to go on with it, or remove it")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest.save(parts)
    return manifest


@contextlib.contextmanager
def _resumable(manifest: Manifest, parts: Path) -> Iterator[None]:
    """A broken stream (a server gone) ends the run with what is done and how to go on."""
    try:
        yield
    except StreamError as e:
        raise StreamError(f"{e} ({_what_is_done(manifest, parts)})") from None


def _what_is_done(manifest: Manifest, parts: Path) -> str:
    if not manifest.done:
        return "no segment was finished"
    return f"{len(manifest.done)} of {manifest.segments} segments are done in {parts}; run again with --resume to go on"


@contextlib.contextmanager
def _tidied_on_failure(manifest: Manifest, parts: Path) -> Iterator[None]:
    """A run that fails or is cancelled leaves what a resumed run uses: no half-written files, and no parts folder at
    all when no segment was finished."""
    try:
        yield
    except BaseException:
        if manifest.done:
            for partial in parts.glob("*.partial"):
                partial.unlink(missing_ok=True)
        else:
            shutil.rmtree(parts, ignore_errors=True)
        raise


def parts_folder(out: Path) -> Path:
    """Where a run keeps its segments, playlists and manifest: beside the output."""
    return out.with_name(out.name + ".parts")


def request_id(state: InFlight) -> str:
    return f"segment-{state.segment.index}-try-{state.attempts}"
