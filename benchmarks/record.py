"""The benchmark of record: what the README's Performance table shows, measured in one run on the GPU machine.

    bash benchmarks/gpu_device.sh record                     # on the GPU machine, after ../shared/gpu's staging
    bash benchmarks/gpu_device.sh record --runs multi        # two GPUs (nvidia-h200-x2)
    bash benchmarks/gpu_device.sh record --runs trace sweep --py-spy 5   # where a chunk's time goes (README)
    bash benchmarks/gpu_device.sh record --runs chain trace --no-long --dali-backend build/native/dali   # native
    python benchmarks/record.py --cpu --out /tmp/record      # tiny frames on the CPU: checks the script

Writes `record.json` into --out ({"gpu", "date", "commit", "runs": [...]}), adding to the runs already there. Every
run has `frames_per_second`, `first_chunk_seconds` and `peak_gpu_memory_mib` (each GPU) where it applies:
- peer_plain_script: `benchmarks/plain_script.py` on the 1-minute 1080p30 clip, in the same run: the bar;
- chain_mask_10min / chain_mask_60min: one long video through the tuned GPU server, `returns=mask` (the warm-up
  before them, chain_mask_1min, gives the first chunk on a warm server); the 60-minute run's
  `memory_growth_from_10min` (peak GPU memory and peak server RSS, as fractions);
- cli_segmented_1080p: `segment-video IN.mp4 --out OUT.mp4` as a user runs it (its own local server, no other
  option) on 3 minutes of 1080p; `_url`: through --url to a running server; `_keep_all`: --threshold 0, every pixel
  kept, so that the encoder sees whole frames (the worst case for the client);
- stress_matrix: server configurations x client configurations, each with a deadline: completed frame-exact,
  failed with an error, or hung;
- multi: one_gpu_one_video, two_gpus_one_video, two_gpus_four_videos (one server over both GPUs) and
  one_server_per_gpu_one_video (two servers, the client's --url repeated), with `returns=mask` and the CLI's own
  output;
- trace: the 10-minute input (the CPU: 1 minute) through a server that traces every request (Triton's trace API,
  `triton_trace.py`): the per-step table and where a chunk's time goes, printed and in the record, the time line of
  every chunk in `trace_chain_mask_*_chunks.json`, the raw trace in `*.trace.json`;
- sweep_segment_seconds, sweep_frames_per_chunk, sweep_decoder_instances (`--runs sweep`, `--sweeps` chooses): frames/s
  against each, one changed at a time from the tuned server (a row printed for each).
With --dali-backend (a built libtriton_dali.so), the chain, trace, sweep and stress runs serve the native target
(`--target dali`, Triton's DALI backend) and are named `native_...`; the CLI's own local server is the Python
target, so the CLI's native figure is `native_cli_segmented_1080p_url` (the chain's). During the chain, trace and
sweep runs, where nvidia-smi exists, `nvidia-smi dmon -s u` goes to `dmon-<run>.txt` and
its means into the run's `gpu_use_percent`; with --py-spy S, `py-spy dump` of every stub every S seconds into
`py-spy-<run>/`.
"""

import argparse
import io
import json
import os
import pstats
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton_trace  # noqa: E402
from measure import (  # noqa: E402
    GpuUse,
    Peaks,
    StackDumps,
    busy_during,
    dump_stacks,
    gpu_memory_mib,
    make_clip,
    model_stats,
    repeat_clip,
    visible_gpus,
)  # fmt: skip

from repo.build import build  # noqa: E402
from repo.models import Settings, server_args, tuned  # noqa: E402
from repo.serve import TritonServer  # noqa: E402
from stream_client import gops  # noqa: E402
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_SECONDS = 4.0  # the CLI's default


