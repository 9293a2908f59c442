"""Bad input: every case has one defined outcome, and the same server goes on serving after it.

An outcome is either a clear error on the stream for that video (its message matched here), or a correct result:
exactly the video's frames (the count PyAV's demuxer gives, which is also the count the case was made with), in
order by their index, at the video's own size, each equal to PyAV's decode of it. Never a hung stream (each event
must come within `IDLE_S`), never a crashed or poisoned server (two good videos follow every case on the same
stream, their frames checked the same way), never frames silently missing. The observed table is in
`.notes/bad_inputs.md`.
"""

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import CPU_VIDEO, SETTINGS
from helpers import collect

from stream_client import protocol
from stream_client.probe import probe
from stream_client.sample import sample_frame
from stream_client.stream import Chunk, SegmentationStream

IDLE_S = 60  # at most this long between two events of a case (the fixture's stream allows 120 s)
WIDTH, HEIGHT = 64, 48
LIMIT = SETTINGS.max_video_bytes  # 16 MiB in the tests' server


def encode(
    frames: int,
    codec: str = "mjpeg",
    container: str = "matroska",
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    pix_fmt: str | None = None,
    pts: list[int] | None = None,
    shift: int = 0,
    rotation: float | None = None,
    muxer_options: dict[str, str] | None = None,
) -> bytes:
    """The sample frames encoded with PyAV, in memory. `pts`: each frame's timestamp in ms (variable frame rate);
    `shift`: added to every packet's timestamps (1/25 s units; negative: frames before the start); `rotation`:
    display-matrix side data on the stream."""
    out = io.BytesIO()
    with av.open(out, "w", format=container, options=muxer_options or {}) as output:
        stream = output.add_stream(codec, rate=Fraction(25))
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or {"mjpeg": "yuvj444p"}.get(codec, "yuv420p")
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        packets = []
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(sample_frame(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if shift:
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            output.mux(packet)
    return out.getvalue()


def image(codec: str) -> bytes:
    """One still image file (PNG, or JPEG from the MJPEG encoder): FFmpeg opens it as a 1-frame image2 video."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.time_base = WIDTH, HEIGHT, Fraction(1, 25)
    context.pix_fmt = {"png": "rgb24", "mjpeg": "yuvj444p"}[codec]
    frame = av.VideoFrame.from_ndarray(sample_frame(0, HEIGHT, WIDTH), format="rgb24").reformat(format=context.pix_fmt)
    return b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])


def audio_only() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def corrupted(data: bytes, packets: set[int]) -> bytes:
    """`data` with the middle half of each of the video's `packets` (by index) overwritten."""
    out = bytearray(data)
    with av.open(io.BytesIO(data)) as container:
        found = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    for pos, size in (found[i] for i in packets):
        out[pos + size // 4 : pos + 3 * size // 4] = b"\x55" * (3 * size // 4 - size // 4)
    return bytes(out)


def padded(data: bytes, size: int) -> bytes:
    """A valid video with zeros after it up to `size` bytes (the demuxers stop at the end of the video)."""
    return data + bytes(size - len(data))


def vp9_10bit() -> bytes:
    try:
        return encode(8, "libvpx-vp9", "webm", pix_fmt="yuv420p10le")
    except av.FFmpegError as e:  # PyAV's wheel builds libvpx for 8 bits only: avcodec_open2 refuses the format
        pytest.skip(f"PyAV's libvpx-vp9 cannot encode yuv420p10le (VP9 profile 2): {e}")


@dataclass(frozen=True)
class Refused:
    message: str  # a regex the stream's error for the video must match


@dataclass(frozen=True)
class Frames:
    count: int | None  # the video's frames; None: what PyAV's demuxer counts (a truncated file)
    size: tuple[int, int] = (HEIGHT, WIDTH)  # (H, W) of the frames back


@dataclass(frozen=True)
class Case:
    make: Callable[[], bytes]
    outcome: Refused | Frames
    parameters: dict[str, str | float | int | bool] = field(default_factory=dict)  # sent as they are


def truncated(kept: float) -> Case:
    """The demuxer stops at the cut: every whole frame before it comes back, in order."""

    def make() -> bytes:
        data = encode(40)
        return data[: int(len(data) * kept)]

    return Case(make, Frames(None))


CASES: dict[str, Case] = {
    "empty": Case(lambda: b"", Refused(r"the video is empty \(0 bytes\)")),
    "random-bytes": Case(
        lambda: np.random.default_rng(0).bytes(5000), Refused(r"not a video container FFmpeg can read \(5000 bytes\)")
    ),
    "truncated-10%": truncated(0.1),
    "truncated-50%": truncated(0.5),
    "truncated-90%": truncated(0.9),
    # FFmpeg's MJPEG decoder rejects the damaged packet: DALI's video input fails; the backend resets its pipeline
    # (the runner builds a new one), in the backend's words.
    "corrupted-packets-mjpeg": Case(
        lambda: corrupted(encode(16), {7, 8}),
        Refused(r"Runtime error: .*Failed to send packet to decoder: Invalid data found when processing input"),
    ),
    # FFmpeg's VP9 decoder conceals the damage: every frame comes back (the damaged ones and those that refer to
    # them look wrong), as PyAV decodes them too.
    "corrupted-packets-vp9": Case(lambda: corrupted(encode(16, "libvpx-vp9", "webm"), {7, 8}), Frames(16)),
    "audio-only": Case(audio_only, Refused(r"the input has no video stream \(audio\)")),
    "h264-on-a-cpu-server": Case(
        lambda: encode(8, "libx264", "mp4"), Refused(r"its CPU decoder reads vp8, vp9, mjpeg, not h264")
    ),
    # Still images open as 1-frame image2 videos: a JPEG is MJPEG, which the decoder reads; a PNG's codec it doesn't.
    "png-image": Case(lambda: image("png"), Refused(r"reads vp8, vp9, mjpeg, not png")),
    "jpeg-image": Case(lambda: image("mjpeg"), Frames(1)),
    "one-frame-mjpeg": Case(lambda: encode(1), Frames(1)),
    "one-frame-vp9": Case(lambda: encode(1, "libvpx-vp9", "webm"), Frames(1)),
    "odd-size-321x241-mjpeg": Case(lambda: encode(5, width=321, height=241), Frames(5, (241, 321))),
    "odd-size-321x241-vp9": Case(lambda: encode(5, "libvpx-vp9", "webm", width=321, height=241), Frames(5, (241, 321))),
    # DALI decodes 10-bit VP9 to 8-bit RGB (seen with a file from another FFmpeg build); PyAV's libvpx can't make one.
    "vp9-10bit-yuv420p10le": Case(vp9_10bit, Frames(8)),
    "vp9-4:4:4-profile-1": Case(lambda: encode(5, "libvpx-vp9", "webm", pix_fmt="yuv444p"), Frames(5)),
    "variable-frame-rate-mjpeg": Case(lambda: encode(9, pts=[0, 10, 15, 100, 400, 401, 402, 600, 1000]), Frames(9)),
    "variable-frame-rate-vp9": Case(
        lambda: encode(9, "libvpx-vp9", "webm", pts=[0, 10, 15, 100, 400, 401, 402, 600, 1000]), Frames(9)
    ),
    # Matroska keeps negative timestamps as they are (no edit list): every frame is shown, and comes back.
    "negative-timestamps-mkv": Case(
        lambda: encode(10, shift=-2, muxer_options={"avoid_negative_ts": "disabled"}), Frames(10)
    ),
    # An MP4 edit list that starts after the first frames hides them from playback; DALI's video input decodes
    # them anyway (wrong frames, a surplus left in the decoder for the next video, then a crashed decoder stub).
    "mp4-edit-list-mjpeg": Case(lambda: encode(16, container="mp4", shift=-8), Refused(r"edit list hides 8 frames")),
    "mp4-edit-list-vp9": Case(lambda: encode(16, "libvpx-vp9", "mp4", shift=-3), Refused(r"edit list hides 3 frames")),
    # The decoder ignores the display matrix: frames come back as stored, not rotated (64x48, not 48x64).
    "rotation-90-mkv": Case(lambda: encode(5, rotation=90), Frames(5)),
    "rotation-90-mp4": Case(lambda: encode(5, container="mp4", rotation=90), Frames(5)),
    "frames-beyond-max-frame-size": Case(
        lambda: encode(2, width=4112, height=16),
        Refused(r"frames of 4112x16 are larger than this server decodes \(4096x4096\)"),
    ),
    # 4096x4096: 75.6 MB a frame with the model's tensors at 64x64; the tests' server gives a request 256 MiB.
    "over-the-memory-share": Case(
        lambda: encode(4, width=4096, height=4096),
        Refused(
            r"the video's 4 frames of 4096x4096 would hold 0\.28 GiB of this server's CPU memory at once, more "
            r"than a request's share \(0\.25 GiB\): send segments of at most 3 frames"
        ),
    ),
    "at-max-video-bytes": Case(lambda: padded(encode(3), LIMIT), Frames(3)),
    "over-max-video-bytes": Case(
        lambda: padded(encode(3), LIMIT + 1),
        Refused(rf"the video is {LIMIT + 1} bytes, more than this server takes in one request \({LIMIT}\)"),
    ),
    "class-unknown": Case(lambda: encode(3), Refused(r"unknown class 'unicorn'"), {"class": "unicorn"}),
    "class-a-number": Case(lambda: encode(3), Refused(r"unknown class '5'"), {"class": 5}),
    "threshold-1.5": Case(
        lambda: encode(3), Refused(r"threshold must be a number in \[0, 1\], not 1\.5"), {"threshold": 1.5}
    ),
    "threshold--0.1": Case(
        lambda: encode(3), Refused(r"threshold must be a number in \[0, 1\], not -0\.1"), {"threshold": -0.1}
    ),
    "threshold-abc": Case(
        lambda: encode(3), Refused(r"threshold must be a number in \[0, 1\], not 'abc'"), {"threshold": "abc"}
    ),
    "threshold-nan": Case(
        lambda: encode(3), Refused(r"threshold must be a number in \[0, 1\], not 'nan'"), {"threshold": "nan"}
    ),
    "threshold-true": Case(
        lambda: encode(3), Refused(r"threshold must be a number in \[0, 1\], not True"), {"threshold": True}
    ),
    "unknown-parameter-chunk_size": Case(
        lambda: encode(3), Refused(r"unknown request parameters \['chunk_size'\]"), {"chunk_size": 0}
    ),
    # What comes back is the model's choice (`segment_video` or `segment_video_mask`), not a parameter's.
    "returns-a-parameter": Case(
        lambda: encode(3), Refused(r"unknown request parameters \['returns'\]"), {"returns": "mask"}
    ),
}


def send_raw(stream: SegmentationStream, video: str, data: bytes, parameters: dict) -> None:
    """What `SegmentationStream.send` sends, with the request parameters exactly as given."""
    stream.send_request(video, data, protocol.ENTRY, (protocol.SEGMENTED,), parameters)


def decoded(data: bytes) -> list[np.ndarray]:
    """The video's frames as PyAV decodes them (RGB)."""
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def check_frames(chunks: list[Chunk], data: bytes, count: int, size: tuple[int, int]) -> None:
    """Exactly `count` frames of `size`, chunk after chunk from frame 0 with no gap and no overlap, and each the
    video's frame at its index (as PyAV decodes it; colour conversions differ by a few levels)."""
    chunks = sorted(chunks, key=lambda c: c.first)
    assert [c.first for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]])), "frames out of order"
    assert sum(len(c) for c in chunks) == count
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.dtype == np.uint8 and frames.shape[1:] == (*size, 3), frames.shape
    reference = np.stack(decoded(data)).astype(np.int16)
    assert len(reference) == count
    difference = np.abs(frames.astype(np.int16) - reference).mean(axis=(1, 2, 3))
    assert difference.max() < 4, f"frames differ from the video's by {difference.round(1)} levels on average"


