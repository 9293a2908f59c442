"""stream_client.gops: cutting real encoded videos at safe keyframes, each segment decoding alone to the same pixels."""

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream_client import gops
from stream_client.gops import Segment, SegmentPlan

RATE = 25
X265_QUIET = "log-level=error"

# name -> (codec, suffix, options); keyframes every 12 frames, B-frames where the codec has them.
VIDEOS = {
    "h264": ("libx264", ".mp4", {"bf": "3", "g": "12"}),
    "h264-mkv": ("libx264", ".mkv", {"bf": "3", "g": "12"}),
    "h264-open-gop": (
        "libx264",
        ".mp4",
        {"x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:scenecut=0"},
    ),
    "hevc": ("libx265", ".mp4", {"x265-params": f"keyint=12:min-keyint=12:bframes=3:no-open-gop=1:{X265_QUIET}"}),
    "hevc-open-gop": ("libx265", ".mp4", {"x265-params": f"keyint=12:min-keyint=12:bframes=3:scenecut=0:{X265_QUIET}"}),
    "vp9": ("libvpx-vp9", ".webm", {"g": "12"}),
}


def pattern(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A colour gradient that drifts, with a square that moves: every frame differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 4 + i * 3) % 256, (y * 5 + i * 2) % 256, np.full_like(x, (i * 11) % 256)], -1)
    top, left = (i * 3) % (height - 12), (i * 5) % (width - 12)
    frame[top : top + 12, left : left + 12] = (255, 255 - (i * 9) % 256, 0)
    return frame.astype(np.uint8)


def make_video(path: Path, codec: str, options: dict[str, str], frames: int = 60) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(RATE))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.options = options
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pattern(i), format="rgb24")))
        container.mux(stream.encode())
    return path


def decode(source: Path | bytes) -> list[tuple[float, np.ndarray]]:
    """(time in s, rgb24 pixels) of every frame, in display order."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def packets(path: Path) -> list[tuple[int, bool]]:
    """(pts, keyframe) of the video stream's non-empty packets, in decode order."""
    with av.open(str(path)) as container:
        return [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]


def leading_keyframes(path: Path) -> list[int]:
    """Keyframes (packet indices, past the first) followed in decode order by a packet shown before them."""
    listed = packets(path)
    return [i for i, (pts, key) in enumerate(listed) if key and i and any(later < pts for later, _ in listed[i + 1 :])]


def h264_nal_types(data: bytes) -> list[int]:
    """The NAL unit types of an MP4 (4-byte length-prefixed) H.264 packet."""
    types, pos = [], 0
    while pos + 4 < len(data):
        types.append(data[pos + 4] & 0x1F)
        pos += 4 + int.from_bytes(data[pos : pos + 4], "big")
    return types


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gops")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            codec, suffix, options = VIDEOS[name]
            made[name] = make_video(folder / f"{name}{suffix}", codec, options)
        return made[name]

    return get


def check_segments(path: Path, parts: list[Segment]) -> None:
    """Contiguous segments whose standalone decodes are the whole decode's frames, pixel for pixel."""
    whole = decode(path)
    assert [s.index for s in parts] == list(range(len(parts)))
    assert parts[0].first_frame == 0
    for before, after in zip(parts, parts[1:], strict=False):
        assert after.first_frame == before.first_frame + before.frames
    assert sum(s.frames for s in parts) == len(whole)
    for part in parts:
        alone = decode(part.data)
        expected = whole[part.first_frame : part.first_frame + part.frames]
        assert len(alone) == part.frames, f"segment {part.index}"
        assert part.start_pts == pytest.approx(expected[0][0], abs=1e-6)
        for (time, pixels), (want_time, want_pixels) in zip(alone, expected, strict=True):
            assert time == pytest.approx(want_time, abs=1e-3)  # Matroska keeps milliseconds
            assert np.array_equal(pixels, want_pixels), f"segment {part.index}, frame at {want_time} s"


