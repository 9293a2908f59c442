"""The main job: segment one video file, however long, through one or more servers.

1. Plan: cut the file at safe keyframes into segments that decode on their own (`gops`, no re-encoding).
2. Send each segment as one request, at most `window` in flight, spread over the servers' streams; a segment
   that a server rejects is retried, and re-encoded first for a server whose decoder cannot read its codec.
3. As a segment's chunks arrive, put its frames in order and encode them into its own output segment with the
   source's timestamps and audio; when it is complete, record it in the manifest and extend the playlist (the
   run can be watched while it goes: `output`).
4. At the end, remux the segments into one MP4. With `resume`, finished segments are kept and skipped.

Memory stays bounded whatever the length: the client holds the segments in flight and their chunks, the server
the chunks of the segments in flight.
"""

import contextlib
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

from pipelines.probe import probe
from stream_client import gops, output, videos
from stream_client.access import Tls
from stream_client.manifest import Manifest
from stream_client.reorder import Reorderer
from stream_client.stream import Event, Failed, Finished, SegmentationStream, StreamError


class SegmentError(RuntimeError):
    pass


@dataclass
class Summary:
    source: str
    output: str
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
        return (
            f"{self.frames} frames{resumed} in {self.segments} segments; this run: {self.frames_this_run} frames in "
            f"{self.seconds:.1f} s, {self.frames_per_second:.1f} frames/s, first chunk after {first}, "
            f"{100 * self.kept_pixels:.1f} % of pixels kept{note} -> {self.output}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


class Progress:
    """A line per chunk with a bar, frames/s and the time left."""

    def __init__(self, total: int, done: int, out: TextIO, width: int = 24) -> None:
        self.total, self.done, self.out, self.width = total, done, out, width
        self.start = time.monotonic()
        self.this_run = 0

    def chunk(self, segment: int, first: int, count: int) -> None:
        self.done += count
        self.this_run += count
        elapsed = time.monotonic() - self.start
        rate = self.this_run / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        print(
            f"segment {segment:4d} chunk {first:7d}-{first + count - 1:<7d} [{bar}] {self.done}/{self.total} "
            f"{100 * self.done / max(self.total, 1):5.1f}%  {rate:7.1f} frames/s  ETA {eta:7.1f} s",
            file=self.out,
            flush=True,
        )


def source_timestamps(path: Path) -> tuple[Fraction, array]:
    """The time base and pts of every non-empty video packet, in demux order (the order `gops` counts them)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = array("q", (p.pts if p.pts is not None else -1 for p in container.demux(stream) if p.size > 0))
        return stream.time_base, pts


@dataclass
class InFlight:
    """A segment on its way: where it was sent, its frames so far, its output file."""

    segment: gops.Segment
    stream: SegmentationStream
    writer: output.SegmentWriter
    pts: list[int]  # its frames' timestamps in display order
    reorder: Reorderer = field(default_factory=Reorderer)
    originals: Iterator[np.ndarray] | None = None
    attempts: int = 1


def segment_file(
    source: Path,
    out: Path,
    urls: list[str] | str,
    *,
    class_name: str | None = None,
    threshold: float | None = None,
    window: int = 2,
    max_seconds: float | None = 10.0,
    max_bytes: int | None = None,
    resume: bool = False,
    retries: int = 1,
    dump_images: Path | None = None,
    progress_out: TextIO | None = None,
    tls: Tls | None = None,
    headers: dict[str, str] | None = None,
) -> Summary:
    """Segment `source` into `out` (MP4) through the servers at `urls`; the parts folder beside it grows meanwhile.

    `progress_out`: where the per-chunk lines go (default: standard error). `tls` and `headers` (an access key):
    for every server's stream, see `stream_client.access`."""
    source, out = Path(source), Path(out)
    urls = [urls] if isinstance(urls, str) else list(urls)
    progress_out = progress_out or sys.stderr
    try:
        found = probe(source)
    except ValueError as e:
        raise SegmentError(f"{source}: {e}") from None
    plan = gops.plan(source, max_seconds=max_seconds, max_bytes=max_bytes)
    time_base, packet_pts = source_timestamps(source)
    parts = parts_folder(out)
    options = {"class": class_name, "threshold": threshold, "max_seconds": max_seconds, "max_bytes": max_bytes}
    events: queue.Queue[Event] = queue.Queue()
    start = time.monotonic()

    with contextlib.ExitStack() as stack:
        # Connect first: a server that refuses (no access key, a wrong one, TLS that does not match) or is not there
        # leaves no parts folder behind, and no run to resume.
        streams = [
            stack.enter_context(SegmentationStream(url, events=events, tls=tls, headers=headers)) for url in urls
        ]
        infos = {s.url: s.server_info() for s in streams}
        manifest = _prepare_parts(parts, Manifest.new(source, options, plan), resume)
        if dump_images:
            dump_images.mkdir(parents=True, exist_ok=True)

        todo = [p for p in plan if p.index not in manifest.done]
        progress = Progress(found.packets, sum(p.frames for p in plan if p.index in manifest.done), progress_out)
        pending = gops.segments(source, todo)
        in_flight: dict[str, InFlight] = {}
        reencoded = None
        first_chunk = None
        kept = total = 0
        frame_duration = 1 / float(found.rate or 30)
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
            state.stream.send(request_id(state), data, class_name=class_name, threshold=threshold)

        def launch(segment: gops.Segment, attempts: int = 1) -> None:
            stream = min(streams, key=lambda s: sum(f.stream is s for f in in_flight.values()))
            part = plan[segment.index]
            pts = sorted(packet_pts[part.first_packet : part.end_packet])
            size = (found.height, found.width)
            writer = output.SegmentWriter(
                parts / output.segment_name(segment.index), source, size, time_base, found.rate
            )
            originals = videos.frames(segment.data) if dump_images else None
            state = InFlight(segment, stream, writer, pts, originals=originals, attempts=attempts)
            in_flight[request_id(state)] = state
            send(state)

        def finish(state: InFlight) -> None:
            state.reorder.finish()
            index = state.segment.index
            if state.writer.count != state.segment.frames:
                raise SegmentError(f"segment {index}: {state.writer.count} frames came back of {state.segment.frames}")
            # From 0 for the first segment: the muxer would shift the whole file to make a negative pts (an AAC
            # encoder's priming packet) non-negative, and the frames would lose their timestamps.
            audio_from = 0.0 if index == 0 else plan[index].start_pts
            audio_until = plan[index + 1].start_pts if index + 1 < len(plan) else None
            manifest.done[index] = state.writer.close(audio_from, audio_until, frame_duration)
            manifest.save(parts)
            output.write_playlist(parts, manifest.finished_prefix(), finished=False)

        while True:
            while len(in_flight) < window and (segment := next(pending, None)) is not None:
                launch(segment)
            if not in_flight:
                break
            event = streams[0].next_event()  # all streams share one queue
            if isinstance(event, Failed):
                if event.video is None or event.video not in in_flight:
                    raise StreamError(f"the stream failed: {event.message}")
                state = in_flight.pop(event.video)
                if state.attempts > retries:
                    raise SegmentError(
                        f"the server failed on segment {state.segment.index} of {source}: {event.message} "
                        f"({len(manifest.done)} of {len(plan)} segments are done in {parts})"
                    )
                print(f"segment {state.segment.index} failed ({event.message}): trying again", file=progress_out)
                progress.done -= state.writer.count
                progress.this_run -= state.writer.count
                state.writer.abandon()
                launch(state.segment, state.attempts + 1)
                continue
            state = in_flight[event.video]
            if isinstance(event, Finished):
                finish(in_flight.pop(event.video))
                continue
            first_chunk = first_chunk if first_chunk is not None else time.monotonic() - start
            kept += int(event.frames.any(axis=-1).sum())
            total += event.frames.shape[0] * event.frames.shape[1] * event.frames.shape[2]
            for frame in state.reorder.push(event.first, event.frames):
                k = state.writer.count
                if state.originals is not None:
                    n = state.segment.first_frame + k
                    videos.save_image(dump_images / f"original_{n:06d}.png", next(state.originals))
                    videos.save_image(dump_images / f"segmented_{n:06d}.png", frame)
                state.writer.write(frame, state.pts[k])
            progress.chunk(state.segment.index, state.segment.first_frame + event.first, len(event.frames))
    seconds = time.monotonic() - start
    output.write_playlist(parts, manifest.finished_prefix(), finished=True)
    output.concat(parts, len(plan), out)
    done = progress.this_run
    return Summary(
        str(source), str(out), progress.done, done, seconds, done / seconds if seconds > 0 else 0.0, first_chunk,
        kept / max(total, 1), len(plan), reencoded,
    )  # fmt: skip


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
        done = f"{len(manifest.done)} of {manifest.segments} segments are done in {parts}"
        raise StreamError(f"{e} ({done}; run again with --resume to go on)") from None


def parts_folder(out: Path) -> Path:
    """Where a run keeps its segments, playlist and manifest: beside the output."""
    return out.with_name(out.name + ".parts")


def request_id(state: InFlight) -> str:
    return f"segment-{state.segment.index}-try-{state.attempts}"