# Threshold 0 keeps every pixel (the class's probability is above 0): the segmented frames are the decoded frames.
KEEP_ALL = 0.0


@pytest.mark.parametrize("name", CASES)
def test_bad_input_has_a_defined_outcome_and_the_server_goes_on(stream, video, name):
    case = CASES[name]
    stream.idle_timeout = IDLE_S
    data = case.make()
    if case.parameters:
        send_raw(stream, name, data, case.parameters)
    else:
        stream.send(name, data, threshold=KEEP_ALL)
    result = collect(stream, {name})[name]
    if isinstance(case.outcome, Refused):
        assert isinstance(result, str), f"{name} was not refused: {sum(len(c) for c in result)} frames came back"
        assert re.search(case.outcome.message, result, re.DOTALL), result
    else:
        assert not isinstance(result, str), f"{name} was refused: {result}"
        expected = probe(data).packets
        if case.outcome.count is None:  # a truncated file: some of its frames, not none and not all
            assert 0 < expected < 40
        else:
            assert expected == case.outcome.count
        check_frames(result, data, expected, case.outcome.size)
    # Two good videos at once: each decoder instance gets one, so a decoder left holding frames shows.
    good = video(9, **CPU_VIDEO)
    for i in range(2):
        stream.send(f"good-{i}", good, threshold=KEEP_ALL)
    for i, chunks in collect(stream, {"good-0", "good-1"}).items():
        assert not isinstance(chunks, str), f"{i}: {chunks}"
        check_frames(chunks, good, 9, (HEIGHT, WIDTH))
