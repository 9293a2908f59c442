"""Video files with PyAV: re-encode for a server that decodes on the CPU, write the segmented frames, dump images."""

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# DALI's CPU decoder reads MJPEG, and MJPEG in 4:4:4 decodes there to the same pixels as in FFmpeg; being intra-only,
# it also keeps every frame on its own. Quantiser 1-2: close to the source, ~5x the size of the H.264 input.
CPU_CODEC = "mjpeg"
CPU_PIX_FMT = "yuvj444p"


def frames(source: Path | bytes) -> Iterator[np.ndarray]:
    """The decoded frames of the first video stream, (H, W, 3) uint8 RGB."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def reencode_for_cpu(source: Path | bytes, rate: Fraction | None) -> bytes:
    """The video re-encoded to a codec DALI's CPU decoder reads, every frame kept, in Matroska."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = None
        for image in frames(source):
            if stream is None:
                stream = container.add_stream(CPU_CODEC, rate=rate or 30)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = CPU_PIX_FMT
                stream.codec_context.options = {"qmin": "1", "qmax": "2"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())
    return out.getvalue()


class VideoWriter:
    """Writes (H, W, 3) uint8 frames to an H.264 MP4 at a constant rate; odd sizes are padded by one edge pixel."""

    def __init__(self, path: Path, rate: Fraction | None) -> None:
        self.path = path
        self.rate = Fraction(rate or 30)
        self.container = av.open(str(path), "w")
        self.stream: av.VideoStream | None = None
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=self.rate)
            self.stream.height, self.stream.width = h + h % 2, w + w % 2
            self.stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self.stream.codec_context.options = {"crf": "18", "preset": "veryfast"}
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.count
        video_frame.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(video_frame))
        self.count += 1

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode())
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_image(path: Path, frame: np.ndarray) -> None:
    Image.fromarray(frame).save(path)