class Bench:
    """The inputs and the report, for the runs of one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.cpu = args, args.cpu
        # RECORD_WORK: a folder kept between invocations (the GPU machine's /tmp), so that the inputs are made once.
        self.work = Path(os.environ.get("RECORD_WORK") or tempfile.mkdtemp(prefix="record-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.size = (48, 64) if self.cpu else (1080, 1920)  # (H, W)
        self.rate = 10 if self.cpu else 30
        self.model_size = (32, 32) if self.cpu else (224, 224)
        path = args.out / "record.json"
        self.report = json.loads(path.read_text()) if path.exists() else {"runs": []}
        machine = {"cpus": len(os.sched_getaffinity(0)), "gpus": 0 if self.cpu else len(gpu_memory_mib())}
        self.report.update(gpu=_gpu_name(), date=time.strftime("%Y-%m-%d"), commit=_commit(), machine=machine)
        self._clips: dict[str, Path] = {}
        self.native = args.dali_backend  # Triton's DALI backend built for this machine: the native target's runs

    def clip(self, minutes: int, height: int | None = None, width: int | None = None, seconds: int = 60) -> Path:
        """`minutes` of the 1-minute clip (or one clip of `seconds`), of the benchmark's frame size by default."""
        height, width = height or self.size[0], width or self.size[1]
        key = f"{minutes}x{seconds}s-{width}x{height}"
        if key not in self._clips:
            suffix, codec = (".mkv", "mjpeg") if self.cpu else (".mp4", "libx264")
            base = self.work / f"clip-{seconds}s-{width}x{height}{suffix}"
            if not base.exists():
                make_clip(base, seconds * self.rate, width, height, self.rate, codec)
            self._clips[key] = base if minutes == 1 else repeat_clip(base, minutes, self.work / f"{key}{suffix}")
        return self._clips[key]

    def settings(self, **changes) -> Settings:
        device = "cpu" if self.cpu else "gpu"
        base = {**tuned(device), "device": device, "model_size": self.model_size, "random_weights_seed": 0}
        if self.cpu:
            base |= {"frames_per_chunk": 8, "max_batch": 32}
        if self.native:
            base["target"] = "dali"
        return Settings(**(base | changes))

    def server(self, settings: Settings, folder: str, extra: list[str] = ()) -> TritonServer:
        """A server of `settings`, its repository built in the work folder (the native target with --dali-backend)."""
        repository = build(settings, self.work / folder)
        return TritonServer(repository, args=server_args(settings) + list(extra), dali_backend=self.native)

    def named(self, name: str) -> str:
        return f"native_{name}" if self.native else name

    def add(self, run: dict) -> None:
        self.report["runs"] = [r for r in self.report["runs"] if r["name"] != run["name"]] + [run]
        (self.args.out / "record.json").write_text(json.dumps(self.report, indent=2))
        print(json.dumps({k: v for k, v in run.items() if k not in ("models", "steps")}), flush=True)

    @contextmanager
    def watch(self, name: str, server_pid: int) -> Iterator[GpuUse]:
        """GPU use (nvidia-smi dmon, where it exists) and the stubs' stacks (py-spy, with --py-spy) while a run goes,
        into --out; the GpuUse's `means` once the block is done."""
        dumps = StackDumps(server_pid, self.args.out / f"py-spy-{name}", self.args.py_spy)
        with GpuUse(self.args.out / f"dmon-{name}.txt") as use, dumps:
            yield use


def _gpu_name() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", *visible_gpus()],
                               capture_output=True, text=True).stdout.split("\n")  # fmt: skip
        return f"{len([n for n in names if n])}x {names[0]}"
    except OSError:
        return "cpu"


