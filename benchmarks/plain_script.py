"""The script a user would write instead of this project: the bar the CLI is measured against.

PyAV decodes the video on 16 threads to RGB, fcn_resnet101 (float16, batch 64) segments each frame at 224x224, the
class mask is resized to the frame (1080p) and multiplied in, and the segmented frames come back to the host. No
server, no output file.

    python benchmarks/plain_script.py VIDEO [--class person --threshold 0.5 --threads 16]

Prints one JSON line: frames, seconds, frames/s (and PyAV's decode alone).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export import fcn  # noqa: E402
from pipelines.decode import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pipelines.mask import class_index  # noqa: E402


def frames(path: Path, threads: int):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", threads
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def decode_only(path: Path, threads: int) -> dict:
    start = time.perf_counter()
    count = sum(1 for _ in frames(path, threads))
    seconds = time.perf_counter() - start
    return {"frames": count, "seconds": seconds, "frames_per_second": count / seconds}


@torch.inference_mode()
def segment(path: Path, threads: int, class_name: str, threshold: float, batch: int = 64) -> dict:
    device = torch.device("cuda")
    model = fcn.seeded(0).to(device, torch.float16).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    wanted = class_index(class_name)
    count, pending = 0, []

    def run(images: list) -> None:
        rgb = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)
        x = F.interpolate(rgb.float(), size=(224, 224), mode="bilinear", antialias=True)
        probs = model(((x - mean) / std).half())
        keep = F.interpolate((probs[:, wanted : wanted + 1] > threshold).to(torch.uint8), size=rgb.shape[2:])
        (rgb * keep).permute(0, 2, 3, 1).cpu()  # the segmented frames, back on the host

    model(torch.zeros(batch, 3, 224, 224, device=device, dtype=torch.float16))  # warm up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for image in frames(path, threads):
        pending.append(image)
        if len(pending) == batch:
            run(pending)
            count, pending = count + batch, []
    if pending:
        run(pending)
        count += len(pending)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"frames": count, "seconds": seconds, "frames_per_second": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--class", dest="class_name", default="person")
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    result = segment(args.video, args.threads, args.class_name, args.threshold)
    result["decode_only"] = decode_only(args.video, args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
