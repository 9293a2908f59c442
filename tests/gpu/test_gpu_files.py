"""Files as users have them, on a GPU server, both targets: what NVDEC takes goes as it is, the rest is converted by
the client (the server said what its GPU decodes), and every frame comes back; refused requests leave nothing behind.

The CPU lane's tests of real files, live sources and many videos run here too, against the GPU server."""

import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers
from helpers import collect  # noqa: E402
from test_live import (  # noqa: E402, F401
    test_a_stream_on_stdin_is_listed_while_it_plays_and_its_mp4_has_every_frame_in_order,
)
from test_long_video import decoded, make_av  # noqa: E402
from test_many_videos import test_a_broken_video_fails_alone_and_resume_goes_on_with_the_unfinished_ones  # noqa: E402, F401
from test_real_files import (  # noqa: E402, F401
    KIT,
    make_kit_file,
    refusal,
    segment,
    test_a_size_change_is_kept_in_the_segments_and_scaled_in_the_mp4_and_said,
    test_every_audio_track_comes_along_copied_or_transcoded_and_the_run_says_which,
    test_every_file_comes_back_whole_converted_only_where_the_decoder_does_not_take_it,
)

from repo import nvdec
from repo.serve import memory_by_process
from stream_client.stream import SegmentationStream


def test_the_server_says_what_its_gpu_decodes_as_nvdec_and_dali_found_it(server):
    with SegmentationStream(server.url) as stream:
        info = stream.server_info()
    listed = {(c.codec, c.chroma, c.bit_depth): c for c in nvdec.capabilities(0)}
    assert ("h264", "420", 8) in {(f.codec, f.chroma, f.bit_depth) for f in info.formats}
    for f in info.formats:
        caps = listed[(f.codec, f.chroma, f.bit_depth)]  # nothing NVDEC does not list
        assert (f.min_size, f.max_size) == (caps.min_size, caps.max_size)
    assert not {"mjpeg", "mpeg2video"} & set(info.codecs)  # DALI's GPU variant refuses both, whatever NVDEC says


def test_refused_requests_leave_the_decoders_as_they_were_and_a_long_60fps_clip_comes_back_whole(server, tmp_path):
    """Ten requests the server refuses (sent as they are, past the client's conversion), then a 40 s clip at 60 frames/s
    in 20 segments (the clip that once crashed a decoder after a run of refused files): whole, with the server's
    memory (host and GPU) where it was."""
    clip = make_av(tmp_path / "clip60.mp4", 2400, width=160, height=120, rate=60,
                   options={"x264-params": "keyint=60:min-keyint=30:bframes=3"})  # fmt: skip
    segment(clip, tmp_path / "warm.mp4", server.url)  # the decoders' pipelines made once
    before = _memory(server)
    with SegmentationStream(server.url) as stream:
        files = {name: make_kit_file(tmp_path, name) for name in KIT}
        refused = [name for name, path in files.items() if refusal(stream.server_info(), path)]
        assert len(refused) >= 8, refused
        for name in [*refused, *refused][:10]:
            stream.send(name, files[name].read_bytes(), returns="mask")
            assert "cannot decode the video" in collect(stream, {name})[name], name
    summary = segment(clip, tmp_path / "out.mp4", server.url, "--segment-seconds", "2")
    assert summary["frames"] == 2400 and summary["segments"] >= 20
    times_in, frames_in = decoded(clip)
    times_out, frames_out = decoded(tmp_path / "out.mp4")  # every frame, in order, at its time, each its own
    assert len(times_out) == 2400 and max(abs(float(a - b)) for a, b in zip(times_in, times_out, strict=True)) < 1e-3
    assert max(np.abs(a.astype(np.int16) - b).mean() for a, b in zip(frames_in, frames_out, strict=True)) < 6
    after = _memory(server)
    for key, value in before.items():
        assert after[key] - value < 256, (key, before, after)  # MiB


def _memory(server) -> dict[str, float]:
    """MiB: host memory of the server and its stubs (by model), GPU memory of each of their processes together."""
    host = {name: m["anon"] for name, m in memory_by_process(server.proc.pid).items()}
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    rows = [line.split(",") for line in subprocess.run(query, capture_output=True, text=True).stdout.splitlines()]
    host["gpu"] = sum(float(used) for _, used in rows)
    return host
