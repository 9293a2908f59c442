"""Small synthetic videos made with PyAV: the quick start's sample and the tests' inputs."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def sample_frame(i: int, height: int, width: int) -> np.ndarray:
    """A gradient background with a bright square that moves: every frame differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack(
        [(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), np.full_like(x, (i * 7) % 256)], -1
    )
    size = max(4, min(height, width) // 4)
    top, left = (i * 3) % max(height - size, 1), (i * 5) % max(width - size, 1)
    frame[top : top + size, left : left + size] = 255
    return frame.astype(np.uint8)


def make_video(
    path: Path,
    frames: int,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    rate: int = 25,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` sample frames; the container is chosen by the file's extension (.mp4, .webm, .mkv)."""
    pix_fmt = {"mjpeg": "yuvj444p"}.get(codec, "yuv420p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.options = options or {}
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(sample_frame(i, height, width), format="rgb24")))
        container.mux(stream.encode())
    return Path(path)
