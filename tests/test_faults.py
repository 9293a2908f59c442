"""Faults that clients cause, against the session's server on loopback: a client killed mid-video, a stream closed
with cancellation, a client that reads slowly, eight clients at once.

Every wait has a deadline, and each test is stopped by an alarm after `TEST_LIMIT_S` (no pytest-timeout here).
"""

import io
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CPU_VIDEO, SETTINGS
from helpers import collect
from reference import segmented as reference
from test_end_to_end import assert_matches, in_order, metric
from test_long_video import assert_frame_exact, make_av

from pipelines.mask import class_index
from repo import models
from repo.serve import memory_by_process
from stream_client import protocol
from stream_client.segment import segment_file
from stream_client.stream import Chunk, SegmentationStream

TEST_LIMIT_S = 420  # the slowest test takes ~1-2 minutes on the 2-core machine when it is not shared

FAILED = f'nv_inference_request_failure{{model="{protocol.ENTRY}"'  # every reason: a client gone, a bad video
DONE = f'nv_inference_request_success{{model="{protocol.ENTRY}"'
CHUNKS = "segment_video_chunks_total"  # through the segmenter
SEGMENTER_FRAMES = "segment_video_frames_total"

# The doomed video: MJPEG 64x48, ~5 s alone on the idle 2-core machine (a minute and more when it is shared).
LONG_FRAMES = 200
# The video sent after the fault: two chunks, checked against the in-process reference.
SHORT_FRAMES = 2 * SETTINGS.frames_per_chunk
PLANT, PLANT_THRESHOLD = "pottedplant", 0.2  # random weights: this class and threshold keep some pixels


class TimeLimitExceeded(Exception):
    pass


@pytest.fixture(autouse=True)
def time_limit():
    """Ends a test that runs past TEST_LIMIT_S with an exception in the main thread (SIGALRM)."""

    def expire(signum, frame):
        raise TimeLimitExceeded(f"the test ran past {TEST_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    """Poll `condition` until it returns something true; its value, or a failure naming `what`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)
    return value


# ---------------------------------------------------------------- a. a client that goes away mid-video
@pytest.fixture(scope="module")
def long_video(video) -> bytes:
    return video(LONG_FRAMES, **CPU_VIDEO)


@pytest.fixture(scope="module")
def long_video_seconds(server, long_video) -> float:
    """How long the doomed video takes uninterrupted, on this machine now (what a kept video would cost)."""
    start = time.monotonic()
    with SegmentationStream(server.url, idle_timeout=120) as stream:
        stream.send("whole", long_video)
        chunks = collect(stream, {"whole"})["whole"]
    assert not isinstance(chunks, str), chunks
    assert sum(len(c) for c in chunks) == LONG_FRAMES
    seconds = time.monotonic() - start
    print(f"the doomed video alone: {LONG_FRAMES} frames in {seconds:.1f} s")
    return seconds


CHILD = """
import sys, time
from stream_client.stream import SegmentationStream
url, path = sys.argv[1:3]
with SegmentationStream(url, idle_timeout=120) as stream:
    stream.send("doomed", open(path, "rb").read())
    print(type(stream.next_event()).__name__, flush=True)
    time.sleep(600)
"""


