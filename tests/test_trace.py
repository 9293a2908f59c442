"""The benchmark's trace tables (benchmarks/triton_trace.py) from a real tritonserver's trace of a short video."""

import math
import sys
import time
from pathlib import Path

from conftest import CPU_VIDEO
from helpers import collect

from repo.build import build
from repo.models import Settings, server_args
from repo.serve import TritonServer
from stream_client import gops
from stream_client.stream import SegmentationStream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import triton_trace  # noqa: E402

FRAMES_PER_CHUNK = 8
SETTINGS = Settings(model_size=(32, 32), frames_per_chunk=FRAMES_PER_CHUNK, max_batch=16, random_weights_seed=0)


def test_steps_and_chunk_time_line_from_a_real_trace(tmp_path, video_file):
    # 28 frames at 25 frames/s, cut at 0.6 s: segments of 15 and 13 frames; with 8 frames a chunk, 2 + 2 chunks.
    source = video_file(28, codec=CPU_VIDEO["codec"], suffix=CPU_VIDEO["suffix"])
    segments = list(gops.segments(source, gops.plan(source, max_seconds=0.6)))
    assert [s.frames for s in segments] == [15, 13]
    whole = source.read_bytes()
    expected = {f"s{s.index}": math.ceil(s.frames / FRAMES_PER_CHUNK) for s in segments}
    expected["whole"] = math.ceil(28 / FRAMES_PER_CHUNK)
    path = tmp_path / "trace.json"
    repository = build(SETTINGS, tmp_path / "repo")
    with TritonServer(repository, args=server_args(SETTINGS) + triton_trace.server_args(path)) as server:
        with SegmentationStream(server.url, idle_timeout=60) as stream:
            stream.send("warm-up", segments[-1].data, returns="mask")  # before the window: left out of the tables
            collect(stream, {"warm-up"})
            since = time.monotonic_ns()
            for s in segments:
                stream.send(f"s{s.index}", s.data, returns="segmented")
            stream.send("whole", whole, returns="mask")
            results = collect(stream, set(expected))
            until = time.monotonic_ns()
    received = {video: len(chunks) for video, chunks in results.items()}
    assert received == expected, results

    requests = triton_trace.load(path)
    videos = triton_trace.videos(requests, since, until)
    assert sorted(v.request_id for v in videos) == sorted(expected)

    rows = {row["model"]: row for row in triton_trace.steps(requests, videos)}
    assert list(rows) == list(triton_trace.STEPS)  # every step of both ensembles, in the chunks' order
    chunks = sum(expected.values())
    counts = {"segment_video": len(segments), "segment_video_mask": 1, "check_video": len(segments) + 1,
              "video_decoder": len(segments), "input_decoder": 1, "segmenter": chunks,
              "masker": chunks - expected["whole"], "class_masker": expected["whole"]}  # fmt: skip
    assert {model: row["requests"] for model, row in rows.items()} == counts
    for model, row in rows.items():
        phases = ["total"] if model in triton_trace.ENSEMBLES else list(triton_trace.PHASES)
        for phase in phases:
            assert row[phase]["median_ms"] > 0 and row[phase]["p90_ms"] >= row[phase]["median_ms"], (model, phase)
        assert 1 <= row["executions"] <= row["requests"] or model in triton_trace.ENSEMBLES

    timeline = triton_trace.chunks(requests, videos)
    per_video = {v: sum(1 for r in timeline if r["video"] == v) for v in expected}
    assert per_video == expected
    for r in timeline:
        assert None not in r.values(), r
        assert 0 <= r["decoded"] <= r["segmenter_start"] <= r["segmenter_end"], r
        assert r["segmenter_start"] <= r["masker_start"] <= r["masker_end"], r
        assert r["masker_start"] <= r["sent"] and r["decode_ms"] > 0, r
    for video in expected:  # a video's chunks leave the decoder in order
        decoded = [r["decoded"] for r in timeline if r["video"] == video]
        assert [r["chunk"] for r in timeline if r["video"] == video] == list(range(expected[video]))
        assert decoded == sorted(decoded)

    legs = triton_trace.legs(timeline)
    assert all(legs[leg]["median_ms"] > 0 for leg in ("decode", "segmenter", "masker", "decoded_to_sent")), legs
    table = triton_trace.format_steps(triton_trace.steps(requests, videos))
    assert all(f"\n{model} | " in table for model in triton_trace.STEPS)
    assert f"{chunks} chunks" in triton_trace.format_chunks(timeline)
