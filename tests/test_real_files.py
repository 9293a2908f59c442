"""Files as users have them, each made here with PyAV, through the CLI and the session's real server: AV1 in
Matroska, audio in codecs MPEG-TS does not carry and in several tracks, a frame size that changes mid-stream."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import collect
from test_long_video import RATE, assert_frame_exact, decoded

from repo.models import Settings
from stream_client import gops
from stream_client.cli import main
from stream_client.probe import layout, probe
from stream_client.sample import make_video, sample_frame
from stream_client.stream import SegmentationStream


def segment(source: Path, out: Path, url: str, *extra: str) -> dict:
    """`segment-video SOURCE` keeping every pixel (threshold 0), in segments of a few frames; its summary."""
    summary = out.with_name("summary.json")
    args = ["--url", url, "--out", str(out), "--threshold", "0", "--segment-seconds", "0.3", "--summary-json"]
    assert main([str(source), *args, str(summary), *extra]) == 0
    return json.loads(summary.read_text())


def test_av1_in_matroska_comes_back_frame_exact_and_is_named_av1(server, tmp_path, capsys):
    source = make_video(tmp_path / "in.mkv", 30, codec="libsvtav1", options={"g": "10", "preset": "12"})
    summary = segment(source, tmp_path / "out.mp4", server.url)
    assert summary["segments"] == 3  # cut at its keyframes, every 10 frames, without re-encoding
    assert_frame_exact(source, tmp_path / "out.mp4")
    assert "re-encoding av1 to mjpeg" in capsys.readouterr().err
    # The codec's name, not its decoder's (libdav1d): a GPU server, whose NVDEC reads AV1, gets it as it is.
    assert probe(source).codec in Settings(device="gpu").server_info().codecs
    with SegmentationStream(server.url) as stream:
        stream.send("as-is", source.read_bytes(), returns="mask")
        assert "reads vp8, vp9, mjpeg, not av1" in collect(stream, {"as-is"})["as-is"]


# ---------------------------------------------------------------- a kit of files
# A kit of files as phones, webcams and editors write them, mostly 160x120 (below HEVC's and VP9's smallest size on
# NVDEC): name -> (encoder, pixel format, width, height, container suffix, encoder options).
KIT = {
    "h264": ("libx264", "yuv420p", 320, 240, ".mp4", {"bf": "2"}),
    "hevc-160x128": ("libx265", "yuv420p", 160, 128, ".mp4", {}),
    "hevc-10bit-160x128-mov": ("libx265", "yuv420p10le", 160, 128, ".mov", {}),
    "hevc-10bit": ("libx265", "yuv420p10le", 320, 240, ".mkv", {}),
    "vp9-160x120-webm-named-mp4": ("libvpx-vp9", "yuv420p", 160, 120, ".webm", {}),
    "av1-mkv": ("libsvtav1", "yuv420p", 160, 120, ".mkv", {"preset": "12"}),
    "mpeg2-ts": ("mpeg2video", "yuv420p", 160, 120, ".ts", {}),
    "mpeg4-bframes-avi": ("mpeg4", "yuv420p", 160, 120, ".avi", {"bf": "2"}),
    "mjpeg-avi": ("mjpeg", "yuvj420p", 160, 120, ".avi", {}),
    "h264-444-97x55": ("libx264", "yuv444p", 97, 55, ".mp4", {}),
    "h264-10bit": ("libx264", "yuv420p10le", 160, 120, ".mp4", {}),
}


def make_kit_file(folder: Path, name: str, frames: int = 30, rate: int = 25) -> Path:
    encoder, pix_fmt, width, height, suffix, options = KIT[name]
    path = folder / f"{name}{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.options = {"g": "10", **options}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(sample_frame(i, height, width), format="rgb24")
            container.mux(stream.encode(frame.reformat(format=pix_fmt)))
        container.mux(stream.encode())
    if "named-mp4" in name:
        path = path.rename(path.with_suffix(".mp4"))
    return path


def refusal(info, path: Path) -> str | None:
    """Why the server of `info` does not take the file as it is (None: it does)."""
    with av.open(str(path)) as container:
        found = container.streams.video[0].codec_context
        return info.refusal(found.codec.canonical_name, *layout(found.pix_fmt), found.width, found.height)


@pytest.mark.parametrize("name", KIT)
def test_every_file_comes_back_whole_converted_only_where_the_decoder_does_not_take_it(server, tmp_path, capsys, name):
    source = make_kit_file(tmp_path, name)
    with SegmentationStream(server.url) as stream:
        info = stream.server_info()
    converted = refusal(info, source)
    out = tmp_path / "out.mp4"
    summary = segment(source, out, server.url)
    assert_frame_exact(source, out)
    err = capsys.readouterr().err
    assert ("re-encoding" in err) == bool(converted), err
    assert summary["frames"] == 30


@pytest.mark.parametrize("suffix, codec", [(".webm", "libvpx-vp9"), (".avi", "mjpeg")])
def test_a_file_that_ends_early_keeps_every_whole_frame_and_says_where_it_ended(server, tmp_path, capsys, suffix,
                                                                                codec):  # fmt: skip
    whole = make_video(tmp_path / f"whole{suffix}", 34, codec=codec, options={"g": "10"})
    segment(whole, tmp_path / "whole.mp4", server.url)
    assert "ends early" not in capsys.readouterr().err
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    summary = segment(cut, tmp_path / "out.mp4", server.url)
    kept = sum(part.frames for part in gops.plan(cut))  # without a frame cut in half at the end (AVI)
    assert 0 < kept < 34 and summary["frames"] == kept
    with av.open(str(cut)) as container:  # PyAV fails on the last packet of the AVI (part of a frame): left out
        stream = container.streams.video[0]
        whole = [f for packet in container.demux(stream) if not packet.is_corrupt for f in packet.decode()]
    times_out, frames_out = decoded(tmp_path / "out.mp4")
    assert len(whole) == len(times_out) == kept
    assert max(abs(float(t - f.pts * f.time_base)) for t, f in zip(times_out, whole, strict=True)) < 1e-3
    assert_nearest(list(frames_out), [f.to_ndarray(format="rgb24") for f in whole])
    err = capsys.readouterr().err
    assert f"the file ends early: {kept} of the 34 frames its container announces" in err, err


# ---------------------------------------------------------------- audio
# A track: (encoder, sample rate, channel layout); None: an AAC track that holds no packets.
Track = tuple[str, int, str] | None


def make_with_audio(path: Path, video_codec: str, tracks: list[Track], frames: int = 25) -> Path:
    """A video with audio tracks as long as it, each a sweeping tone of its own pitch (a track mixed up with another,
    or shifted in time, no longer matches its source)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=RATE)
        video.width, video.height = 64, 48
        video.pix_fmt = "yuvj444p" if video_codec == "mjpeg" else "yuv420p"
        video.codec_context.options = {"g": "10"}
        sounds = []
        for spec in tracks:
            encoder, rate, layout = spec or ("aac", 8000, "mono")
            stream = container.add_stream(encoder, rate=rate)
            stream.layout = layout
            sounds.append((stream, [0]) if spec else None)
        for i in range(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(sample_frame(i, 48, 64), format="rgb24")))
            for number, (stream, done) in ((n, s) for n, s in enumerate(sounds) if s):
                while done[0] < (i + 1) * stream.rate // RATE:
                    t = np.arange(done[0], done[0] + 1024) / stream.rate
                    tone = 0.3 * np.sin(2 * np.pi * (200 + 90 * number) * t * (1 + t))
                    chunk = np.repeat(tone[None].astype(np.float32), stream.layout.nb_channels, axis=0)
                    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
                    frame.sample_rate, frame.pts = stream.rate, done[0]
                    container.mux(stream.encode(frame))
                    done[0] += 1024
        container.mux(video.encode())
        for stream, _ in filter(None, sounds):
            container.mux(stream.encode())
    return path