def readline_within(proc: subprocess.Popen, seconds: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(seconds), f"no line from the client in {seconds:.0f} s"
    return proc.stdout.readline().strip()


def killed_after_first_chunk(server, data: bytes, tmp_path: Path) -> None:
    """A client process that sends the video, gets its first chunk and is SIGKILLed: its TCP connection just ends."""
    path = tmp_path / "doomed.mkv"
    path.write_bytes(data)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert readline_within(proc, 120) == "Chunk"
    finally:
        proc.kill()
        proc.wait(timeout=30)


class Abandon(Exception):
    pass


def cancelled_after_first_chunk(server, data: bytes, tmp_path: Path) -> None:
    """A stream left by an exception after its first chunk: SegmentationStream closes it with cancellation."""
    with pytest.raises(Abandon), SegmentationStream(server.url, idle_timeout=120) as stream:
        stream.send("doomed", data)
        assert isinstance(stream.next_event(), Chunk)
        raise Abandon


@pytest.mark.parametrize("leave", [killed_after_first_chunk, cancelled_after_first_chunk], ids=["killed", "cancelled"])
def test_a_client_that_goes_away_mid_video_fails_its_video_and_the_server_goes_on(
    server, video, long_video, long_video_seconds, tmp_path, leave
):
    failed = metric(server, FAILED)
    segmented = metric(server, SEGMENTER_FRAMES)
    leave(server, long_video, tmp_path)
    gone = time.monotonic()

    # The video counts as failed at once: the server drops what it would have sent.
    wait_for(lambda: metric(server, FAILED) >= failed + 1, 30, "the failure to be counted")
    noticed = time.monotonic() - gone

    # Another client, right after: its video comes back whole and equal to the reference. It may wait for the rest
    # of the departed client's request: Triton 2.51 does not pass a cancelled request on to an ensemble's steps, so
    # what was decoded is segmented (at most one request: the client's segments are a few seconds each).
    short = video(SHORT_FRAMES, **CPU_VIDEO)
    with SegmentationStream(server.url, idle_timeout=120) as stream:
        stream.send("after", short, class_name=PLANT, threshold=PLANT_THRESHOLD)
        chunks = collect(stream, {"after"})["after"]
    after_seconds = time.monotonic() - gone
    assert not isinstance(chunks, str), chunks
    assert_matches(in_order(chunks), reference(short, SETTINGS, class_index(PLANT), PLANT_THRESHOLD)[0])
    assert after_seconds < 2 * long_video_seconds + 30, (after_seconds, long_video_seconds)

    # The work the departed video left is bounded by the video, and then it stops.
    def still() -> float | None:
        before = metric(server, SEGMENTER_FRAMES)
        time.sleep(3)
        return before if metric(server, SEGMENTER_FRAMES) == before else None

    through_model = wait_for(still, 60, "the model to stop") - segmented
    assert through_model <= LONG_FRAMES + SHORT_FRAMES, through_model
    print(
        f"{leave.__name__}: counted as failed {noticed:.1f} s after the client went; "
        f"{through_model - SHORT_FRAMES:.0f} of its {LONG_FRAMES} frames went through the model; the next video "
        f"({SHORT_FRAMES} frames) took {after_seconds:.1f} s (the departed one alone: {long_video_seconds:.1f} s)"
    )


# ---------------------------------------------------------------- b. a client that reads slowly
# Full frames at 1080p: a chunk of 8 frames is a 47 MiB response, above glibc's largest mmap threshold (32 MiB), so
# tritonserver allocates each response's message as its own mapping: its heap follows what it holds.
SLOW_WIDTH, SLOW_HEIGHT = 1920, 1080
FRAME_MIB = SLOW_WIDTH * SLOW_HEIGHT * 3 / 2**20  # 5.9 MiB
CHUNK_MIB = SETTINGS.frames_per_chunk * FRAME_MIB  # 47 MiB
SLOW_FRAMES = 2 * SETTINGS.frames_per_chunk  # per segment: 16 frames, 95 MiB of frames
SLOW_WINDOW = 2  # segments in flight, as many as the server decodes at once (decoder_instances)
SLOW_ROUNDS = 6  # measured, after rounds that warm the server up (shared-memory regions, gRPC buffers)
SLOW_WARMUP = 4
# The bound. The server does not wait for a slow client: the ensemble sends each chunk as soon as it is masked,
# and Triton's gRPC frontend queues responses without limit. So what one client can leave on the server is every
# frame of its segments in flight, in NV12 (half an RGB frame):
#   QUEUED = WINDOW x FRAMES x NV12 frame bytes = 2 x 16 x 3.0 MiB = 95 MiB,
# in tritonserver's heap (the gRPC frontend's messages; HTTP/2 passes ~4 of them on to the stalled client's
# transport). On top, what does not depend on the client's pace: the decoder runs ahead by up to a whole request, its
# frames waiting in tritonserver for the masker (RUN_AHEAD = 2 x 16 x 5.9 MiB); and the Python backend's
# shared-memory regions grow to a high-water mark and never shrink (one warm-up round does not always reach it).
# They hold the chunks passing through the stubs: the decoder's (one chunk per video being sent) and the masker's
# (a batch of chunks in, as many out in NV12), counted twice in tree RSS (the stub and tritonserver both map them):
#   IN_PROCESS = 2 x (2 videos x 47 MiB + 4 chunks x (47 + 24) MiB) = 756 MiB,
# and 256 MiB of margin for allocators and the other models.
QUEUED_MIB = SLOW_WINDOW * SLOW_FRAMES * FRAME_MIB / 2
RUN_AHEAD_MIB = SLOW_WINDOW * SLOW_FRAMES * FRAME_MIB
IN_PROCESS_MIB = 2 * (SLOW_WINDOW * CHUNK_MIB + SETTINGS.chunks_per_batch * 1.5 * CHUNK_MIB)
BOUND_MIB = QUEUED_MIB + RUN_AHEAD_MIB + IN_PROCESS_MIB + 256
# Not growing: over the measured rounds, the heaps (where queued responses wait) at the last round's peak may exceed the
# first's by less than 3 rounds' queues: a leak of the queued responses would add at least 5 of them (one a round),
# the allocators' high-water marks move by up to ~150 MiB (seen with 1080p batches on the 2-core machine).
GROWTH_MIB = 3 * QUEUED_MIB
# The DALI models' processes are measured apart: a pipeline keeps buffers for each batch size it has run, so their
# resting memory creeps up with the mix of batch sizes Triton forms, whoever the client. The masker's pipeline alone,
# without Triton, fed seeded random batches of 1 to 4 chunks of 1080p frames, rested at 3.0 GiB of heap after 10
# batches, 4.0 after 40 and 4.5 after 80 (2-core machine, 2026-12-01). Their part of a round is what they hold above
# where they rested before it; the rest of the tree (tritonserver, where responses queue, and the other stubs) is
# measured from where it rested after the warm-up, and must not creep.
DALI_MODELS = {models.DECODER, models.INPUT_DECODER, models.MASKER, models.CLASS_MASKER}


class StalledStream(SegmentationStream):
    """Reads nothing until `go` is set: its gRPC reader thread waits in the callback, so the transport stops taking
    messages once HTTP/2's flow-control window is full, and the rest waits on the server."""

    def __init__(self, url: str) -> None:
        super().__init__(url, idle_timeout=120)
        self.go = threading.Event()

    def _on_response(self, response) -> None:
        self.go.wait(timeout=TEST_LIMIT_S)
        super()._on_response(response)


def no_memory() -> dict[str, dict[str, float]]:
    return {part: {"rss": 0.0, "anon": 0.0} for part in ("dali", "server")}


def memory_parts(pid: int) -> dict[str, dict[str, float]]:
    """The server tree's memory in MiB (`rss`, `anon`) in two parts: `dali`, the DALI models' processes; `server`, the
    rest."""
    parts = no_memory()
    for name, memory in memory_by_process(pid).items():
        part = parts["dali" if name in DALI_MODELS else "server"]
        for key in part:
            part[key] += memory[key]
    return parts


class MemoryPeak:
    """The server tree's memory parts, sampled in the background; `take()` gives the peaks since the last take."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, no_memory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = memory_parts(self.pid)
        self.peak = {part: {k: max(v, now[part][k]) for k, v in peak.items()} for part, peak in self.peak.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.25)

    def take(self) -> dict[str, dict[str, float]]:
        self._sample()
        peak, self.peak = self.peak, no_memory()
        return peak

    def __enter__(self) -> "MemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def settled(server, done_target: float, quiet_s: float = 5.0, timeout: float = 180.0) -> str:
    """Wait until the server has finished the round's videos, or has sent nothing for `quiet_s` (it waits for the
    client): which of the two."""
    last, since = metric(server, CHUNKS), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(server, DONE) >= done_target:
            return "finished"
        now = metric(server, CHUNKS)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return "waiting"
        time.sleep(0.2)
    raise AssertionError(f"the server neither finished nor stopped in {timeout:.0f} s")


def test_a_client_that_reads_slowly_costs_the_server_a_bounded_memory(server, video):
    """Rounds: the client sends WINDOW segments and reads nothing until the server has finished them (or stopped),
    then reads everything. The server's memory at its peak stays under the bound and does not grow round by round."""
    data = video(SLOW_FRAMES, width=SLOW_WIDTH, height=SLOW_HEIGHT, **CPU_VIDEO)
    rounds = []
    with StalledStream(server.url) as stream, MemoryPeak(server.proc.pid) as peak:
        for n in range(SLOW_WARMUP + SLOW_ROUNDS):
            # The warm-up sends twice as many: the masker forms its largest batches, its buffers their largest sizes.
            count = 2 * SLOW_WINDOW if n < SLOW_WARMUP else SLOW_WINDOW
            names = {f"r{n}-{k}" for k in range(count)}
            stream.go.clear()
            chunks, done, start = metric(server, CHUNKS), metric(server, DONE), time.monotonic()
            peak.take()
            for name in sorted(names):
                stream.send(name, data)
            state = settled(server, done + count)
            unread = metric(server, CHUNKS) - chunks  # sent by the server while the client read nothing
            stream.go.set()
            results = collect(stream, names)
            for name, got in results.items():
                assert not isinstance(got, str), got
                assert sum(len(c) for c in got) == SLOW_FRAMES, name
            top, after = peak.take(), memory_parts(server.proc.pid)
            rounds.append({"server": state, "unread chunks": unread, "s": time.monotonic() - start,
                           "peak": top, "after": after})  # fmt: skip
    for n, r in enumerate(rounds):
        print(f"round {n}: server {r['server']}, unread chunks {r['unread chunks']:.0f}, {r['s']:.0f} s; MiB: "
              + ", ".join(f"{part} peak RSS {r['peak'][part]['rss']:.0f} anon {r['peak'][part]['anon']:.0f} "
                          f"RSS after {r['after'][part]['rss']:.0f}" for part in ("server", "dali")))  # fmt: skip
    baseline, measured = rounds[SLOW_WARMUP - 1]["after"]["server"]["rss"], rounds[SLOW_WARMUP:]
    print(f"queued per round {QUEUED_MIB:.0f} MiB; the server part's RSS after the warm-up {baseline:.0f} MiB, "
          f"bound +{BOUND_MIB:.0f}")  # fmt: skip
    for before, r in zip(rounds[SLOW_WARMUP - 1 : -1], measured, strict=True):
        held = r["peak"]["server"]["rss"] - baseline + r["peak"]["dali"]["rss"] - before["after"]["dali"]["rss"]
        assert held < BOUND_MIB, (held, r)
    growth = measured[-1]["peak"]["server"]["anon"] - measured[0]["peak"]["server"]["anon"]
    assert growth < GROWTH_MIB, (growth, measured)


