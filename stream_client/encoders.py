"""The encoders of a run: worker processes that turn each segment into its output files, in parallel.

A segment's worker decodes the segment's own packets (the client has them: it sent them), keeps the pixels of the
class with the server's mask (`videos.keep_class`), and encodes the frames (H.264, the source's timestamps and audio)
and the mask as a grayscale matte. So only the masks cross the network, 1/60 of the segmented frames' bytes, and only
the masks cross between processes: the workers share no interpreter lock, and the run uses every core.

    with Encoders(processes=8, events=events) as encoders:
        encoders.start(job); encoders.masks(job.key, masks); encoders.finish(job.key, ...)   # -> Written event
"""

import io
import multiprocessing
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream_client import output, protocol, videos
from stream_client.audio import AudioTrack


@dataclass(frozen=True)
class SegmentJob:
    index: int
    data: bytes  # the segment: the source's packets, a Matroska file that decodes on its own
    pts: list[int]  # its frames' timestamps in display order, in the source's time base
    first_frame: int  # its first frame's index in the whole video (image names)
    size: tuple[int, int]  # the source's (H, W), as its first frame has it
    model_size: tuple[int, int]  # the mask's (h, w)
    time_base: Fraction
    rate: Fraction | None
    kinds: tuple[str, ...]  # "segment" (the segmented video), "matte"
    parts: Path
    audio: tuple[AudioTrack, ...]  # the tracks the output carries
    encoding: output.Encoding
    dump_images: Path | None = None
    video: int = 0  # which video of the run: the segments of several share the encoders

    @property
    def key(self) -> tuple[int, int]:
        return self.video, self.index


@dataclass
class Written:
    """Event: a segment's files are complete (`duration` in seconds), or could not be written (`error`). `sizes`:
    where its decoded frames change size, [frame in the whole video, its pts, H, W] from its first frame on."""

    video: int
    index: int
    duration: float | None = None
    error: str | None = None
    sizes: list[list[int]] | None = None


class SegmentOutput:
    """One segment's files, written frame by frame as its masks come."""

    def __init__(self, job: SegmentJob) -> None:
        self.job = job
        self._container = av.open(io.BytesIO(job.data))
        stream = self._container.streams.video[0]
        stream.thread_count = 1  # the segments in flight are the parallelism
        self._frames = self._container.decode(stream)
        self.writers: dict[str, output.VideoWriter] = {}
        if "segment" in job.kinds:
            self.writers["segment"] = output.VideoWriter(
                job.parts / output.segment_name(job.index), protocol.padded_size(*job.size), job.time_base,
                job.rate, job.encoding, audio=job.audio,
            )  # fmt: skip
        if "matte" in job.kinds:
            self.writers["matte"] = output.VideoWriter(
                job.parts / output.segment_name(job.index, "matte"), job.model_size, job.time_base, job.rate,
                job.encoding, display_aspect=Fraction(job.size[1], job.size[0]),
            )  # fmt: skip
        self.count = 0
        self.sizes: list[list[int]] = []

    def add(self, masks: np.ndarray) -> None:
        for mask in masks:
            if self.count >= len(self.job.pts):
                raise RuntimeError(f"more masks than the segment's {len(self.job.pts)} frames")
            pts = self.job.pts[self.count]
            needs_frame = "segment" in self.writers or self.job.dump_images
            frame = next(self._frames, None) if needs_frame else None
            if needs_frame and frame is None:
                raise RuntimeError(f"the segment decodes to {self.count} frames, the server sent more masks")
            picture = videos.keep_class(frame, mask) if needs_frame else None
            if needs_frame and (not self.sizes or self.sizes[-1][2:] != [frame.height, frame.width]):
                self.sizes.append([self.job.first_frame + self.count, pts, frame.height, frame.width])
            if "segment" in self.writers:
                self.writers["segment"].write(picture, pts)
            if "matte" in self.writers:
                self.writers["matte"].write(av.VideoFrame.from_ndarray(mask * np.uint8(255), format="gray"), pts)
            if self.job.dump_images:
                n = self.job.first_frame + self.count
                videos.save_image(self.job.dump_images / f"original_{n:06d}.png", frame.to_ndarray(format="rgb24"))
                rgb = picture.to_ndarray(format="rgb24")[: frame.height, : frame.width]
                videos.save_image(self.job.dump_images / f"segmented_{n:06d}.png", rgb)
            self.count += 1

    def close(self, audio_from: float | None, audio_until: float | None, frame_duration: float) -> float:
        if self.count != len(self.job.pts):
            raise RuntimeError(f"{self.count} frames came back of {len(self.job.pts)}")
        self._container.close()
        durations = [w.close(audio_from, audio_until, frame_duration) for w in self.writers.values()]
        return durations[0]

    def abandon(self) -> None:
        self._container.close()
        for writer in self.writers.values():
            writer.abandon()


