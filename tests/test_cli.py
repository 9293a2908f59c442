"""The command a user runs: an H.264 MP4 segmented through a server that decodes on the CPU, written as a video."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import SETTINGS

from repo.serve import ServerError, TritonServer
from stream_client.cli import main


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_h264_mp4_is_reencoded_for_the_cpu_server_and_every_frame_is_written(server, video_file, tmp_path, capsys):
    source = video_file(23, width=66, height=50)
    out = tmp_path / "segmented.mp4"
    summary = tmp_path / "summary.json"
    images = tmp_path / "images"
    code = main(
        [
            str(source),
            "--url",
            server.url,
            "--out",
            str(out),
            "--summary-json",
            str(summary),
            "--class",
            "pottedplant",
            "--threshold",
            "0.2",
            "--dump-images",
            str(images),
        ]
    )
    assert code == 0
    assert count_frames(out) == count_frames(source) == 23
    report = json.loads(summary.read_text())
    assert report["frames"] == 23 and report["reencoded_to"] == "mjpeg" and report["first_chunk_seconds"] > 0
    assert len(list(images.glob("original_*.png"))) == len(list(images.glob("segmented_*.png"))) == 23
    err = capsys.readouterr().err
    assert "re-encoding h264 to mjpeg" in err and err.count("chunk ") == 3  # 23 frames in chunks of 8


@pytest.mark.parametrize("returns", ["mask", "both"])
def test_the_mask_is_written_as_a_grayscale_matte_video_beside_the_output(server, video_file, tmp_path, returns):
    source = video_file(19, width=80, height=48)
    out = tmp_path / "out.mp4"
    args = ["--url", server.url, "--out", str(out), "--threshold", "0.2", "--class", "pottedplant"]
    assert main([str(source), *args, "--returns", returns, "--segment-seconds", "0.3"]) == 0
    matte = tmp_path / "out_matte.mp4"
    assert out.exists() == (returns == "both")
    with av.open(str(matte)) as container:
        stream = container.streams.video[0]
        # At the model's size, shown at the source's shape (80x48: 5:3) through the pixel aspect ratio.
        assert (stream.codec_context.height, stream.codec_context.width) == SETTINGS.model_size
        assert stream.sample_aspect_ratio * stream.codec_context.width / stream.codec_context.height == Fraction(5, 3)
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    assert len(frames) == count_frames(source) == 19
    values = np.concatenate([f.ravel() for f in frames])
    assert ((values < 40) | (values > 215)).mean() > 0.99  # black or white: a mask
    assert 0.01 < (values > 128).mean() < 0.99
    with av.open(str(source)) as a, av.open(str(matte)) as b:
        assert [f.time for f in a.decode(video=0)] == pytest.approx([f.time for f in b.decode(video=0)], abs=1e-3)


def test_errors_are_one_clear_line(server, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a video")
    assert main([str(bad), "--url", server.url, "--out", str(tmp_path / "x.mp4")]) == 1
    assert "not a video container FFmpeg can read" in capsys.readouterr().err
    assert main([str(bad), "--url", "127.0.0.1:1", "--out", str(tmp_path / "x.mp4")]) == 1


def test_where_to_watch_a_run_is_said_once_it_runs_and_an_error_run_says_only_its_error(
    server, video_file, tmp_path, capsys
):
    source = video_file(9)
    out = tmp_path / "out.mp4"
    # Refused before it starts: a file that is not a video, a server that is not there. The error, and nothing else.
    bad = tmp_path / "notes.txt"
    bad.write_text("not a video")
    for video, url in ((bad, server.url), (source, "127.0.0.1:1")):
        assert main([str(video), "--url", url, "--out", str(out)]) == 1
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("segment-video: error: "), line
        assert not (tmp_path / "out.mp4.parts").exists()
    assert main([str(source), "--url", server.url, "--out", str(out), "--returns", "mask"]) == 0
    lines = capsys.readouterr().err.splitlines()
    watch = [i for i, line in enumerate(lines) if line.startswith("watch it while it runs: ")]
    assert len(watch) == 1 and lines[watch[0]].endswith("out.mp4.parts/matte.m3u8")
    assert watch[0] < min(i for i, line in enumerate(lines) if " chunk " in line)


def test_local_server_is_started_and_stopped_by_the_cli(video_file, tmp_path):
    source = video_file(10, width=32, height=32, codec="libvpx-vp9", suffix=".webm")
    out = tmp_path / "out.mp4"
    args = ["--random-weights", "0", "--model-size", "32", "32", "--frames-per-chunk", "4", "--decoder-instances", "1"]
    assert main([str(source), "--out", str(out), *args]) == 0
    assert count_frames(out) == 10


def test_segmenter_refuses_to_start_without_weights(tmp_path):
    from repo.build import build
    from repo.models import Settings

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    repository = build(Settings(model_size=(32, 32)), tmp_path / "repo", weights=weights)
    (repository / "segmenter" / "1" / "fcn_resnet101.pt").unlink()
    with pytest.raises(ServerError, match="no weights file"):
        TritonServer(repository, ready_timeout=120).start()