# ---------------------------------------------------------------- c. many clients at once
# (width, height, frames) per client: each client's video has its own size and length, so a segment that reached
# the wrong client would not even fit its output. Keyframes every 10 frames: 3 or 4 segments each. No last segment of
# 2 or 3 frames: PyAV cannot open so short an MPEG-TS segment of these sizes (see the report, .notes/faults.md).
CLIENTS = [(64, 48, 30), (48, 32, 34), (64, 32, 35), (32, 48, 36),
           (80, 48, 37), (48, 48, 38), (64, 64, 39), (96, 48, 40)]  # fmt: skip


def test_eight_clients_at_once_each_get_their_own_video_frame_exact(server, tmp_path):
    sources = [
        make_av(tmp_path / f"in{k}.mp4", frames, audio=False, width=w, height=h)
        for k, (w, h, frames) in enumerate(CLIENTS)
    ]

    def run(k: int):
        # Keyframes every 10 frames (0.4 s): segments of at most 0.3 s are one GOP each, 3 or 4 per video.
        return segment_file(sources[k], tmp_path / f"out{k}.mp4", server.url, threshold=0.0, window=2,
                            max_seconds=0.3, progress_out=io.StringIO())  # fmt: skip

    start = time.monotonic()
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = [pool.submit(run, k) for k in range(len(sources))]
        summaries = [f.result(timeout=TEST_LIMIT_S - 60) for f in futures]
    seconds = time.monotonic() - start
    for k, summary in enumerate(summaries):
        assert summary.segments >= 3, summary
        assert summary.frames == CLIENTS[k][2], summary
        assert_frame_exact(sources[k], tmp_path / f"out{k}.mp4")
    frames = sum(s.frames for s in summaries)
    print(f"{len(sources)} clients: {frames} frames in {sum(s.segments for s in summaries)} segments, {seconds:.1f} s")


# ---------------------------------------------------------------- d. a decoder that stops making progress
def test_a_decoder_that_makes_no_progress_fails_its_video_and_the_server_goes_on(tmp_path, video):
    """The runner's watchdog: here its deadline (0.3 s) is shorter than decoding a chunk of 4K frames on this machine,
    so such a video counts as stuck: it fails with an error naming the stall (never a silent wait), its pipeline is
    replaced, and a small video decodes as usual after it."""
    from dataclasses import replace

    from repo.build import build
    from repo.models import server_args
    from repo.serve import TritonServer

    settings = replace(SETTINGS, decoder_stall_seconds=0.3, video_memory_bytes=0)  # a 4K video it takes whole
    with TritonServer(build(settings, tmp_path / "repo"), args=server_args(settings)) as server:
        with SegmentationStream(server.url, idle_timeout=120) as stream:
            stream.send("stuck", video(16, width=3840, height=2160, **CPU_VIDEO))
            result = collect(stream, {"stuck"})["stuck"]
            assert isinstance(result, str) and "no progress for" in result, result
            stream.send("after", video(2, width=16, height=16, **CPU_VIDEO))
            after = collect(stream, {"after"})["after"]
    assert not isinstance(after, str), after
    assert sum(len(c) for c in after) == 2
