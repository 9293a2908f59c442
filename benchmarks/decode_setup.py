"""What a new video costs the decode step, without Triton: the decode graph (`pipelines/decode.py`, built as Triton's
DALI backend builds it) on segments as the client cuts them. First one pipeline reused segment after segment (its
first chunk of each segment against its later ones), then N pipelines on threads of one process, each decoding every
segment in turn (frames/s, and how long a new segment waits for its first chunk). Prints the figures.

    python benchmarks/decode_setup.py                      # GPU: 1080p30 H.264, segments of 4 s, 1, 8 and 16 pipelines
    python benchmarks/decode_setup.py --pipelines 1 4 8 --segment-seconds 8
    python benchmarks/decode_setup.py --cpu                # the CPU decoder on small VP9 (checks the script)
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from nvidia.dali.tensors import TensorListGPU

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipelines  # noqa: E402
from pipelines import decode  # noqa: E402
from stream_client import gops  # noqa: E402
from stream_client.sample import make_video  # noqa: E402


def new_pipeline(device: str, frames_per_chunk: int):
    return pipelines.build(decode.decode, batch_size=1, device_id=0 if device == "gpu" else None, device=device,
                           frames_per_chunk=frames_per_chunk, model_size=(224, 224), half=device == "gpu",
                           with_frames=False)  # fmt: skip


def run_segment(pipe, segment: gops.Segment, frames_per_chunk: int) -> list[float]:
    """A segment through the pipeline as the backend runs a request: its inputs fed once, a run per chunk; the time
    from the feed to each chunk's output (s)."""
    start = time.perf_counter()
    pipe.feed_input(decode.VIDEO, [np.frombuffer(segment.data, np.uint8)])
    pipe.feed_input(decode.CLASS_ID, [np.array([0], np.int32)])
    pipe.feed_input(decode.THRESHOLD, [np.array([0.0], np.float32)])
    times = []
    for _ in range(-(-segment.frames // frames_per_chunk)):
        (model_input, *_) = pipe.run()
        if isinstance(model_input, TensorListGPU):
            model_input.as_cpu()  # the chunk is there, not only scheduled
        times.append(time.perf_counter() - start)
    return times


def one_pipeline(segments: list[gops.Segment], device: str, frames_per_chunk: int) -> None:
    pipe = new_pipeline(device, frames_per_chunk)
    for segment in segments:
        times = run_segment(pipe, segment, frames_per_chunk)
        later = np.diff(times)
        print(f"1 pipeline, segment {segment.index} ({segment.frames} frames): first chunk {times[0] * 1000:.0f} ms, "
              f"later chunks {np.median(later) * 1000 if len(later) else float('nan'):.0f} ms median, "
              f"{segment.frames / times[-1]:.0f} frames/s")  # fmt: skip


def many_pipelines(segments: list[gops.Segment], device: str, frames_per_chunk: int, count: int) -> None:
    pipes = [new_pipeline(device, frames_per_chunk) for _ in range(count)]
    firsts: list[float] = []

    def work(pipe, offset: int) -> None:
        for i in range(len(segments)):
            firsts.append(run_segment(pipe, segments[(i + offset) % len(segments)], frames_per_chunk)[0])

    threads = [threading.Thread(target=work, args=(pipe, k)) for k, pipe in enumerate(pipes)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    frames = count * sum(s.frames for s in segments)
    print(f"{count} pipelines: {frames / seconds:.0f} frames/s, a new segment's first chunk after "
          f"{np.median(firsts) * 1000:.0f} ms median, {np.quantile(firsts, 0.9) * 1000:.0f} ms p90")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="DALI's CPU decoder on small VP9 frames")
    parser.add_argument("--pipelines", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=16.0, help="the input's length")
    parser.add_argument("--frames-per-chunk", type=int, default=32)
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "gpu"
    rate = 30
    with tempfile.TemporaryDirectory() as folder:
        frames = int(args.seconds * rate)
        if args.cpu:
            source = make_video(Path(folder) / "in.webm", frames, width=320, height=240, rate=rate,
                                codec="libvpx-vp9", options={"g": str(rate), "lag-in-frames": "0"})  # fmt: skip
        else:
            options = {"g": str(rate), "bf": "2", "preset": "ultrafast"}
            source = make_video(Path(folder) / "in.mp4", frames, width=1920, height=1080, rate=rate, codec="libx264",
                                options=options)  # fmt: skip
        segments = list(gops.segments(source, max_seconds=args.segment_seconds - 0.5 / rate))
    print(f"{device}: {len(segments)} segments of {[s.frames for s in segments]} frames, "
          f"{args.frames_per_chunk} frames per chunk")  # fmt: skip
    one_pipeline(segments, device, args.frames_per_chunk)
    for count in args.pipelines:
        many_pipelines(segments, device, args.frames_per_chunk, count)


if __name__ == "__main__":
    main()