@pytest.mark.parametrize("name", list(VIDEOS))
def test_segments_decode_alone_to_the_same_pixels(video, name):
    path = video(name)
    parts = list(gops.segments(path, max_seconds=0.5))
    assert len(parts) > 1
    check_segments(path, parts)
    listed = packets(path)
    starts = [p.first_packet for p in gops.plan(path, max_seconds=0.5)]
    assert all(listed[i][1] for i in starts[1:])  # cuts only at keyframes
    for part, next_part in zip(parts, parts[1:], strict=False):
        assert next_part.start_pts - part.start_pts >= 0.5


@pytest.mark.parametrize("name", ["h264-open-gop", "hevc-open-gop"])
def test_keyframes_with_leading_pictures_are_not_cuts(video, name):
    path = video(name)
    rejected = leading_keyframes(path)
    assert rejected, "the encoder made no open-GOP keyframe with leading pictures"
    every = gops.plan(path, max_seconds=0)  # cut at every safe keyframe
    starts = {p.first_packet for p in every}
    assert not starts & set(rejected)
    keyframes = {i for i, (_, key) in enumerate(packets(path)) if key and i}
    assert starts - {0} <= keyframes - set(rejected)
    check_segments(path, list(gops.segments(path, every)))


@pytest.mark.parametrize("name", ["h264-open-gop", "hevc-open-gop"])
def test_a_cut_at_a_keyframe_with_leading_pictures_loses_frames(video, name):
    """The rule is needed: decoding from such a keyframe alone drops (or corrupts) its leading pictures."""
    path = video(name)
    whole = decode(path)
    count = len(packets(path))
    for cut in leading_keyframes(path):
        naive = [SegmentPlan(0, 0, cut, 0, cut, 0.0, 0), SegmentPlan(1, cut, count, cut, count - cut, 0.0, 0)]
        frames = [frame for part in gops.segments(path, naive) for frame in decode(part.data)]
        same = len(frames) == len(whole) and all(np.array_equal(a[1], b[1]) for a, b in zip(frames, whole, strict=True))
        assert not same, f"cut at packet {cut}"


def test_h264_open_gop_cuts_at_recovery_points_without_leading_pictures(video):
    """x264's open-GOP keyframes are non-IDR I frames with a recovery point SEI: safe where nothing leads them."""
    path = video("h264-open-gop")
    with av.open(str(path)) as container:
        data = [bytes(p) for p in container.demux(video=0) if p.size]
    starts = [p.first_packet for p in gops.plan(path, max_seconds=0)]
    non_idr = [i for i in starts[1:] if 5 not in h264_nal_types(data[i])]
    assert non_idr, "no cut at a non-IDR keyframe"
    assert set(leading_keyframes(path)).isdisjoint(starts)


def test_max_bytes(video):
    path = video("h264")
    every = gops.plan(path, max_seconds=0)  # one segment per safe cut
    limit = sum(p.size for p in every) // 4
    planned = gops.plan(path, max_seconds=None, max_bytes=limit)
    assert 1 < len(planned) < len(every)
    for part in planned[:-1]:
        assert part.size >= limit
        # it ends at the first safe cut where its packets reach the limit
        size = 0
        for gop in (p for p in every if p.first_packet >= part.first_packet):
            size += gop.size
            if size >= limit:
                break
        assert (part.end_packet, part.size) == (gop.end_packet, size)
    check_segments(path, list(gops.segments(path, planned)))
    assert len(gops.plan(path, max_seconds=None, max_bytes=10**9)) == 1
    assert len(gops.plan(path, max_seconds=None, max_bytes=1)) == len(every)


def test_max_seconds_cuts_at_the_first_safe_keyframe_past_the_limit(video):
    path = video("vp9")
    starts = [p.start_pts for p in gops.plan(path, max_seconds=0)]
    planned = gops.plan(path, max_seconds=0.7)
    for part, next_part in zip(planned, planned[1:], strict=False):
        assert next_part.start_pts - part.start_pts >= 0.7
        assert next_part.start_pts == min(t for t in starts if t - part.start_pts >= 0.7)


