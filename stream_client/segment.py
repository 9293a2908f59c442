"""The main job: segment videos, however long, and live sources, through one or more servers.

A run is three stages, each a module, that every kind of source feeds alike:
1. where segments come from (`sources`: a file's plan; `live`: a live demuxer cutting GOPs as they arrive): pieces of
   the video that decode on their own, cut at safe keyframes without re-encoding (`gops`);
2. sending (`sending`): at most `window` segments in flight at the servers (and at most `window` and one per encoder
   sent and not yet written), of one video or of several, spread over the servers' streams; a segment that a server
   rejects is sent again (`retries`);
3. writing (`encoders`, `writing`): as a segment's masks come back, its encoder process decodes the segment here,
   keeps the class's pixels and encodes them; once its files are done it is recorded in the manifest and listed in
   the playlists (the run can be watched while it goes); at the end of a video its segments become one MP4.

`job.Job` is one video of a run (its source, its output, what it has done); `Run`, here, moves the events of the
servers, the encoders and the live sources to their jobs; `report` says what they did. `segment_file` runs one video
(its failure is the run's); `segment_videos` runs several on one set of servers, and a video that fails does not stop
the others.

Memory stays bounded whatever the length: the client holds the segments in flight and their chunks (and a live
source's backlog, `live`), the server the chunks of the segments in flight.
"""

import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from stream_client import output
from stream_client.access import Tls
from stream_client.encoders import Encoders, Written
from stream_client.job import RETURNS, Job, SegmentError, Settings
from stream_client.live import LiveSource, is_live
from stream_client.preview import Watch
from stream_client.report import Outcome, RunResult, Summary
from stream_client.sending import Sender
from stream_client.sources import FileSource, Piece
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream, StreamError
from stream_client.writing import parts_folder

__all__ = ["RETURNS", "Outcome", "RunResult", "SegmentError", "Settings", "Summary", "parts_folder", "segment_file",
           "segment_videos"]  # fmt: skip


class _Arrived:
    """Event: a live source has a segment ready, or has ended."""


class Run:
    """The jobs of a run on one set of servers and one pool of encoders, and the loop that moves events to them."""

    def __init__(self, jobs: list[Job], settings: Settings, sender: Sender, pool: Encoders, events: queue.Queue,
                 fail_fast: bool, finished: Callable[[Outcome], None] | None) -> None:  # fmt: skip
        self.jobs, self.settings, self.sender, self.pool, self.events = jobs, settings, sender, pool, events
        self.fail_fast, self.finished = fail_fast, finished
        self.outcomes: dict[int, Outcome] = {}
        self.stopping = False
        self._stop_asked = threading.Event()  # set from a signal handler; the loop stops in its own time
        self.most_videos_in_flight = 0

    def go(self) -> None:
        while True:
            if self._stop_asked.is_set() and not self.stopping:
                self._stop()
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
        """Ctrl-C with a live source: the sources end, and what they gave is finished and written. Safe in a signal
        handler: the loop does it, within a second (no queue's lock is taken here: the handler may have interrupted
        its holder)."""
        self._stop_asked.set()

    def _stop(self) -> None:
        self.stopping = True
        for job in self.jobs:
            if job.state == "waiting":
                self._ended(job, job.stop("cancelled before it started"))
            else:
                job.source.stop()
                if job.state == "running":
                    job.progress.say_about(
                        f"stopping: the segments already received are finished and {job.output.out} is written "
                        "(Ctrl-C again to cancel: it then gets the segments written so far)"
                    )
        self.events.put(_Arrived())

    def _fill(self) -> None:
        """Send segments while the window has room: a live source's first, then the files' in order (the next file
        starts when those before it have sent all theirs, so short clips keep the servers busy).

        The window counts the segments at the servers. Those whose masks are all back and that an encoder is still
        writing do not hold it: else an encoder that finishes a segment waits idle for the next one's first chunk
        while the servers hold fewer than `window` (with as many encoders as the window, as on a 16-core GPU host,
        the CLI lost a third of its frames/s so). They are bounded apart, at one more per encoder, so that memory
        stays bounded."""
        window = self.settings.window
        while len(self.sender.in_flight) < window and (
            len(self.sender.in_flight) + sum(len(j.writing) for j in self.jobs) < window + self.pool.workers
        ):
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
        if isinstance(e, KeyboardInterrupt):  # a live recording cancelled keeps what it has written, playable
            for job in jobs:
                if job.state == "running" and job.source.live:
                    job.keep_written()
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