def _commit() -> str:
    if os.environ.get("SEGMENT_COMMIT"):  # the GPU machine's copy of the checkout may not carry its history
        return os.environ["SEGMENT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- one long video through a running server
def stream_video(url: str | list[str], source: Path, returns: str, window: int, server_pid: int | None,
                 gpu: bool, segment_seconds: float = SEGMENT_SECONDS, idle_timeout: float | None = 300,
                 on_chunk: Callable[[], None] = lambda: None) -> dict:  # fmt: skip
    """One video, its GOP segments `window` in flight (over the servers of `url`), chunks counted as they arrive
    (`on_chunk` called for each); it fails when nothing arrives for `idle_timeout` seconds (None: it waits)."""
    urls = [url] if isinstance(url, str) else url
    events: queue.Queue = queue.Queue()
    streams = [SegmentationStream(u, events=events, idle_timeout=300) for u in urls]
    for s in streams:
        s.__enter__()
    info = streams[0].server_info()
    height, width = _frame_size(source)
    plan = gops.plan(source, max_seconds=segment_seconds,
                     max_frames=info.max_frames(height, width, frames=returns != "mask"))  # fmt: skip
    expected = sum(p.frames for p in plan)  # the plan covers every frame
    received, first_chunk, in_flight = 0, None, {}
    before = [model_stats(u) for u in urls]
    try:
        with Peaks(server_pid, gpu) as peaks:
            pending = gops.segments(source, plan)
            start = time.perf_counter()
            while True:
                while len(in_flight) < window and (segment := next(pending, None)) is not None:
                    stream = streams[segment.index % len(streams)]
                    stream.send(f"s{segment.index}", segment.data, returns=returns, size=(height, width))
                    in_flight[f"s{segment.index}"] = segment
                if not in_flight:
                    break
                try:
                    event = events.get(timeout=idle_timeout)
                except queue.Empty:
                    raise RuntimeError(f"nothing arrived for {idle_timeout:.0f} s") from None
                if isinstance(event, Failed):
                    raise RuntimeError(f"{event.video}: {event.message}")
                if isinstance(event, Finished):
                    in_flight.pop(event.video)
                elif isinstance(event, Chunk):
                    first_chunk = first_chunk if first_chunk is not None else time.perf_counter() - start
                    received += len(event)
                    on_chunk()
            seconds = time.perf_counter() - start
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    if received != expected:
        raise RuntimeError(f"{received} frames came back of {expected}")
    return {"frames": received, "segments": len(plan), "window": window, "returns": returns, "seconds": seconds,
            "frames_per_second": received / seconds, "first_chunk_seconds": first_chunk,
            "peak_gpu_memory_mib": peaks.gpu_mib, "peak_server_rss_mib": round(peaks.rss_mib),
            "models": [busy_during(b, model_stats(u), seconds, {}) for b, u in zip(before, urls, strict=True)],
            }  # fmt: skip


def _frame_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.height, context.width


def chain(bench: Bench) -> None:
    settings = bench.settings()
    window = 2 * settings.decoder_instances
    with bench.server(settings, "repo-chain") as server:
        pid = server.proc.pid
        runs = [("chain_mask_1min", 1), ("chain_mask_10min", 10)] + (
            [("chain_mask_60min", 60)] if bench.args.long else []
        )
        runs = [(bench.named(name), minutes) for name, minutes in runs]
        for name, minutes in runs:
            try:
                with bench.watch(name, pid) as use:
                    result = stream_video(server.url, bench.clip(minutes), "mask", window, pid, not bench.cpu)
                result["gpu_use_percent"] = use.means
            except Exception:
                dump_stacks()
                shutil.copy(server.log_path, bench.args.out / f"server-{name}.log")
                raise
            result |= {"name": name, "input_minutes": minutes, "settings": _settings(settings)}
            if minutes == 60:
                ten = next(r for r in bench.report["runs"] if r["name"] == bench.named("chain_mask_10min"))
                result["memory_growth_from_10min"] = {
                    "gpu": round(max(result["peak_gpu_memory_mib"]) / max(ten["peak_gpu_memory_mib"] or [1]) - 1, 4),
                    "server_rss": round(result["peak_server_rss_mib"] / ten["peak_server_rss_mib"] - 1, 4),
                }
            bench.add(result)
        # The CLI through --url to this running server: the client's own cost alone, profiled.
        cli(bench, bench.named("cli_segmented_1080p_url"), ["--url", server.url], profile=True)


SETTINGS_SHOWN = ("frames_per_chunk", "max_batch", "decoder_instances", "decoder_processes", "segmenter_instances",
                  "masker_instances",
                  "check_instances", "cuda_pool_bytes", "half", "channels_last")  # fmt: skip


def _settings(s: Settings) -> dict:
    return {k: getattr(s, k) for k in SETTINGS_SHOWN}


# ---------------------------------------------------------------- the CLI as a user runs it
def cli(bench: Bench, name: str, extra: list[str], profile: bool = False, copies: int = 1) -> None:
    """`copies` CLIs at once, each on its own copy of the 3-minute clip (frames/s: all their frames over the wall
    time)."""
    source = bench.clip(3)
    runs = []
    for k in range(copies):
        out = bench.work / f"{name}-{k}.mp4"
        shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
        args = [str(source), "--out", str(out), "--summary-json", str(bench.work / f"{name}-{k}.json"), *extra]
        if bench.cpu and "--url" not in extra:
            args += [
                "--random-weights",
                "0",
                "--model-size",
                "32",
                "32",
                "--frames-per-chunk",
                "8",
                "--max-batch",
                "32",
            ]
        command = [sys.executable, "-m", "stream_client", *args]
        if profile:
            command[1:1] = ["-m", "cProfile", "-o", str(bench.work / f"{name}.prof")]
        runs.append((out, bench.work / f"{name}-{k}.json", command))
    start = time.perf_counter()
    with Peaks(None, not bench.cpu) as peaks:
        procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _, _, c in runs]  # fmt: skip
        outputs = [p.communicate(timeout=900) for p in procs]
    wall = time.perf_counter() - start
    summaries = []
    for proc, (_, err), (out, summary, _) in zip(procs, outputs, runs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: {err[-3000:]}")
        result = json.loads(summary.read_text())
        if _frames_in(out) != result["frames"]:
            raise RuntimeError(f"{name}: {_frames_in(out)} frames in the output of {result['frames']}")
        summaries.append(result)
    shown = " ".join(["IN.mp4", "--out", "OUT.mp4", *extra])
    frames = sum(r["frames"] for r in summaries)
    run = {"name": name, "command": f"segment-video {shown}", "copies": copies,
           "input": f"{bench.size[1]}x{bench.size[0]}, {summaries[0]['frames']} frames", "wall_seconds": wall,
           "frames_per_second": summaries[0]["frames_per_second"] if copies == 1 else frames / wall,
           "first_chunk_seconds": summaries[0]["first_chunk_seconds"], "kept_pixels": summaries[0]["kept_pixels"],
           "output_bytes": runs[0][0].stat().st_size, "peak_gpu_memory_mib": peaks.gpu_mib}  # fmt: skip
    if profile:
        text = io.StringIO()
        stats = pstats.Stats(str(bench.work / f"{name}.prof"), stream=text)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
        (bench.args.out / f"{name}_profile.txt").write_text(text.getvalue())
    bench.add(run)


def _frames_in(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


def clis(bench: Bench) -> None:
    if bench.native:
        print("cli: the CLI's own local server is the Python target; the native CLI figure is the chain's _url run")
        return
    cli(bench, "cli_segmented_1080p", [])
    cli(bench, "cli_segmented_1080p_keep_all", ["--threshold", "0"])


def peer(bench: Bench) -> None:
    if bench.cpu:
        return
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), str(bench.clip(1))],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    bench.add({"name": "peer_plain_script", **result, "first_chunk_seconds": None,
               "input": f"{bench.size[1]}x{bench.size[0]} H.264, 1 minute"})  # fmt: skip


