"""Bad input gets a clear error on the stream, and the same server goes on serving."""

import io
import re

import av
import numpy as np
import pytest
from conftest import CPU_VIDEO, H264_VIDEO
from helpers import collect

from pipelines.probe import probe


def audio_only() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


BAD = {
    "empty": (lambda video: b"", "empty"),
    "random-bytes": (lambda video: np.random.default_rng(0).bytes(5000), "not a video container FFmpeg can read"),
    "truncated": (lambda video: video(16, **CPU_VIDEO)[:300], "not a video container|no frames|decoding failed"),
    "audio-only": (lambda video: audio_only(), "no video stream \\(audio\\)"),
    "h264-on-a-cpu-server": (
        lambda video: video(8, **H264_VIDEO),
        "decodes on the cpu and reads vp8, vp9, mjpeg, not h264",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_refused_and_the_next_request_succeeds(stream, video, name):
    make, message = BAD[name]
    stream.send(name, make(video))
    result = collect(stream, {name})[name]
    assert isinstance(result, str), f"{name} was not refused"
    assert re.search(message, result), result
    stream.send("good", video(9, **CPU_VIDEO))
    good = collect(stream, {"good"})["good"]
    assert not isinstance(good, str), good
    assert sum(len(c.frames) for c in good) == 9


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.9])
def test_a_truncated_video_gives_the_frames_before_the_cut(stream, video, kept):
    """The demuxer stops at the cut: every whole frame before it comes back, in order; nothing hangs."""
    data = video(40, **CPU_VIDEO)
    cut = data[: int(len(data) * kept)]
    stream.send("cut", cut)
    result = collect(stream, {"cut"})["cut"]
    assert not isinstance(result, str), result
    assert sum(len(c.frames) for c in result) == probe(cut).packets
    assert 0 < probe(cut).packets < 40
