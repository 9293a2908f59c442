"""Files as users have them, each made here with PyAV, through the CLI and the session's real server: AV1 in
Matroska, audio in codecs MPEG-TS does not carry and in several tracks, a frame size that changes mid-stream."""

import json
from pathlib import Path

from helpers import collect
from test_long_video import assert_frame_exact

from repo.models import Settings
from stream_client.cli import main
from stream_client.probe import probe
from stream_client.sample import make_video
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
