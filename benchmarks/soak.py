"""Soak: N streams send segments without pause for D minutes through one server; frames, errors and memory over time.

    python benchmarks/soak.py                                  # 8 streams, 10 minutes
    python benchmarks/soak.py --streams 8 --minutes 2 --out out/soak

Starts the project's server (`repo.build` + `repo.serve`, CPU, model input 32x32, seeded random weights, as
`benchmarks/record.py --cpu`), makes a clip of 64x48 MJPEG (what the CPU decoder reads, so nothing is re-encoded) and
cuts it into GOP segments (`stream_client.gops`; every MJPEG frame is a keyframe). Each stream is a thread with its
own gRPC stream that keeps `--window` segments in flight, looping over the clip's segments (each stream from its
own offset), and checks that every segment comes back with all its frames. After `--warmup-seconds`, the server's
tree RSS (tritonserver and its Python-backend stubs) and this process's RSS (the client; it holds torch and DALI,
imported by the server's modules) are sampled at the start, every `--sample-seconds` and at the end. Prints a table and
writes soak.json into --out.
"""

import argparse
import json
import os
import queue
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from measure import Peaks, make_clip

from repo.build import build
from repo.models import Settings, server_args
from repo.serve import TritonServer, tree_memory_mib
from stream_client import gops
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream, StreamError

WIDTH, HEIGHT, RATE = 64, 48, 10


def client_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Counts:
    frames: int = 0
    segments: int = 0
    errors: int = 0  # segments that failed or came back short, and broken streams
    error_messages: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from send to the final response, per segment


class Client(threading.Thread):
    """One stream: keeps `window` segments in flight until told to stop, then lets the last ones finish."""

    def __init__(self, index: int, url: str, segments: list[gops.Segment], window: int, returns: str) -> None:
        super().__init__(name=f"stream-{index}", daemon=True)
        self.index, self.url, self.segments, self.window, self.returns = index, url, segments, window, returns
        self.counts = Counts()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._sent = 0

    def snapshot(self) -> Counts:
        with self.lock:
            c = self.counts
            return Counts(c.frames, c.segments, c.errors, list(c.error_messages), list(c.latencies))

    def _error(self, message: str) -> None:
        with self.lock:
            self.counts.errors += 1
            if len(self.counts.error_messages) < 20:
                self.counts.error_messages.append(f"{time.strftime('%H:%M:%S')} {message}")

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._stream()
            except StreamError as e:
                self._error(f"stream {self.index}: {e}")
                time.sleep(2)  # then a new stream

    def _stream(self) -> None:
        events: queue.Queue = queue.Queue()
        in_flight: dict[str, tuple[gops.Segment, float, int]] = {}  # id -> (segment, sent at, frames so far)
        with SegmentationStream(self.url, events=events, idle_timeout=120) as stream:
            while True:
                while not self.stopping.is_set() and len(in_flight) < self.window:
                    segment = self.segments[(self.index * 7 + self._sent) % len(self.segments)]
                    name = f"s{self.index}-{self._sent}"
                    self._sent += 1
                    in_flight[name] = (segment, time.monotonic(), 0)
                    stream.send(name, segment.data, returns=self.returns)
                if not in_flight:
                    return
                event = stream.next_event()
                if isinstance(event, Failed):
                    if event.video is None:
                        raise StreamError(event.message)
                    in_flight.pop(event.video, None)
                    self._error(f"{event.video}: {event.message}")
                elif isinstance(event, Chunk):
                    segment, sent, frames = in_flight[event.video]
                    in_flight[event.video] = (segment, sent, frames + len(event))
                    with self.lock:
                        self.counts.frames += len(event)
                elif isinstance(event, Finished):
                    segment, sent, frames = in_flight.pop(event.video)
                    if frames != segment.frames:
                        self._error(f"{event.video}: {frames} frames came back of {segment.frames}")
                        continue
                    with self.lock:
                        self.counts.segments += 1
                        self.counts.latencies.append(time.monotonic() - sent)


