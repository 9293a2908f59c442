"""Live sources through the CLI and the session's server: a stream paced in real time into standard input, a UDP
source on loopback, a source faster than the server, and the client's memory over a longer live run.

Each source is made here: PyAV encodes the sample frames (H.264 without B-frames, zero latency, a keyframe a second,
as a camera sends them) into MPEG-TS, each frame when its time comes. Threshold 0 keeps every pixel, so that every
output frame is checked against the frame it came from.
"""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from helpers import as_a_foreground_job

from repo.serve import tree_memory_mib
from stream_client.output import PLAYLIST
from stream_client.sample import sample_frame
from stream_client.segment import parts_folder

RATE, GOP = 10, 10  # 10 frames/s, a keyframe every second
HEIGHT, WIDTH = 48, 64


def write_ts(target: BinaryIO | str, frames: int, *, rate: int = RATE, paced: bool = True,
             stop: threading.Event | None = None, sent: list[int] | None = None) -> None:  # fmt: skip
    """The sample frames 0..frames-1 as H.264 in MPEG-TS into `target` (a pipe, or a URL), each written when its time
    comes (`paced`), until `stop`; `sent` gets the count of frames written."""
    with av.open(target, "w", format="mpegts", container_options={"flush_packets": "1"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0",
                                        "tune": "zerolatency", "preset": "ultrafast"}  # fmt: skip
        start = time.monotonic()
        for i in range(frames):
            if stop is not None and stop.is_set():
                break
            if paced:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
            for packet in stream.encode(av.VideoFrame.from_ndarray(sample_frame(i, HEIGHT, WIDTH), format="rgb24")):
                container.mux(packet)
            if sent is not None:
                sent.append(i)
        for packet in stream.encode():
            container.mux(packet)


class Cli:
    """`segment-video SOURCE --out OUT` on the session's server, its standard error read as it comes."""

    def __init__(self, source: str, out: Path, url: str, *extra: str) -> None:
        self.out, self.summary = out, out.with_name("summary.json")
        command = [sys.executable, "-m", "stream_client", source, "--out", str(out), "--url", url, "--threshold", "0",
                   "--summary-json", str(self.summary), *extra]  # fmt: skip
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0, preexec_fn=as_a_foreground_job)  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())

    def listed(self) -> list[str]:
        """The segments the playlist lists now."""
        playlist = parts_folder(self.out) / PLAYLIST
        text = playlist.read_text() if playlist.exists() else ""
        return [line for line in text.splitlines() if line.endswith(".ts")]

    def wait(self, timeout: float = 180) -> int:
        self.proc.stdout.read()
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the last lines of standard error
        return code

    def report(self) -> dict:
        return json.loads(self.summary.read_text())

    @property
    def err(self) -> str:
        return "\n".join(self.lines)


def decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, RGB frames) of a video."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return np.array([float(f.time) for f in frames]), np.stack([f.to_ndarray(format="rgb24") for f in frames])


def sample_indices(frames: np.ndarray, candidates: int) -> list[int]:
    """For each frame, the sample frame (of 0..candidates-1) it is nearest to (lossy on the way: H.264, MJPEG for the
    CPU decoder, H.264 again)."""
    samples = np.stack([sample_frame(i, HEIGHT, WIDTH) for i in range(candidates)]).astype(np.int16)
    return [int(np.abs(samples - frame.astype(np.int16)).mean(axis=(1, 2, 3)).argmin()) for frame in frames]


def test_a_stream_on_stdin_is_listed_while_it_plays_and_its_mp4_has_every_frame_in_order(server, tmp_path):
    frames = 15 * RATE  # 15 s at 10 frames/s
    run = Cli("-", tmp_path / "live.mp4", server.url)
    first_listed: list[float] = []
    writer = threading.Thread(target=write_ts, args=(run.proc.stdin, frames))
    start = time.monotonic()
    writer.start()
    while writer.is_alive():
        if not first_listed and run.listed():
            first_listed.append(time.monotonic() - start)
        time.sleep(0.05)
    played = time.monotonic() - start
    run.proc.stdin.close()  # the end of the stream
    assert run.wait() == 0, run.err
    assert first_listed, run.err
    print(f"first segment listed {first_listed[0]:.1f} s after the stream started, which played for {played:.1f} s")
    assert first_listed[0] < played - 5, "the first segment was listed only at the end"

    times, pictures = decoded(run.out)
    assert len(times) == frames
    assert np.allclose(np.diff(times), 1 / RATE, atol=1e-3)  # in order, the source's timing
    assert sample_indices(pictures, frames) == list(range(frames))
    report = run.report()
    assert report["live"] and report["frames"] == frames and report["dropped_frames"] == 0
    latency = report["latency_seconds"]
    assert latency["frames"] == frames and 0 < latency["min"] <= latency["median"] <= latency["max"] < 30
    print(f"latency, frame entering the client to its segment listed: {latency}")
    assert "behind live" in run.err and "listed segment 0" in run.err


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_udp_source_ends_on_sigint_with_what_was_received_and_its_playlist_keeps_a_window(server, tmp_path):
    port = free_udp_port()
    run = Cli(f"udp://127.0.0.1:{port}", tmp_path / "udp.mp4", server.url, "--live-window", "3")
    stop, sent = threading.Event(), []
    sender = threading.Thread(target=write_ts, args=(f"udp://127.0.0.1:{port}?pkt_size=1316", 600),
                              kwargs={"stop": stop, "sent": sent})  # fmt: skip
    sender.start()  # the client may join after the first packets: it starts at the first keyframe it gets
    deadline = time.monotonic() + 90
    while len(run.listed()) < 3 or "#EXT-X-MEDIA-SEQUENCE:0" in (parts_folder(run.out) / PLAYLIST).read_text():
        assert time.monotonic() < deadline and run.proc.poll() is None, run.err
        time.sleep(0.1)
    listed = run.listed()
    assert len(listed) == 3  # the window: the last three
    run.proc.send_signal(signal.SIGINT)  # while the source still sends
    time.sleep(1.0)
    stop.set()
    sender.join()
    assert run.wait() == 0, run.err

    times, pictures = decoded(run.out)
    indices = sample_indices(pictures, len(sent))
    first = indices[0]
    assert first % GOP == 0  # from a keyframe
    # Joined after the source started: the MP4 starts at its first frame (no empty edit of the source's clock before
    # it), and the summary keeps that clock.
    assert abs(times[0]) < 1e-3 and run.report()["source_start_seconds"] >= first / RATE
    assert indices == list(range(first, first + len(indices)))  # every frame received, in order
    assert indices[-1] >= int(listed[-1][len("segment_") : -len(".ts")]) * GOP  # nothing listed is lost
    playlist = (parts_folder(run.out) / PLAYLIST).read_text()
    assert playlist.count(".ts") == 3 and playlist.rstrip().endswith("#EXT-X-ENDLIST")
    print(f"UDP: {len(sent)} frames sent, {len(indices)} in the MP4 (frames {first}-{indices[-1]})")


