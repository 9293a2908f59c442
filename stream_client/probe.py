"""What the decode pipeline will make of an encoded video, found by demuxing it with PyAV (no decoding)."""

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


@dataclass(frozen=True)
class VideoProbe:
    codec: str
    width: int
    height: int
    packets: int  # DALI's video input returns one frame per video packet
    rate: Fraction | None  # average frames per second, where the container says
    # Packets the container hides from playback (an MP4/MOV edit list that starts after the first frame): FFmpeg
    # drops or marks them, DALI's video input decodes them anyway, so its frames would not be the video's.
    hidden: int = 0
    chroma: str = ""  # its chroma subsampling: "420", "422", "444" or "400" (grey); "" when the container does not say
    bit_depth: int = 0  # bits per sample; 0 when the container does not say


def layout(pix_fmt: str | None) -> tuple[str, int]:
    """(chroma subsampling, bit depth) of an FFmpeg pixel format, ("", 0) when unknown or not YUV."""
    try:
        planes = av.VideoFormat(pix_fmt, 64, 64).components if pix_fmt else ()
    except (ValueError, av.FFmpegError):
        return "", 0
    if not planes or planes[0].is_alpha:
        return "", 0
    if len(planes) == 1:
        return "400", planes[0].bits
    chroma = {(64, 64): "444", (32, 64): "422", (32, 32): "420"}.get((planes[1].width, planes[1].height), "")
    return chroma, planes[0].bits


def probe(data: bytes | bytearray | memoryview | Path) -> VideoProbe:
    """Raise ValueError with a message for the user when `data` (bytes or a file) holds no decodable video stream."""
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    if size == 0:
        raise ValueError("the video is empty (0 bytes)")
    try:
        with av.open(str(data) if isinstance(data, Path) else io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
                raise ValueError(f"the input has no video stream ({kinds})")
            stream = container.streams.video[0]
            packets = shown = 0
            for p in container.demux(stream):
                if p.size > 0:
                    packets += 1
                    shown += not p.is_discard
            codec = stream.codec_context.codec.canonical_name  # the codec's name (av1), not its decoder's (libdav1d)
            width, height = stream.codec_context.width, stream.codec_context.height
            chroma, bit_depth = layout(stream.codec_context.pix_fmt)
            rate = stream.average_rate or stream.guessed_rate
            edit_lists = "mov" in container.format.name.split(",")
        hidden = max(_all_packets(data) - shown, 0) if edit_lists else 0
    except av.FFmpegError as e:
        raise ValueError(f"not a video container FFmpeg can read ({size} bytes): {e}") from None
    if packets == 0:
        raise ValueError("the video stream holds no frames")
    return VideoProbe(codec, width, height, packets, Fraction(rate) if rate else None, hidden, chroma, bit_depth)


def _all_packets(data: bytes | bytearray | memoryview | Path) -> int:
    """The video packets of an MP4/MOV with its edit list ignored (FFmpeg drops the cut packets of intra codecs)."""
    source = str(data) if isinstance(data, Path) else io.BytesIO(data)
    with av.open(source, mode="r", options={"ignore_editlist": "1"}) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size > 0)