def total(clients: list[Client]) -> Counts:
    out = Counts()
    for c in clients:
        s = c.snapshot()
        out.frames += s.frames
        out.segments += s.segments
        out.errors += s.errors
        out.error_messages += s.error_messages
        out.latencies += s.latencies
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0, help="measured, after the warm-up")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", "out/soak")), help="folder for soak.json"
    )
    parser.add_argument("--warmup-seconds", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=None, help="default: a tenth of the run, >= 10 s")
    parser.add_argument("--window", type=int, default=2, help="segments in flight per stream")
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--clip-seconds", type=int, default=60, help="the clip the streams loop over")
    parser.add_argument("--returns", default="segmented", choices=["segmented", "mask", "both"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = 60 * args.minutes
    every = args.sample_seconds or max(10.0, seconds / 10)
    work = Path(tempfile.mkdtemp(prefix="segment-soak-"))

    clip = make_clip(work / "clip.mkv", args.clip_seconds * RATE, WIDTH, HEIGHT, RATE, codec="mjpeg")
    plan = gops.plan(clip, max_seconds=args.segment_seconds)
    segments = list(gops.segments(clip, plan))
    settings = Settings(
        model_size=(32, 32), frames_per_chunk=16, max_batch=64, decoder_instances=2, segmenter_instances=2,
        masker_instances=2, random_weights_seed=0,
    )  # fmt: skip
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "options": vars(args) | {"out": str(args.out)},
        "settings": asdict(settings),
        "input": {"width": WIDTH, "height": HEIGHT, "rate": RATE, "codec": "mjpeg", "segments": len(segments),
                  "frames_per_segment": [s.frames for s in segments[:3]]},
    }  # fmt: skip
    print(f"{args.streams} streams, {args.minutes:g} min after {args.warmup_seconds:g} s warm-up; "
          f"{len(segments)} segments of {segments[0].frames} frames of {WIDTH}x{HEIGHT}", flush=True)  # fmt: skip

    repository = build(settings, work / "repo")
    with TritonServer(repository, args=server_args(settings)) as server:
        pid = server.proc.pid
        report["server_rss_idle_mib"] = tree_memory_mib(pid)["rss"]
        clients = [Client(i, server.url, segments, args.window, args.returns) for i in range(args.streams)]
        for c in clients:
            c.start()
        time.sleep(args.warmup_seconds)
        samples = []
        counted_before = total(clients)
        latencies_before = [len(c.snapshot().latencies) for c in clients]

        def sample(elapsed: float) -> dict:
            t = total(clients)
            previous = samples[-1] if samples else None
            span = elapsed - previous["elapsed_s"] if previous else 0.0
            frames = t.frames - counted_before.frames
            row = {
                "elapsed_s": round(elapsed, 1),
                "frames": frames,
                "segments": t.segments - counted_before.segments,
                "errors": t.errors - counted_before.errors,
                "frames_per_s": round((frames - previous["frames"]) / span, 1) if previous and span > 0 else None,
                "server_rss_mib": round(tree_memory_mib(pid)["rss"], 1),
                "client_rss_mib": round(client_rss_mib(), 1),
            }
            samples.append(row)
            print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            return row

        with Peaks(pid, gpu=False, every=1.0) as peaks:
            start = time.monotonic()
            sample(0.0)
            while (elapsed := time.monotonic() - start) < seconds:
                time.sleep(min(every, seconds - elapsed))
                sample(time.monotonic() - start)
            measured = time.monotonic() - start
            for c in clients:
                c.stopping.set()
            for c in clients:
                c.join(timeout=180)
        stuck = [c.name for c in clients if c.is_alive()]
        report["server_rss_after_drain_mib"] = round(tree_memory_mib(pid)["rss"], 1)

    end = total(clients)
    measured_latencies = [x for c, n in zip(clients, latencies_before, strict=True) for x in c.snapshot().latencies[n:]]
    first, last = samples[0], samples[-1]
    report |= {
        "samples": samples,
        "measured_seconds": round(measured, 1),
        "frames": last["frames"],
        "frames_per_second": round(last["frames"] / measured, 2),
        "segments": last["segments"],
        "errors": last["errors"],
        "errors_total_with_warmup": end.errors,
        "error_messages": end.error_messages,
        "streams_not_finished": stuck,
        "server_rss_start_mib": first["server_rss_mib"],
        "server_rss_end_mib": last["server_rss_mib"],
        "server_rss_growth_mib": round(last["server_rss_mib"] - first["server_rss_mib"], 1),
        "server_rss_peak_mib": round(peaks.rss_mib, 1),
        "client_rss_start_mib": first["client_rss_mib"],
        "client_rss_end_mib": last["client_rss_mib"],
        "client_rss_growth_mib": round(last["client_rss_mib"] - first["client_rss_mib"], 1),
        "segment_latency_s": {
            "p50": percentile(measured_latencies, 0.5),
            "p95": percentile(measured_latencies, 0.95),
            "max": max(measured_latencies, default=None),
            "mean": statistics.fmean(measured_latencies) if measured_latencies else None,
        },
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(r: dict) -> None:
    print(f"\nsoak, {r['date']}: {r['options']['streams']} streams, {r['measured_seconds']:.0f} s measured")
    print("elapsed s | frames | frames/s | segments | errors | server RSS MiB | client RSS MiB")
    for s in r["samples"]:
        rate = "" if s["frames_per_s"] is None else f"{s['frames_per_s']:.1f}"
        print(f"{s['elapsed_s']:.0f} | {s['frames']} | {rate} | {s['segments']} | {s['errors']} | "
              f"{s['server_rss_mib']:.0f} | {s['client_rss_mib']:.0f}")  # fmt: skip
    latency = r["segment_latency_s"]
    print(
        f"frames/s {r['frames_per_second']:.1f}; errors {r['errors']}; server RSS {r['server_rss_start_mib']:.0f} -> "
        f"{r['server_rss_end_mib']:.0f} MiB ({r['server_rss_growth_mib']:+.0f}), peak {r['server_rss_peak_mib']:.0f}; "
        f"client RSS {r['client_rss_start_mib']:.0f} -> {r['client_rss_end_mib']:.0f} MiB "
        f"({r['client_rss_growth_mib']:+.0f}); segment latency p50/p95/max "
        + "/".join("-" if latency[k] is None else f"{latency[k]:.2f}" for k in ("p50", "p95", "max"))
        + " s"
    )
    for message in r["error_messages"][:5]:
        print("error:", message)


if __name__ == "__main__":
    main()
