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
            rate = stream.average_rate or stream.guessed_rate
            edit_lists = "mov" in container.format.name.split(",")
        hidden = max(_all_packets(data) - shown, 0) if edit_lists else 0
    except av.FFmpegError as e:
        raise ValueError(f"not a video container FFmpeg can read ({size} bytes): {e}") from None
    if packets == 0:
        raise ValueError("the video stream holds no frames")
    return VideoProbe(codec, width, height, packets, Fraction(rate) if rate else None, hidden)


def _all_packets(data: bytes | bytearray | memoryview | Path) -> int:
    """The video packets of an MP4/MOV with its edit list ignored (FFmpeg drops the cut packets of intra codecs)."""
    source = str(data) if isinstance(data, Path) else io.BytesIO(data)
    with av.open(source, mode="r", options={"ignore_editlist": "1"}) as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size > 0)