# ---------------------------------------------------------------- nothing hangs
def stress(bench: Bench) -> None:
    """Server configurations x client configurations. Each server takes all its client runs at once; each run either
    completes frame-exact or fails with an error; one that has done neither when none of its server's runs has got a
    chunk for `stall` seconds has hung. (A deadline on the whole would count a slow machine's runs as hung: on the
    2-core CPU machine, with other servers on it, a server of 4 decoders took more than 120 s for its 12 runs.)"""
    servers = [{"decoder_instances": 4, "check_instances": 1, "frames_per_chunk": 16},
               {"decoder_instances": 8, "check_instances": 4},
               {"decoder_instances": 16, "check_instances": 8}]  # fmt: skip
    sizes = {"480p": (480, 854), "1080p": bench.size} if not bench.cpu else {"small": (32, 48), "larger": (48, 64)}
    clients = [(w, r, s) for w in (2, 8, 32) for r in ("mask", "segmented") for s in sizes]
    # Made here, before the client threads start: a run that failed on a clip still being written would be the
    # harness's failure, not the server's or the client's.
    clips = {size: bench.clip(1, *shape, seconds=10 if not bench.cpu else 20) for size, shape in sizes.items()}
    stall = 120 if bench.cpu else 300
    rows, walls = [], []
    for server_changes in servers:
        settings = bench.settings(**server_changes)
        with bench.server(settings, "repo-stress") as server:
            last_chunk = [time.monotonic()]  # when any run of this server last got a chunk

            def run(client, url=server.url, last=last_chunk) -> str:
                window, returns, size = client
                result = stream_video(url, clips[size], returns, window, None, False, idle_timeout=None,
                                      on_chunk=lambda: last.__setitem__(0, time.monotonic()))  # fmt: skip
                return f"completed ({result['frames_per_second']:.0f} frames/s)"  # it raises unless frame-exact

            pool = ThreadPoolExecutor(len(clients))
            futures = {pool.submit(run, c): c for c in clients}
            outcomes: dict[tuple, str] = {}
            started, pending = time.monotonic(), set(futures)
            while pending and time.monotonic() - last_chunk[0] < stall:
                done, pending = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        outcomes[futures[future]] = future.result()
                    except Exception as e:  # noqa: BLE001 - a failed run is an outcome, with its error
                        outcomes[futures[future]] = f"failed: {str(e)[:300]}"
            walls.append(round(time.monotonic() - started))
            for client in clients:
                rows.append({"server": server_changes, "window": client[0], "returns": client[1], "size": client[2],
                             "outcome": outcomes.get(client, "hung")})  # fmt: skip
            if pending:
                dump_stacks()
                shutil.copy(server.log_path, bench.args.out / "server-stress-hung.log")
            pool.shutdown(wait=False, cancel_futures=True)
    hung = sum(r["outcome"] == "hung" for r in rows)
    failed = sum(r["outcome"].startswith("failed") for r in rows)
    bench.add({"name": bench.named("stress_matrix"), "runs": len(rows), "hung": hung, "failed": failed,
               "stall_seconds": stall, "wall_seconds_per_server": walls, "rows": rows})  # fmt: skip


