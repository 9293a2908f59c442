"""The GPU benchmark: decode limit, model limit, the original example's way, and the full chain, in one run.

On the GPU machine, after ../shared/gpu's staging:  python benchmarks/gpu.py --out $OUT
On the CPU, tiny frames (memory with a 1- and a 10-minute input; a check of the script): python benchmarks/gpu.py --cpu

Prints a table and writes benchmark.json. The chain: the project's server (Python-backend target, NVDEC, float16
segmenter) from `repo.build`, started by `repo.serve`; the client streams a long 1080p H.264 video as GOP-aligned
segments (several in flight) and receives the class mask per frame (`returns=mask`): full 1080p RGB frames at
2000 frames/s would be ~12 GB/s, more than gRPC or a client-side encoder takes (measured separately, `segmented`).
"""

import argparse
import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export import fcn  # noqa: E402
from pipelines.decode import IMAGENET_MEAN, IMAGENET_STD, decode  # noqa: E402
from repo.build import build  # noqa: E402
from repo.models import CLASS_MASKER, DECODER, ENTRY, MASKER, SEGMENTER, Settings, server_args  # noqa: E402
from repo.serve import TritonServer, tree_memory_mib  # noqa: E402
from stream_client import gops  # noqa: E402
from stream_client.stream import Chunk, Failed, Finished, SegmentationStream  # noqa: E402


# ---------------------------------------------------------------- inputs
def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 30, codec: str = "libx264") -> Path:
    """A 1080p-like H.264 clip: gradient with a moving square, GOP 2 s, B-frames, as a camera or an editor writes
    (`--cpu` on the CPU: MJPEG, which the CPU decoder reads)."""
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
    size = height // 5
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuvj444p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "23", "g": str(2 * rate), "bf": "2"}
        for i in range(frames):
            image = background.copy()
            top, left = (i * 7) % (height - size), (i * 11) % (width - size)
            image[top : top + size, left : left + size] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def repeat_clip(clip: Path, times: int, path: Path) -> Path:
    """The clip `times` over, remuxed end to end (no re-encoding): a long video in seconds."""
    with av.open(str(clip)) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.size]
        frame = int(1 / (stream.average_rate * stream.time_base))
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + frame
        with av.open(str(path), "w") as out:
            target = out.add_stream_from_template(stream)
            for k in range(times):
                for p in packets:  # each pass shifts the same packets one more span
                    offset = span if k else 0
                    p.pts, p.dts = p.pts + offset, p.dts + offset
                    p.stream = target
                    out.mux(p)
    return path