def test_a_single_keyframe_gives_one_segment(tmp_path):
    path = make_video(tmp_path / "one.mp4", "libx264", {"x264-params": "keyint=1000:scenecut=0:bframes=3"})
    assert sum(key for _, key in packets(path)) == 1
    parts = list(gops.segments(path, max_seconds=0.1, max_bytes=1))
    assert len(parts) == 1
    check_segments(path, parts)


def test_a_servers_frame_limit_cuts_segments_at_the_last_safe_keyframe_that_keeps_within_it(tmp_path):
    path = make_video(tmp_path / "gop10.mp4", "libx264", {"g": "10", "bf": "0"}, frames=95)
    gop = [p.frames for p in gops.plan(path, max_seconds=0)]  # every safe cut: the GOPs
    assert len(gop) >= 8
    for limit in (5, 25, 40):
        parts = [p.frames for p in gops.plan(path, max_seconds=None, max_frames=limit)]
        assert sum(parts) == 95
        # Whole GOPs, as many as fit: each segment is within the limit (or one GOP longer than it), and the next
        # GOP would not have fitted.
        ends = list(np.cumsum(gop))
        position = 0
        for frames in parts:
            assert position + frames in ends
            assert frames <= limit or frames in gop, (limit, parts, gop)
            following = [e for e in ends if e > position + frames]
            if following:
                assert following[0] - position > limit, (limit, parts, gop)
            position += frames
    assert [p.frames for p in gops.plan(path, max_seconds=None)] == [95]


def cut_live(path: Path, skip: int = 0, **limits) -> tuple[list[Segment], gops.Cutter]:
    """The file's packets (past the first `skip`) through a Cutter one at a time, as a live source gives them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cutter = gops.Cutter(stream, **limits)
        packets = [p for p in container.demux(stream) if p.size][skip:]
        parts = [s for p in packets if (s := cutter.push(p)) is not None]
        last = cutter.flush()
    return parts + ([last] if last else []), cutter


@pytest.mark.parametrize("name", list(VIDEOS))
def test_a_live_cutter_makes_the_plans_segments_as_the_packets_arrive(video, name):
    path = video(name)
    for limit in (0, 0.5):
        parts, _ = cut_live(path, max_seconds=limit)
        assert len(parts) > 1
        assert [p.frames for p in parts] == [p.frames for p in gops.plan(path, max_seconds=limit)]
        check_segments(path, parts)
        listed = packets(path)
        assert all(p.pts == tuple(sorted(t for t, _ in listed[p.first_frame : p.first_frame + p.frames]))
                   for p in parts)  # fmt: skip


@pytest.mark.parametrize("name", ["h264-open-gop", "hevc-open-gop"])
def test_a_live_cutter_never_cuts_before_leading_pictures(video, name):
    path = video(name)
    parts, _ = cut_live(path, max_seconds=0)
    starts = {p.first_frame for p in parts}
    assert starts and not starts & set(leading_keyframes(path))
    check_segments(path, parts)


def test_a_live_cutter_joining_mid_gop_starts_at_the_next_keyframe(video):
    path = video("h264")
    keyframe = next(i for i, (_, key) in enumerate(packets(path)) if key and i > 5)
    parts, cutter = cut_live(path, skip=5, max_seconds=0.5)
    assert cutter.skipped == keyframe - 5  # they need the keyframe before them
    whole = decode(path)[keyframe:]
    frames = [frame for part in parts for frame in decode(part.data)]
    assert len(frames) == len(whole)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(frames, whole, strict=True))


def test_a_live_cutter_cuts_at_the_last_safe_keyframe_within_a_servers_frame_limit(tmp_path):
    path = make_video(tmp_path / "gop10.mp4", "libx264", {"g": "10", "bf": "0"}, frames=95)
    for limit in (5, 25, 40):
        parts, _ = cut_live(path, max_seconds=None, max_frames=limit)
        assert [p.frames for p in parts] == [p.frames for p in gops.plan(path, max_seconds=None, max_frames=limit)]
        check_segments(path, parts)