# ---------------------------------------------------------------- where a chunk's time goes
def trace(bench: Bench) -> None:
    """The 10-minute input (the CPU: 1 minute) through a server that traces every request; the warm-up before it is
    left out of the tables (the trace's clock is this process's monotonic clock)."""
    settings = bench.settings()
    minutes = 1 if bench.cpu else 10
    name = bench.named(f"trace_chain_mask_{minutes}min")
    path = bench.args.out / f"{name}.trace.json"  # written by the server when it stops
    window = 2 * settings.decoder_instances
    with bench.server(settings, "repo-trace", triton_trace.server_args(path)) as server:
        stream_video(server.url, bench.clip(1), "mask", window, None, not bench.cpu)
        since = time.monotonic_ns()
        with bench.watch(name, server.proc.pid) as use:
            result = stream_video(server.url, bench.clip(minutes), "mask", window, None, not bench.cpu)
        until = time.monotonic_ns()
    requests = triton_trace.load(path)
    videos = triton_trace.videos(requests, since, until)
    steps = triton_trace.steps(requests, videos)
    chunks = triton_trace.chunks(requests, videos)
    print(f"{name}: per step, median / p90 ms\n{triton_trace.format_steps(steps)}", flush=True)
    print(triton_trace.format_chunks(chunks), flush=True)
    (bench.args.out / f"{name}_chunks.json").write_text(json.dumps(chunks))
    shown = {k: result[k] for k in ("frames", "segments", "window", "seconds", "frames_per_second")}
    bench.add({"name": name, **shown, "traced_segments": len(videos), "chunks": len(chunks), "steps": steps,
               "legs": triton_trace.legs(chunks), "gpu_use_percent": use.means,
               "settings": _settings(settings)})  # fmt: skip