# ---------------------------------------------------------------- measuring
class Peaks:
    """Peak GPU memory (nvidia-smi) and peak RSS of a process tree, sampled in the background."""

    def __init__(self, pid: int | None, gpu: bool, every: float = 0.25) -> None:
        self.pid, self.gpu, self.every = pid, gpu, every
        self.gpu_mib = 0
        self.rss_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.gpu:
                used = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True,
                ).stdout.strip()  # fmt: skip
                self.gpu_mib = max(self.gpu_mib, int(used or 0))
            if self.pid is not None:
                self.rss_mib = max(self.rss_mib, tree_rss_mib(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> "Peaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants (tritonserver and its Python-backend stubs)."""
    return tree_memory_mib(pid)["rss"]


def gpu_memory_by_model() -> dict[str, int]:
    """MiB of GPU memory each process holds now, by Triton model instance (or the process's name)."""
    rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.strip().splitlines()  # fmt: skip
    used: dict[str, int] = {}
    for row in rows:
        pid, mib = (v.strip() for v in row.split(","))
        try:
            args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            args = [pid]
        name = next((a for a in args if a.endswith(("_0_0", "_0_1", "_0_2", "_0_3", "_0_4", "_0_5", "_0_6", "_0_7"))),
                    Path(args[0]).name)  # fmt: skip
        used[name] = used.get(name, 0) + int(mib)
    return used


def dump_stacks(server_pid: int) -> None:
    """Ask the server's Python-backend stubs for their threads' stacks (faulthandler on SIGUSR1, to the log)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"triton_python_backend_stub" in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGUSR1)
            except OSError:
                pass
    time.sleep(3)


def client_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(result: dict, key: str = "seconds"):
    start = time.perf_counter()
    yield
    result[key] = time.perf_counter() - start


# ---------------------------------------------------------------- the measurements
def decode_limit(clip: Path, streams: int, device: str, frames_per_chunk: int = 16) -> dict:
    """K pipelines, one thread each, decoding (and resizing, normalising) the same clip at once."""
    data = np.fromfile(clip, np.uint8)
    frames_per_stream = gops.plan(clip, max_seconds=None)[0].frames
    pipes = []
    for _ in range(streams):
        make = pipeline_def(decode, batch_size=1, num_threads=2, device_id=0 if device == "gpu" else None,
                            prefetch_queue_depth=1)  # fmt: skip
        pipe = make(device=device, frames_per_chunk=frames_per_chunk, half=True)
        pipe.build()
        pipes.append(pipe)

    def run(pipe) -> None:
        pipe.feed_input("VIDEO", [data])
        for _ in range(-(-frames_per_stream // frames_per_chunk)):
            pipe.run()

    threads = [threading.Thread(target=run, args=(p,)) for p in pipes]
    result: dict = {"streams": streams}
    with timed(result):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result["frames_per_second"] = streams * frames_per_stream / result["seconds"]
    return result


def model_limit(device: str, batch: int, size: tuple[int, int], iterations: int) -> dict:
    """fcn_resnet101 + softmax alone: float32, float16, float16 channels_last; largest probability difference."""
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    x = torch.randn(batch, 3, *size, device=dev)
    results: dict = {"batch": batch, "size": list(size)}
    reference = None
    variants = [("fp32", torch.float32, torch.contiguous_format)]
    if device == "gpu":
        variants += [("fp16", torch.float16, torch.contiguous_format), ("fp16_channels_last", torch.float16,
                                                                       torch.channels_last)]  # fmt: skip
    for name, dtype, memory_format in variants:
        model = fcn.seeded(0).to(dev, dtype, memory_format=memory_format)
        inp = x.to(dtype).contiguous(memory_format=memory_format)
        with torch.inference_mode():
            out = model(inp)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iterations):
                out = model(inp)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        results[name] = batch * iterations / seconds
        if reference is None:
            reference = out.float()
        else:
            results[f"{name}_max_prob_diff_vs_fp32"] = float((out.float() - reference).abs().max())
        del model
    return results


def original_way(clip: Path, device: str, size: tuple[int, int], batch: int) -> dict:
    """The original example: the whole clip decoded in one go (`fn.experimental.decoders.video`), then the model,
    then the mask, on the GPU; here the masks come back to the host, as in the chain's `mask` mode."""

    @pipeline_def(batch_size=1, num_threads=4, device_id=0 if device == "gpu" else None, prefetch_queue_depth=1)
    def whole_clip():
        encoded = fn.external_source(name="ENCODED", dtype=types.UINT8)
        frames = fn.experimental.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu")
        return fn.crop_mirror_normalize(fn.resize(frames, size=list(size)), dtype=types.FLOAT16 if device == "gpu"
                                        else types.FLOAT, output_layout="FCHW", mean=[255 * m for m in IMAGENET_MEAN],
                                        std=[255 * s for s in IMAGENET_STD])  # fmt: skip

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    dtype = torch.float16 if device == "gpu" else torch.float32
    model = fcn.seeded(0).to(dev, dtype)
    pipe = whole_clip()
    pipe.build()
    result: dict = {}
    with timed(result):
        pipe.feed_input("ENCODED", [np.fromfile(clip, np.uint8)])
        (model_input,) = pipe.run()
        tensor = torch.from_numpy(np.array(model_input[0])) if device == "cpu" else _dali_to_torch(model_input)
        masks = []
        with torch.inference_mode():
            for start in range(0, len(tensor), batch):
                probs = model(tensor[start : start + batch].to(dev, dtype))
                masks.append((probs[:, 15] > 0.5).to(torch.uint8).cpu())
        frames = sum(len(m) for m in masks)
    if device == "gpu":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result["frames"] = frames
    result["frames_per_second"] = frames / result["seconds"]
    return result


def _dali_to_torch(tensor_list) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    sample = tensor_list[0]
    out = torch.empty(sample.shape(), dtype=to_torch_type[sample.dtype], device="cuda")
    feed_ndarray(sample, out, cuda_stream=torch.cuda.current_stream())
    torch.cuda.current_stream().synchronize()
    return out


def model_busy_seconds(url: str) -> dict[str, dict[str, float]]:
    """Per model, from Triton's statistics: executions, seconds computing (input + infer + output), seconds queued."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    busy = {}
    for model in stats:
        # A batch's compute time counts once per execution in batch_stats, once per request in inference_stats.
        parts = ("compute_input", "compute_infer", "compute_output")
        batches = model.get("batch_stats") or [model["inference_stats"] | {"count": model.get("execution_count", 0)}]
        compute = sum(int(b.get(k, {}).get("ns", 0)) for b in batches for k in parts) / 1e9
        executions = sum(int(b.get("count", 0) or b.get("compute_infer", {}).get("count", 0)) for b in batches)
        queue = int(model["inference_stats"].get("queue", {}).get("ns", 0)) / 1e9
        requests = int(model["inference_stats"].get("success", {}).get("count", 0))
        busy[model["name"]] = {"executions": executions, "requests": requests, "compute_seconds": compute,
                               "queue_seconds": queue}  # fmt: skip
    return busy


def busy_during(before: dict, after: dict, seconds: float, instances: dict[str, int]) -> dict:
    """Each model's share of the run's wall time spent computing, per instance (1.0: every instance always busy)."""
    out = {}
    for name, a in after.items():
        b = before.get(name, dict.fromkeys(a, 0))
        executions = a["executions"] - b["executions"]
        if executions:
            compute = a["compute_seconds"] - b["compute_seconds"]
            out[name] = {
                "executions": executions,
                "busy_per_instance": round(compute / seconds / instances.get(name, 1), 3),
                "mean_compute_ms": round(1000 * compute / executions, 2),
                "mean_queue_ms_per_request": round(
                    1000 * (a["queue_seconds"] - b["queue_seconds"]) / max(1, a["requests"] - b["requests"]), 2
                ),
            }
    return out


def chain(url: str, source: Path, window: int, returns: str, max_seconds: float, server_pid: int, gpu: bool) -> dict:
    """One long video through the server: segments in flight, chunks counted as they arrive."""
    plan = gops.plan(source, max_seconds=max_seconds)
    expected = sum(p.frames for p in plan)
    events: queue.Queue = queue.Queue()
    result: dict = {"video_frames": expected, "segments": len(plan), "window": window, "returns": returns}
    received = 0
    first_chunk = None
    stats_before = model_busy_seconds(url)
    with SegmentationStream(url, events=events, idle_timeout=300) as stream, Peaks(server_pid, gpu) as peaks:
        pending = gops.segments(source, plan)
        in_flight = 0
        start = time.perf_counter()
        while True:
            while in_flight < window and (segment := next(pending, None)) is not None:
                stream.send(f"s{segment.index}", segment.data, returns=returns)
                in_flight += 1
            if in_flight == 0:
                break
            event = events.get(timeout=120)
            if isinstance(event, Failed):
                raise RuntimeError(f"{event.video}: {event.message}")
            if isinstance(event, Finished):
                in_flight -= 1
            elif isinstance(event, Chunk):
                first_chunk = first_chunk if first_chunk is not None else time.perf_counter() - start
                received += len(event)
        seconds = time.perf_counter() - start
    result.update(
        frames=received,
        seconds=seconds,
        frames_per_second=received / seconds,
        first_chunk_seconds=first_chunk,
        peak_gpu_memory_mib=peaks.gpu_mib,
        peak_server_rss_mib=peaks.rss_mib,
        peak_client_rss_mib=client_peak_rss_mib(),
        gpu_memory_after_mib=gpu_memory_by_model() if gpu else {},
        models=(stats_before, model_busy_seconds(url)),
    )
    if received != expected:
        raise RuntimeError(f"{received} frames came back of {expected}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    parser.add_argument("--cpu", action="store_true", help="tiny frames on the CPU (memory figures; checks the script)")
    parser.add_argument("--long-minutes", type=int, default=10)
    parser.add_argument("--skip-limits", action="store_true", help="only the chain")
    parser.add_argument("--frames-per-chunk", type=int, default=16)
    parser.add_argument("--segmenters", type=int, default=2, help="segmenter instances")
    parser.add_argument("--chunks-in-flight", type=int, default=4, help="per video, in the entry model")
    parser.add_argument("--no-segmented", action="store_true", help="skip the run that returns full frames")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--decoders", type=int, default=8, help="decoder instances (NVDEC streams) on the GPU")
    parser.add_argument("--entry-instances", type=int, default=4, help="processes of the entry model")
    parser.add_argument("--cuda-pool-gib", type=int, default=4, help="Triton's CUDA memory pool")
    parser.add_argument("--segment-seconds", type=float, default=4.0, help="the client's segments")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "gpu"
    width, height, rate = (64, 48, 10) if args.cpu else (1920, 1080, 30)
    model_size = (32, 32) if args.cpu else (224, 224)
    work = Path(tempfile.mkdtemp(prefix="segment-bench-"))
    report: dict = {"device": device, "date": time.strftime("%Y-%m-%d"), "options": vars(args) | {"out": str(args.out)}}
    if device == "gpu":
        report["gpu"] = torch.cuda.get_device_name(0)

    with timed(report, "make_inputs_seconds"):
        suffix, codec = (".mkv", "mjpeg") if args.cpu else (".mp4", "libx264")
        minute = make_clip(work / f"minute{suffix}", 60 * rate, width, height, rate, codec)
        long = repeat_clip(minute, args.long_minutes, work / f"long{suffix}")
    print(f"inputs: 1 minute and {args.long_minutes} minutes of {width}x{height} H.264 at {rate} frames/s", flush=True)

    if device == "gpu" and not args.skip_limits:
        report["decode_limit"] = [decode_limit(minute, k, device) for k in (1, 4, 8)]
        print("decode limit:", report["decode_limit"], flush=True)
        report["model_limit"] = model_limit(device, 64, model_size, 20)
        print("model limit:", report["model_limit"], flush=True)
        report["original_way"] = original_way(minute, device, model_size, 64)
        print("original way:", report["original_way"], flush=True)

    settings = Settings(
        device=device, half=device == "gpu", channels_last=device == "gpu", model_size=model_size,
        frames_per_chunk=args.frames_per_chunk, max_batch=64,
        decoder_instances=args.decoders if device == "gpu" else 2, segmenter_instances=args.segmenters,
        masker_instances=2, chunks_in_flight=args.chunks_in_flight, random_weights_seed=0,
        entry_instances=args.entry_instances, cuda_pool_bytes=args.cuda_pool_gib << 30,
    )  # fmt: skip
    instances = {
        ENTRY: settings.entry_instances, DECODER: settings.decoder_instances,
        SEGMENTER: settings.segmenter_instances, MASKER: settings.masker_instances,
        CLASS_MASKER: settings.masker_instances,
    }  # fmt: skip
    repository = build(settings, work / "repo")
    with TritonServer(repository, args=server_args(settings)) as server:
        pid = server.proc.pid
        runs = [("1 minute", minute, "mask"), (f"{args.long_minutes} minutes", long, "mask")]
        if not args.no_segmented:
            runs.append(("1 minute", minute, "segmented"))
        report["chain"] = []
        for name, source, returns in runs:
            try:
                result = chain(server.url, source, args.window, returns, args.segment_seconds, pid, device == "gpu")
            except (RuntimeError, queue.Empty):
                dump_stacks(pid)
                shutil.copy(server.log_path, args.out / "server.log")
                print(server.log(30), flush=True)
                raise
            result["input"] = name
            result["models"] = busy_during(*result["models"], result["seconds"], instances)
            report["chain"].append(result)
            print(f"chain, {name}, returns={returns}:", result, flush=True)

    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict) -> None:
    rows = []
    for d in report.get("decode_limit", []):
        rows.append((f"decode limit, {d['streams']} NVDEC streams", d["frames_per_second"], "", "", "", ""))
    if "model_limit" in report:
        m = report["model_limit"]
        for key in ("fp32", "fp16", "fp16_channels_last"):
            if key in m:
                rows.append((f"model limit, {key}, batch {m['batch']}", m[key], "", "", "", ""))
    if "original_way" in report:
        o = report["original_way"]
        rows.append(("original way (whole clip, decoders.video)", o["frames_per_second"], "",
                     o.get("peak_gpu_memory_mib", ""), "", ""))  # fmt: skip
    for c in report.get("chain", []):
        rows.append((f"chain, {c['input']}, {c['returns']}, window {c['window']}", c["frames_per_second"],
                     f"{c['first_chunk_seconds']:.2f}", c["peak_gpu_memory_mib"], f"{c['peak_server_rss_mib']:.0f}",
                     f"{c['peak_client_rss_mib']:.0f}"))  # fmt: skip
    header = ("what", "frames/s", "first chunk s", "peak GPU MiB", "server RSS MiB", "client RSS MiB")
    print(f"\n{report.get('gpu', report['device'])}, {report['date']}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([r[0], f"{r[1]:.0f}", *(str(v) for v in r[2:])]))
    for c in report.get("chain", []):
        print(f"models during chain, {c['input']}, {c['returns']}:")
        for name, m in c["models"].items():
            print(f"  {name}: {m}")


if __name__ == "__main__":
    main()
