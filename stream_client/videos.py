"""Video files and frames with PyAV: decode, convert for a server's decoder, NV12, images."""

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# DALI's CPU decoder reads MJPEG, and MJPEG in 4:4:4 decodes there to the same pixels as in FFmpeg; being intra-only,
# it also keeps every frame on its own. Quantiser 1-2: close to the source, ~5x the size of the H.264 input.
CPU_CODEC = "mjpeg"
# What the client can convert a video into for a server whose decoder does not take it as it is, in its order of
# preference: codec -> (encoder, pixel format, options). One packet per frame, in display order (no B-frames, no
# hidden frames: DALI's video input counts one frame per packet). Only the server's mask comes of it: the frames
# written are the client's own decode of the source.
CONVERSIONS = {
    "h264": ("libx264", "yuv420p", {"preset": "veryfast", "crf": "16", "bf": "0"}),
    "hevc": ("libx265", "yuv420p", {"preset": "veryfast", "crf": "16", "x265-params": "bframes=0:log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"crf": "20", "b": "0", "lag-in-frames": "0", "auto-alt-ref": "0"}),
    CPU_CODEC: ("mjpeg", "yuvj444p", {"qmin": "1", "qmax": "2"}),
}


def conversions_for(device: str) -> tuple[str, ...]:
    """The codecs to convert to, best first: for a CPU decoder MJPEG (intra-only 4:4:4, which DALI decodes to FFmpeg's
    own pixels), for NVDEC H.264."""
    return tuple(dict.fromkeys([CPU_CODEC, *CONVERSIONS])) if device == "cpu" else tuple(CONVERSIONS)


def frames(source: Path | bytes) -> Iterator[np.ndarray]:
    """The decoded frames of the first video stream, (H, W, 3) uint8 RGB."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def convert(source: Path | bytes, rate: Fraction | None, codec: str = CPU_CODEC, size: tuple[int, int] | None = None,
            ) -> bytes:  # fmt: skip
    """The video re-encoded to `codec` (one of `CONVERSIONS`), every frame kept, in Matroska; at `size` (H, W) when
    given, else at its first frame's size."""
    encoder, pix_fmt, options = CONVERSIONS[codec]
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = None
        for image in frames(source):
            if stream is None:
                stream = container.add_stream(encoder, rate=rate or 30)
                stream.height, stream.width = size or image.shape[:2]
                stream.pix_fmt = pix_fmt
                stream.codec_context.options = dict(options)
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            if image.shape[:2] != (stream.height, stream.width):
                # Scaled to the size asked for, or a frame of another size (two recordings joined) stretched to the
                # first's: the server decodes one size, and the mask it sends back is at the model's size whatever
                # the frame's; the client scales it to each frame's own size.
                picture = picture.reformat(width=stream.width, height=stream.height)
            container.mux(stream.encode(picture))
        if stream is not None:
            container.mux(stream.encode())
    return out.getvalue()


def keep_class(frame: av.VideoFrame, mask: np.ndarray) -> av.VideoFrame:
    """The frame with only the pixels its class mask keeps, others black: yuv420p (limited range, as the server writes
    and encoders expect) of its size rounded up to even (odd sizes get a black row or column, as on the server). The
    mask (h, w) of 0/1, at the model's size, is scaled to the frame with nearest-neighbour sampling, as the server's
    masker scales it; the chroma of a 2x2 block is kept where the half-size mask keeps it."""
    height, width = frame.height, frame.width
    even = (height + height % 2, width + width % 2)
    if (height, width) != even:
        padded = np.zeros((*even, 3), np.uint8)
        padded[:height, :width] = frame.to_ndarray(format="rgb24")
        frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
    if frame.format.name != "yuv420p" or frame.color_range == 2:  # another layout, or JPEG's full range
        frame = frame.reformat(format="yuv420p", src_color_range=frame.color_range or None, dst_color_range="MPEG",
                               threads=1)  # fmt: skip
    # Written into a new frame: a decoder's frame may be a reference for the next ones.
    picture = av.VideoFrame(even[1], even[0], "yuv420p")
    keep, half = _scaled(mask, height, width), _scaled(mask, even[0] // 2, even[1] // 2)
    if (height, width) != even:
        keep = np.pad(keep, ((0, even[0] - height), (0, even[1] - width)))
    for plane, (rows, columns), black, where in zip(
        range(3), [even, *[(even[0] // 2, even[1] // 2)] * 2], (16, 128, 128), (keep, half, half), strict=True
    ):
        out = _plane(picture.planes[plane], rows, columns)
        out.fill(black)
        np.copyto(out, _plane(frame.planes[plane], rows, columns), where=where.view(bool))
    return picture


def fit(frame: av.VideoFrame, height: int, width: int) -> av.VideoFrame:
    """The frame scaled to fit (height, width), both even, with its aspect kept, centred on black: yuv420p."""
    if (frame.height, frame.width) == (height, width):
        return frame
    scale = min(height / frame.height, width / frame.width)
    h, w = (max(2, round(side * scale / 2) * 2) for side in (frame.height, frame.width))
    scaled = frame.reformat(width=w, height=h, format="yuv420p", threads=1)
    picture = av.VideoFrame(width, height, "yuv420p")
    picture.pts, picture.time_base = frame.pts, frame.time_base
    top, left = (height - h) // 4 * 2, (width - w) // 4 * 2  # even: the chroma planes are half the size
    for plane, sub, black in zip(range(3), (1, 2, 2), (16, 128, 128), strict=True):
        out = _plane(picture.planes[plane], height // sub, width // sub)
        out.fill(black)
        rows, columns = slice(top // sub, (top + h) // sub), slice(left // sub, (left + w) // sub)
        out[rows, columns] = _plane(scaled.planes[plane], h // sub, w // sub)
    return picture


def _plane(plane, rows: int, width: int) -> np.ndarray:
    """A writable view of a plane's pixels (its rows are `line_size` bytes long)."""
    return np.frombuffer(plane, np.uint8).reshape(rows, plane.line_size)[:, :width]


def _scaled(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 0/1 mask scaled with nearest-neighbour sampling (FFmpeg's swscale, point sampling)."""
    small = av.VideoFrame.from_ndarray(np.ascontiguousarray(mask, np.uint8), format="gray")
    big = small.reformat(width=width, height=height, interpolation="POINT", threads=1)
    return np.frombuffer(big.planes[0], np.uint8).reshape(height, big.planes[0].line_size)[:, :width]


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