def _work(inbox, results) -> None:
    """A worker process: the segments given to it, each message in turn."""
    segments: dict[tuple[int, int], SegmentOutput] = {}
    while (message := inbox.get()) is not None:
        kind, key, *rest = message
        try:
            if kind == "start":
                segments[key] = SegmentOutput(rest[0])
            elif key not in segments:  # it failed already, and said so
                continue
            elif kind == "masks":
                segments[key].add(rest[0])
            elif kind == "finish":
                segment = segments.pop(key)
                results.put((*key, segment.close(*rest), None, segment.sizes))
            elif kind == "abandon":
                segments.pop(key).abandon()
        except Exception as e:  # noqa: BLE001 - reaches the run as a Written event with the error
            failed = segments.pop(key, None)
            if failed is not None:
                failed.abandon()
            results.put((*key, None, f"{type(e).__name__}: {e}"))


class Encoders:
    """`processes` workers; a segment stays with one worker from `start` to `finish` (or `abandon`)."""

    def __init__(self, processes: int, events: queue.Queue) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the client's gRPC threads are running
        self._results = context.Queue()
        self._inboxes = [context.Queue() for _ in range(max(1, processes))]
        self._workers = [context.Process(target=_work, args=(inbox, self._results), daemon=True)
                         for inbox in self._inboxes]  # fmt: skip
        self._events = events
        self._owner: dict[tuple[int, int], int] = {}  # a segment's key -> its worker
        self._stopped = threading.Event()

    def __enter__(self) -> "Encoders":
        for worker in self._workers:
            worker.start()
        threading.Thread(target=self._forward, daemon=True, name="encoders").start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            for inbox in self._inboxes:
                inbox.put(None)
            for worker in self._workers:
                worker.join(timeout=30)
        # A failed run does not wait for its encoders. A worker killed mid-message leaves its inbox's pipe full and
        # this process's feeder thread blocked on it for ever; multiprocessing joins feeders at exit, so not these.
        for worker in self._workers:
            if worker.is_alive():
                worker.kill()
        for inbox in self._inboxes:
            inbox.cancel_join_thread()
        self._stopped.set()

    def check(self) -> None:
        """Raise if a worker process has ended (killed, or out of memory): its segments would never be written."""
        for worker in self._workers:
            if not worker.is_alive():
                raise RuntimeError(f"an encoder process ended (exit code {worker.exitcode}): its segments are lost")

    def _forward(self) -> None:
        # Polled, and nothing is put on the results here: a worker killed while writing holds the queue's lock, and
        # a message cut short by it never ends (this thread then waits, a daemon, and the run exits all the same).
        while not self._stopped.is_set():
            try:
                result = self._results.get(timeout=0.2)
            except queue.Empty:
                continue
            self._events.put(Written(*result))

    @property
    def workers(self) -> int:
        return len(self._inboxes)

    def start(self, job: SegmentJob) -> None:
        load = [0] * len(self._inboxes)
        for worker in self._owner.values():
            load[worker] += 1
        self._owner[job.key] = load.index(min(load))
        self._send("start", job.key, job)

    def masks(self, key: tuple[int, int], masks: np.ndarray) -> None:
        self._send("masks", key, np.ascontiguousarray(masks))

    def finish(self, key: tuple[int, int], audio_from: float | None, audio_until: float | None,
               frame_duration: float) -> None:  # fmt: skip
        self._send("finish", key, audio_from, audio_until, frame_duration)
        del self._owner[key]

    def abandon(self, key: tuple[int, int]) -> None:
        if key in self._owner:
            self._send("abandon", key)
            del self._owner[key]

    def _send(self, kind: str, key: tuple[int, int], *rest) -> None:
        self._inboxes[self._owner[key]].put((kind, key, *rest))