SWEEP = {  # the values each sweep takes, on a GPU and on the CPU (the smallest: it checks the code path)
    "segment_seconds": ([2, 4, 8, 16, 32], [2, 4]),
    "frames_per_chunk": ([16, 32, 64, 128], [8, 16]),
    "decoder_instances": ([1, 2, 4, 8, 16], [1, 2]),
}


def sweep(bench: Bench) -> None:
    """Frames/s (`returns=mask`, warm server, 2 segments in flight per decoder) against the segment length, the frames
    per chunk and the decoders, each swept from the tuned server with the others at its values; a server per setting,
    each point printed as it comes; each sweep (--sweeps) a run of the record: `sweep_<its name>`."""
    minutes = bench.args.sweep_minutes or (1 if bench.cpu else 3)
    base = bench.settings()
    swept = {name: bench.args.sweep.get(name) or SWEEP[name][bench.cpu] for name in bench.args.sweeps}
    measured: dict[tuple, dict] = {}  # (frames per chunk, decoders, segment seconds) -> its row

    def key(point: dict) -> tuple:
        return point["frames_per_chunk"], point["decoder_instances"], point["segment_seconds"]

    def measure(changes: dict, seconds: list[float]) -> None:
        settings = bench.settings(**changes)
        points = [{"frames_per_chunk": settings.frames_per_chunk, "decoder_instances": settings.decoder_instances,
                   "segment_seconds": s} for s in seconds]  # fmt: skip
        if all(key(p) in measured for p in points):
            return
        window = 2 * settings.decoder_instances
        with bench.server(settings, "repo-sweep") as server:
            stream_video(server.url, bench.clip(1), "mask", window, None, not bench.cpu)
            for p in points:
                name = bench.named("sweep_{frames_per_chunk}fpc_{decoder_instances}dec_{segment_seconds:g}s")
                name = name.format(**p)
                with bench.watch(name, server.proc.pid) as use:
                    result = stream_video(server.url, bench.clip(minutes), "mask", window, None, not bench.cpu,
                                          segment_seconds=p["segment_seconds"])  # fmt: skip
                measured[key(p)] = p | {"window": window, "segments": result["segments"], "gpu_use_percent": use.means,
                                        "frames_per_second": round(result["frames_per_second"], 1)}  # fmt: skip
                print(f"sweep: {json.dumps(measured[key(p)])}", flush=True)

    if "segment_seconds" in swept:
        measure({}, swept["segment_seconds"])
    for frames in swept.get("frames_per_chunk", []):
        measure({"frames_per_chunk": frames, "max_batch": max(base.max_batch, frames)}, [SEGMENT_SECONDS])
    for decoders in swept.get("decoder_instances", []):
        measure({"decoder_instances": decoders}, [SEGMENT_SECONDS])
    at = {"frames_per_chunk": base.frames_per_chunk, "decoder_instances": base.decoder_instances,
          "segment_seconds": SEGMENT_SECONDS}  # fmt: skip
    for name, values in swept.items():
        rows = [measured[key(at | {name: v})] for v in values]
        shown = ", ".join(f"{r[name]:g}: {r['frames_per_second']}" for r in rows)
        print(f"sweep over {name} (frames/s, input {minutes} min): {shown}", flush=True)
        bench.add({"name": bench.named(f"sweep_{name}"), "input_minutes": minutes, "settings": _settings(base),
                   "rows": rows})  # fmt: skip