def test_a_source_that_never_sends_fails_in_one_line_after_the_timeout_with_nothing_left_behind(server, tmp_path):
    port = free_udp_port()
    run = Cli(f"udp://127.0.0.1:{port}", tmp_path / "silent.mp4", server.url, "--live-timeout", "2")
    assert run.wait() == 1, run.err
    assert run.lines == [f"segment-video: error: udp://127.0.0.1:{port}: nothing came from it within 2 s "
                         "(--live-timeout)"], run.err  # fmt: skip
    assert not parts_folder(run.out).exists() and not run.out.exists()


def test_a_source_faster_than_the_server_drops_whole_segments_and_says_how_far_behind(server, tmp_path):
    frames = 300  # written at once: 30 s of video in well under a second
    run = Cli("-", tmp_path / "fast.mp4", server.url, "--live-backlog", "2", "--window", "1")
    write_ts(run.proc.stdin, frames, paced=False)
    run.proc.stdin.close()
    assert run.wait() == 0, run.err
    report = run.report()
    _, pictures = decoded(run.out)
    assert report["dropped_frames"] > 0 and report["frames"] == len(pictures)
    assert report["frames"] + report["dropped_frames"] == frames
    indices = sample_indices(pictures, frames)
    # Whole segments (GOPs), in order, with gaps where segments were dropped.
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    starts = [i for k, i in enumerate(indices) if k == 0 or indices[k - 1] != i - 1]
    assert all(i % GOP == 0 for i in starts) and len(indices) % GOP == 0
    behind = [float(line.split(" s behind live")[0].split()[-1]) for line in run.lines if "behind live" in line]
    assert max(behind) > 2, behind  # it said how far behind it was
    assert "dropped segments" in run.err


def test_ctrl_c_says_what_it_does_and_a_second_one_keeps_a_playable_mp4_of_what_was_written(server, tmp_path):
    """As people press it: once, the run says it is finishing what arrived and that another Ctrl-C cancels; again
    while it finishes (30 s of video arrived at once, and the server is slower), the MP4 still gets every segment
    written so far, in order, and the run says where."""
    frames = 300
    run = Cli("-", tmp_path / "live.mp4", server.url, "--window", "1")
    write_ts(run.proc.stdin, frames, paced=False)
    deadline = time.monotonic() + 120
    while len(run.listed()) < 2:
        assert time.monotonic() < deadline and run.proc.poll() is None, run.err
        time.sleep(0.1)
    run.proc.send_signal(signal.SIGINT)
    while "Ctrl-C again to cancel" not in run.err:
        assert time.monotonic() < deadline + 5 and run.proc.poll() is None, run.err
        time.sleep(0.05)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 130, run.err
    assert f"cancelled: {run.out} has the " in run.err, run.err
    _, pictures = decoded(run.out)
    indices = sample_indices(pictures, frames)
    assert len(indices) >= 2 * GOP and len(indices) % GOP == 0 and len(indices) < frames
    assert indices == list(range(len(indices)))  # whole segments from the first, in order


def test_memory_stays_flat_while_a_live_source_runs_and_sigterm_ends_it_with_every_frame(server, tmp_path):
    seconds, rate = 60, 5
    run = Cli("-", tmp_path / "long.mp4", server.url, "--segment-seconds", "1")
    writer = threading.Thread(target=write_ts, args=(run.proc.stdin, seconds * rate), kwargs={"rate": rate})
    start = time.monotonic()
    writer.start()
    samples: list[tuple[float, float]] = []  # (seconds, MiB of the client's processes: it and its encoders)
    while writer.is_alive():
        samples.append((time.monotonic() - start, tree_memory_mib(run.proc.pid)["rss"]))
        time.sleep(1.0)
    run.proc.send_signal(signal.SIGTERM)  # its standard input still open: the source ends on the signal
    assert run.wait() == 0, run.err
    run.proc.stdin.close()
    assert run.report()["frames"] == seconds * rate  # every frame received, the GOP in hand at the signal too
    early = [mib for t, mib in samples if 15 <= t < 25]
    late = [mib for t, mib in samples if t >= seconds - 10]
    print(f"client RSS over a {seconds} s live run: {np.mean(early):.1f} MiB at 15-25 s, {np.mean(late):.1f} MiB in "
          f"the last 10 s (peak {max(m for _, m in samples):.1f})")  # fmt: skip
    assert np.mean(late) - np.mean(early) < 8, samples
