"""Video files and frames with PyAV: decode, re-encode for a server that decodes on the CPU, NV12, images."""

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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


def nv12_frame(nv12: np.ndarray) -> av.VideoFrame:
    """A frame of the server's SEGMENTED output, (3 H'/2, W') NV12, as a PyAV frame (what an encoder takes)."""
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(nv12), format="nv12")


def nv12_to_rgb(nv12: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) RGB of an NV12 frame, without the row or column that made its size even."""
    return nv12_frame(nv12).to_ndarray(format="rgb24")[:height, :width]


def save_image(path: Path, frame: np.ndarray) -> None:
    """An RGB frame as a PNG file."""
    context = av.CodecContext.create("png", "w")
    context.height, context.width = frame.shape[:2]
    context.pix_fmt, context.time_base = "rgb24", Fraction(1, 1)
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    Path(path).write_bytes(b"".join(bytes(p) for p in [*context.encode(image), *context.encode(None)]))