# ---------------------------------------------------------------- two GPUs
def multi(bench: Bench) -> None:
    gpus = len(gpu_memory_mib()) if not bench.cpu else 1
    if gpus < 2:
        print(f"multi: {gpus} GPU here, two needed", flush=True)
        return
    source = bench.clip(10)
    one, two = bench.settings(gpus=(0,)), bench.settings(gpus=(0, 1))
    for settings, runs in [
        (one, [("one_gpu_one_video", 1)]),
        (two, [("two_gpus_one_video", 1), ("two_gpus_four_videos", 4)]),
    ]:
        repository = build(settings, bench.work / f"repo-{len(settings.gpus)}-gpus")
        with TritonServer(repository, args=server_args(settings)) as server:
            window = 2 * settings.decoder_instances * len(settings.gpus)
            stream_video(server.url, bench.clip(1), "mask", window, server.proc.pid, True)  # warm-up
            for name, videos in runs:
                with ThreadPoolExecutor(videos) as pool:
                    start = time.perf_counter()
                    share = window // videos
                    pid = server.proc.pid
                    futures = [pool.submit(stream_video, server.url, source, "mask", share, pid, True)
                               for _ in range(videos)]  # fmt: skip
                    results = [f.result() for f in futures]
                    seconds = time.perf_counter() - start
                frames = sum(r["frames"] for r in results)
                first = results[0]
                bench.add({"name": name, "returns": "mask", "videos": videos, "gpus": len(settings.gpus),
                           "frames_per_second": frames / seconds, "first_chunk_seconds": first["first_chunk_seconds"],
                           "peak_gpu_memory_mib": first["peak_gpu_memory_mib"], "settings": _settings(settings),
                           "models": first["models"]})  # fmt: skip
                cli(bench, f"{name}_cli_segmented", ["--url", server.url], copies=videos)
    # One server per GPU, the client's --url repeated.
    servers = [TritonServer(build(one, bench.work / f"repo-gpu{gpu}"), args=server_args(one),
                            env={"CUDA_VISIBLE_DEVICES": str(gpu)}) for gpu in (0, 1)]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(TritonServer.start, servers))
    try:
        urls = [s.url for s in servers]
        stream_video(urls, bench.clip(1), "mask", 32, None, True)
        bench.add({"name": "one_server_per_gpu_one_video", **stream_video(urls, source, "mask", 32, None, True),
                   "gpus": 2})  # fmt: skip
        args = [a for url in urls for a in ("--url", url)]
        cli(bench, "one_server_per_gpu_one_video_cli_segmented", args)
    finally:
        for s in servers:
            s.stop()


RUNS = {"peer": peer, "chain": chain, "cli": clis, "stress": stress, "multi": multi, "trace": trace, "sweep": sweep}


def _values(text: str) -> list[float | int]:
    return [int(v) if float(v).is_integer() else float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "record-out")))
    parser.add_argument("--cpu", action="store_true", help="tiny frames on the CPU (checks the script)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=["peer", "chain", "cli", "stress"])
    parser.add_argument("--no-long", dest="long", action="store_false", help="leave out the 60-minute input")
    parser.add_argument("--py-spy", type=float, metavar="SECONDS", help="dump every stub's stacks this often during "
                        "the chain, trace and sweep runs (py-spy on PATH)")  # fmt: skip
    parser.add_argument("--dali-backend", type=Path, help="a built libtriton_dali.so (or its folder): the runs on the "
                        "native target, named native_...")  # fmt: skip
    parser.add_argument("--sweeps", nargs="+", choices=SWEEP, default=list(SWEEP), help="which sweeps (default all)")
    parser.add_argument("--sweep-minutes", type=int, help="the sweep's input (default: 3 minutes, the CPU 1)")
    for name, (gpu, cpu) in SWEEP.items():
        parser.add_argument(f"--sweep-{name.replace('_', '-')}", type=_values, metavar="A,B,...",
                            help=f"the values of this sweep (default {gpu}, the CPU {cpu})")  # fmt: skip
    args = parser.parse_args()
    args.sweep = {name: getattr(args, f"sweep_{name}") for name in SWEEP}
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    for name in args.runs:
        started = time.monotonic()
        try:
            RUNS[name](bench)
        except Exception as e:  # noqa: BLE001 - the other runs still count; the failure is in the report
            bench.add({"name": f"{name}_error", "error": f"{type(e).__name__}: {e}"[-4000:]})
        print(f"-- {name}: {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