def sound(path: Path, track: int) -> tuple[float, int, np.ndarray]:
    """Audio track `track` of `path`, decoded: (the time of its first sample, its sample rate, its samples, mono)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[track]
        rate = stream.codec_context.sample_rate
        mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
        frames = list(container.decode(stream))
        samples = np.concatenate([f.to_ndarray()[0] for frame in frames for f in mono.resample(frame)])
        return float(frames[0].time), rate, samples


def assert_same_sound(source: Path, track: int, out: Path, out_track: int) -> None:
    """The output's track sounds as the source's, at the same times (to a millisecond: Matroska's timestamps), as long
    (to a packet: an encoder's priming packet before 0 s is not copied), to the codecs' loss."""
    start, rate, a = sound(source, track)
    out_start, out_rate, b = sound(out, out_track)
    assert out_rate == rate
    nominal = round((out_start - start) * rate)  # b[i] sounds at a[i + shift]
    assert 0 <= nominal < 0.05 * rate and abs(len(a) - nominal - len(b)) < 0.05 * rate, (nominal, len(a), len(b))
    edge = rate // 20

    def correlation(shift: int) -> float:
        length = min(len(a) - shift, len(b))
        return np.corrcoef(a[shift + edge : shift + length - edge], b[edge : length - edge])[0, 1]

    best = max(correlation(max(shift, 0)) for shift in range(nominal - rate // 1000 - 1, nominal + rate // 1000 + 2))
    assert best > 0.9, best


AUDIO_CASES = {
    # name: (container, video codec, tracks, what the output gets of each)
    "mp3-in-avi": (".avi", "mjpeg", [("libmp3lame", 22050, "mono")], ["copied"]),
    "opus-in-webm": (".webm", "libvpx-vp9", [("libopus", 48000, "stereo")], ["transcoded to aac"]),
    "pcm-in-avi": (".avi", "mjpeg", [("pcm_s16le", 8000, "mono")], ["transcoded to aac"]),
    "pcm-in-mov": (".mov", "libx264", [("pcm_s16le", 16000, "stereo")], ["transcoded to aac"]),
    "five-tracks-in-mkv": (
        ".mkv", "mjpeg",
        [("aac", 8000, "mono"), ("libopus", 48000, "mono"), None, ("mp2", 32000, "stereo"), ("ac3", 48000, "stereo")],
        ["copied", "transcoded to aac", "left out", "copied", "copied"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_every_audio_track_comes_along_copied_or_transcoded_and_the_run_says_which(server, tmp_path, capsys, case):
    suffix, video_codec, tracks, outcomes = AUDIO_CASES[case]
    source = make_with_audio(tmp_path / f"in{suffix}", video_codec, tracks)
    out = tmp_path / "out.mp4"
    summary = segment(source, out, server.url)
    assert_frame_exact(source, out)
    assert [track["outcome"] for track in summary["audio"]] == outcomes
    carried = [number for number, outcome in enumerate(outcomes) if outcome != "left out"]
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == len(carried)
    for out_track, track in enumerate(carried):
        assert_same_sound(source, track, out, out_track)
    err = capsys.readouterr().err
    for number, outcome in enumerate(outcomes, 1):
        codec = summary["audio"][number - 1]["codec"]
        if outcome == "transcoded to aac":
            assert f"audio {number} ({codec}) transcoded to aac: MPEG-TS does not carry {codec}" in err
        if outcome == "left out":
            assert f"audio {number} ({codec}) left out: the track holds no sound" in err


# ---------------------------------------------------------------- a size that changes mid-stream
def joined_recordings(path: Path, codec: str, sizes: list[tuple[int, int]], each: int = 15) -> Path:
    """Recordings of different sizes (W, H) joined at a keyframe, as an editor or a camera's restart leaves them: an
    encoder per recording, all in one stream (H.264 in MPEG-TS and VP8 carry the size with each keyframe)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuv420p"
        for part, (width, height) in enumerate(sizes):
            encoder = stream.codec_context if part == 0 else av.CodecContext.create(codec, "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate, encoder.options = Fraction(1, RATE), Fraction(RATE), {"g": "10"}
            for i in range(part * each, (part + 1) * each):
                frame = av.VideoFrame.from_ndarray(sample_frame(i, height, width), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, RATE)
                for packet in [*encoder.encode(frame), *([] if i < (part + 1) * each - 1 else encoder.encode(None))]:
                    packet.stream = stream
                    container.mux(packet)
    return path


def frames_of(paths: list[Path]) -> list[av.VideoFrame]:
    frames = []
    for path in paths:
        with av.open(str(path), format="mpegts" if path.suffix == ".ts" else None) as container:
            frames += [frame.reformat(format="rgb24") for frame in container.decode(video=0)]
    return frames


def assert_nearest(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """Each frame of `got` is its own counterpart up to the codecs' loss (a few levels on average; a frame stretched
    instead of letterboxed is 38 off) and nearer to it than to any other of its size."""
    assert [g.shape for g in got] == [e.shape for e in expected]
    for i, frame in enumerate(got):
        same = [j for j, e in enumerate(expected) if e.shape == frame.shape]
        distance = [np.abs(frame.astype(np.int16) - expected[j].astype(np.int16)).mean() for j in same]
        assert same[int(np.argmin(distance))] == i and distance[same.index(i)] < 5, (i, distance)


def letterboxed(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """The frame scaled to fit (height, width) with its aspect kept, centred on black: what the MP4 should hold."""
    scale = min(height / frame.height, width / frame.width)
    h, w = round(frame.height * scale), round(frame.width * scale)
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    return out


@pytest.mark.parametrize(
    "suffix, codec, sizes",
    [(".ts", "libx264", [(160, 120), (128, 96)]), (".webm", "libvpx", [(160, 120), (128, 96)]),
     (".webm", "libvpx", [(160, 120), (96, 96)])],
    ids=["h264-in-ts", "vp8-in-webm", "vp8-in-webm-to-square"],
)  # fmt: skip
def test_a_size_change_is_kept_in_the_segments_and_scaled_in_the_mp4_and_said(server, tmp_path, capsys, suffix, codec,
                                                                               sizes):  # fmt: skip
    source = joined_recordings(tmp_path / f"in{suffix}", codec, sizes)
    out = tmp_path / "out.mp4"
    summary = segment(source, out, server.url)
    original = frames_of([source])
    change = next(i for i, frame in enumerate(original) if (frame.width, frame.height) != sizes[0])
    seconds = float(original[change].time - original[0].time)
    (first, second) = (f"{w}x{h}" for w, h in sizes)
    where = f"{first} to {second} at frame {change} ({seconds:.2f} s)"
    err = capsys.readouterr().err
    assert f"the video changes size: {where}" in err and f"scaled to {first}, their aspect kept" in err, err
    assert summary["size_changes"] == [f"{where}, scaled to {first} in the MP4"]
    # The segments, what the playlist plays, hold each frame at its own size.
    segments = sorted((tmp_path / "out.mp4.parts").glob("segment_*.ts"))
    assert_nearest([f.to_ndarray() for f in frames_of(segments)], [f.to_ndarray() for f in original])
    # The MP4 holds one size, the first: the other frames scaled to it, their aspect kept, at their own times.
    mp4 = frames_of([out])
    assert [f.time for f in mp4] == pytest.approx([f.time for f in original], abs=1e-3)
    width, height = sizes[0]
    assert_nearest([f.to_ndarray() for f in mp4], [letterboxed(f, height, width) for f in original])
