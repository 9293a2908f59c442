"""What the benchmarks share: the input clips, peak memory samplers, Triton's per-model statistics, GPU use and the
stubs' stacks under load."""

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np

from repo.serve import processes, tree_memory_mib


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A name to write `path` under; it takes the name `path` only once written whole, so that a reader (another
    thread, a later invocation after this one was killed) never opens half a file."""
    partial = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}{path.suffix}")  # keeps the suffix
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 30, codec: str = "libx264",
              bit_rate: int = 8_000_000) -> Path:  # fmt: skip
    """A camera-like clip: a textured scene panning, with a bright square moving across it; H.264 at `bit_rate`
    (8 Mbit/s: what a 1080p30 camera or a download gives), a keyframe every 2 s, B-frames. On the CPU: MJPEG."""
    with written_whole(path) as partial:
        _encode_clip(partial, frames, width, height, rate, codec, bit_rate)
    return path


def _encode_clip(path: Path, frames: int, width: int, height: int, rate: int, codec: str, bit_rate: int) -> None:
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (height // 8 + 1, (width + 4 * frames) // 8 + 2, 3), dtype=np.uint8)
    scene = tile.repeat(8, axis=0).repeat(8, axis=1)
    y, x = np.mgrid[0:height, 0:width]
    light = (128 + 127 * np.sin(x / 97.0)[..., None] * np.cos(y / 61.0)[..., None]).astype(np.uint16)
    size = height // 5
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "yuvj444p"
        if codec == "libx264":
            stream.bit_rate = bit_rate
            stream.codec_context.options = {"preset": "veryfast", "g": str(2 * rate), "bf": "2"}
        for i in range(frames):
            image = (scene[:height, 4 * i : 4 * i + width] * light // 255).astype(np.uint8)
            top, left = (i * 7) % (height - size), (i * 11) % (width - size)
            image[top : top + size, left : left + size] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def repeat_clip(clip: Path, times: int, path: Path) -> Path:
    """The clip `times` over, remuxed end to end (no re-encoding): a long video in seconds."""
    with written_whole(path) as partial, av.open(str(clip)) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.size]
        frame = int(1 / (stream.average_rate * stream.time_base))
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + frame
        with av.open(str(partial), "w") as out:
            target = out.add_stream_from_template(stream)
            for k in range(times):
                for p in packets:  # each pass shifts the same packets one more span
                    offset = span if k else 0
                    p.pts, p.dts = p.pts + offset, p.dts + offset
                    p.stream = target
                    out.mux(p)
    return path


def visible_gpus() -> list[str]:
    """nvidia-smi's query option for the GPUs this process may use (nvidia-smi itself ignores CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ["-i", visible] if visible else []


def gpu_memory_mib() -> list[int]:
    """Memory in use on each GPU this process may use (nvidia-smi), MiB."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", *visible_gpus()],
                         capture_output=True, text=True).stdout  # fmt: skip
    return [int(v) for v in out.split()]


class Peaks:
    """Peak GPU memory (each GPU, nvidia-smi) and peak RSS of a process tree, sampled in the background."""

    def __init__(self, pid: int | None, gpu: bool, every: float = 0.25) -> None:
        self.pid, self.gpu, self.every = pid, gpu, every
        self.gpu_mib: list[int] = []
        self.rss_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.gpu:
                now = gpu_memory_mib()
                self.gpu_mib = [max(a, b) for a, b in zip(self.gpu_mib, now, strict=True)] if self.gpu_mib else now
            if self.pid is not None:
                self.rss_mib = max(self.rss_mib, tree_memory_mib(self.pid)["rss"])
            time.sleep(self.every)

    def __enter__(self) -> "Peaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def model_stats(url: str) -> dict[str, dict[str, float]]:
    """Per model, from Triton's statistics: executions, requests, seconds computing, seconds queued."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for model in stats:
        parts = ("compute_input", "compute_infer", "compute_output")
        batches = model.get("batch_stats") or [model["inference_stats"] | {"count": model.get("execution_count", 0)}]
        compute = sum(int(b.get(k, {}).get("ns", 0)) for b in batches for k in parts) / 1e9
        executions = sum(int(b.get("count", 0) or b.get("compute_infer", {}).get("count", 0)) for b in batches)
        queue = int(model["inference_stats"].get("queue", {}).get("ns", 0)) / 1e9
        requests = int(model["inference_stats"].get("success", {}).get("count", 0))
        out[model["name"]] = {"executions": executions, "requests": requests, "compute_seconds": compute,
                              "queue_seconds": queue}  # fmt: skip
    return out


def busy_during(before: dict, after: dict, seconds: float, instances: dict[str, int]) -> dict:
    """Each model's share of the run's wall time spent computing, per instance (1.0: always busy)."""
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


def dump_stacks() -> None:
    """Ask every Python-backend stub for its threads' stacks (faulthandler on SIGUSR1, into the server's log)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"triton_python_backend_stub" in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGUSR1)
            except OSError:
                pass
    time.sleep(3)


class GpuUse:
    """`nvidia-smi dmon -s u` (SM, memory, NVENC, NVDEC use in %, once a second) into `path` while the block runs,
    where nvidia-smi exists; `means` then holds each column's mean over the run's samples (all GPUs together)."""

    def __init__(self, path: Path) -> None:
        self.path, self.means = path, {}
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "GpuUse":
        if shutil.which("nvidia-smi"):
            with open(self.path, "w") as out:
                self._proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", *visible_gpus()], stdout=out)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.wait()
        self.means = dmon_means(self.path.read_text())


def dmon_means(text: str) -> dict[str, float]:
    """The mean of each column of `nvidia-smi dmon`'s output (its header line names them: `# gpu sm mem enc dec ...`;
    a value it cannot read is `-`)."""
    columns: list[str] = []
    values: dict[str, list[float]] = {}
    for line in text.splitlines():
        words = line.lstrip("#").split()
        if line.startswith("#") and "sm" in words:
            columns = words
        elif not line.startswith("#") and columns and len(words) == len(columns):
            for name, word in zip(columns, words, strict=True):
                if name != "gpu" and word.replace(".", "", 1).isdigit():
                    values.setdefault(name, []).append(float(word))
    return {name: round(sum(v) / len(v), 1) for name, v in values.items()}


class StackDumps:
    """`py-spy dump` of each Python-backend stub of a server every `every` seconds while the block runs (where py-spy
    is on PATH and `every` is set), each into `folder`/<model>-<pid>-<k>.txt: what the stubs' threads do under load."""

    def __init__(self, server_pid: int, folder: Path, every: float | None) -> None:
        self.server_pid, self.folder, self.every = server_pid, folder, every
        self.binary = shutil.which("py-spy")
        self.dumps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self.every):
            for pid, model in processes(self.server_pid).items():
                if model == "tritonserver":
                    continue
                done = subprocess.run([self.binary, "dump", "--pid", str(pid)], capture_output=True, text=True)
                (self.folder / f"{model}-{pid}-{k}.txt").write_text(done.stdout + done.stderr)
                self.dumps += 1
            k += 1

    def __enter__(self) -> "StackDumps":
        if self.every and self.binary:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._thread.start()
        elif self.every:
            print("py-spy is not on PATH: no stack dumps (benchmarks/gpu_device.sh says how to bring it)", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
