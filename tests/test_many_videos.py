"""Many videos in one run of the CLI: named files and folders on one server, segments of several videos in flight in
one window, an output each, frame-exact; a broken file fails alone; --resume goes on with the unfinished ones."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import as_a_foreground_job
from test_long_video import assert_frame_exact, make_av

from stream_client.manifest import Manifest
from stream_client.sample import make_video
from stream_client.segment import parts_folder

LOCAL = ["--random-weights", "0", "--model-size", "32", "32", "--frames-per-chunk", "4", "--decoder-instances", "2"]


def mixed_videos(folder: Path) -> dict[str, Path]:
    """H.264 with B-frames and audio (3 segments of 0.4 s), MJPEG in Matroska, VP9 in WebM."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "a": make_av(folder / "a.mp4", 30),
        "b": make_video(folder / "b.mkv", 14, codec="mjpeg"),
        "c": make_video(folder / "c.webm", 11, codec="libvpx-vp9"),
    }


def test_three_videos_and_a_folder_give_one_local_server_and_an_output_each_frame_exact(tmp_path):
    named = mixed_videos(tmp_path / "named")
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    folder = [make_av(clips / "d.mp4", 21, audio=False), make_video(clips / "sub" / "e.mkv", 9, codec="mjpeg")]
    (clips / "notes.txt").write_text("not a video: passed over")
    out = tmp_path / "out"
    summary = tmp_path / "summary.json"
    args = [*map(str, named.values()), str(clips), "--recursive", "--out-dir", str(out), "--threshold", "0",
            "--segment-seconds", "0.3", "--window", "8", "--summary-json", str(summary), *LOCAL]  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "stream_client", *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("starting a local tritonserver") == 1  # one server for the whole run
    outputs = {
        named["a"]: out / "a_segmented.mp4",
        named["b"]: out / "b_segmented.mp4",
        named["c"]: out / "c_segmented.mp4",
        folder[0]: out / "d_segmented.mp4",
        folder[1]: out / "sub" / "e_segmented.mp4",  # where it was in its folder
    }
    for source, output in outputs.items():
        assert_frame_exact(source, output)
        assert parts_folder(output).is_dir() and output.with_name(output.stem + "_timeline.csv").exists()
    # A line per video as it finished, then the table: a row each.
    for source in outputs:
        assert re.search(rf"^{re.escape(str(source))}: \d+ frames", run.stdout, re.MULTILINE), run.stdout
    table = run.stdout[run.stdout.index("video ") :].splitlines()
    assert table[0].split() == ["video", "frames", "frames/s", "kept", "errors"] and len(table) == 1 + len(outputs)
    report = json.loads(summary.read_text())
    assert [v["state"] for v in report["videos"]] == ["finished"] * len(outputs)
    assert report["most_videos_in_flight"] >= 2  # short clips shared the window
    assert [v["summary"]["frames"] for v in report["videos"]] == [30, 14, 11, 21, 9]


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream_client", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_a_foreground_job)  # fmt: skip


def test_a_broken_video_fails_alone_and_resume_goes_on_with_the_unfinished_ones(server, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    first = make_av(clips / "1_first.mp4", 20, audio=False)
    (clips / "2_broken.mp4").write_bytes(bytes(range(256)) * 40)  # a video's name, not a video
    last = make_video(clips / "3_last.webm", 60, codec="libvpx-vp9", options={"g": "10"})  # 6 segments of 0.4 s
    out = tmp_path / "out"
    args = [str(clips), "--out-dir", str(out), "--url", server.url, "--threshold", "0", "--segment-seconds", "0.3",
            "--window", "1"]  # fmt: skip
    run = cli(*args)
    # Stopped (Ctrl-C) once the first video is written and the last one has finished a segment.
    last_parts = parts_folder(out / "3_last_segmented.mp4")
    deadline = time.monotonic() + 180
    while not ((out / "1_first_segmented.mp4").exists() and (m := Manifest.load(last_parts)) and m.done):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    done_before = set(Manifest.load(last_parts).done)
    assert done_before and len(done_before) < 6

    resumed = cli(*args, "--resume", "--summary-json", str(tmp_path / "summary.json"))
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 1, err
    assert err.splitlines()[-1] == f"segment-video: error: 1 of 3 videos failed: {clips / '2_broken.mp4'}", err
    assert re.search(r"2_broken\.mp4: failed: .*not a video container FFmpeg can read", stdout), stdout
    assert_frame_exact(first, out / "1_first_segmented.mp4")
    assert_frame_exact(last, out / "3_last_segmented.mp4")
    report = {Path(v["source"]).name: v for v in json.loads((tmp_path / "summary.json").read_text())["videos"]}
    assert report["1_first.mp4"]["summary"]["frames_this_run"] == 0  # finished before: kept
    again = report["3_last.webm"]["summary"]
    assert again["frames"] == 60 and again["frames_this_run"] == 60 - 10 * len(done_before)
    assert report["2_broken.mp4"]["state"] == "failed" and not parts_folder(out / "2_broken_segmented.mp4").exists()
