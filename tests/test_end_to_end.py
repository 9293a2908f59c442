"""Videos streamed through the real tritonserver on loopback: every frame back once, in order, as the reference.

Tolerance against the in-process reference: the server batches frames differently (dynamic batching), so
probabilities may differ in the last float bits; a pixel whose probability is that close to the threshold may
flip. At most 0.1 % of the values may differ, and every frame must match the reference to that tolerance.
"""

import re
import urllib.request

import numpy as np
import pytest
from conftest import CPU_VIDEO, SETTINGS, VP9_VIDEO
from helpers import collect
from reference import segmented as reference

from pipelines.mask import class_index
from stream_client.reorder import Reorderer
from stream_client.videos import frames as pyav_frames

MAX_DIFFERENT = 1e-3


def in_order(chunks) -> np.ndarray:
    reorder = Reorderer()
    frames = [f for c in chunks for f in reorder.push(c.first, c.frames)]
    reorder.finish()
    return np.stack(frames)


def assert_matches(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    different = np.mean(got != expected)
    assert different <= MAX_DIFFERENT, f"{different:.2%} of the values differ from the reference"


@pytest.mark.parametrize("frames", [21, 24], ids=["not-a-multiple-of-the-chunk", "a-multiple-of-the-chunk"])
@pytest.mark.parametrize("kind", [CPU_VIDEO, VP9_VIDEO], ids=["mjpeg", "vp9"])
def test_every_frame_comes_back_once_in_order(stream, video, frames, kind):
    data = video(frames, width=64, height=48, **kind)
    stream.send("v", data, class_name="pottedplant", threshold=0.2)
    chunks = collect(stream, {"v"})["v"]
    assert not isinstance(chunks, str), chunks
    assert sorted(c.first for c in chunks) == list(range(0, frames, SETTINGS.frames_per_chunk))
    got = in_order(chunks)
    assert len(got) == len(list(pyav_frames(data))) == frames
    assert_matches(got, reference(data, SETTINGS, class_index("pottedplant"), 0.2))
    assert 0 < np.count_nonzero(got) < got.size  # the mask keeps some pixels and drops others


def test_two_videos_at_once_on_one_stream_do_not_mix(stream, video):
    a = video(19, width=64, height=48, **CPU_VIDEO)
    b = video(13, width=48, height=32, **VP9_VIDEO)
    stream.send("a", a, class_name="pottedplant", threshold=0.2)
    stream.send("b", b, class_name="pottedplant", threshold=0.2)
    results = collect(stream, {"a", "b"})
    assert_matches(in_order(results["a"]), reference(a, SETTINGS, class_index("pottedplant"), 0.2))
    assert_matches(in_order(results["b"]), reference(b, SETTINGS, class_index("pottedplant"), 0.2))


def test_class_and_threshold_change_the_output_as_they_should(stream, video):
    data = video(8, width=64, height=48, **CPU_VIDEO)
    original = np.stack(list(pyav_frames(data)))
    requests = {
        "keep-all": ("person", 0.0),
        "keep-none": ("person", 1.0),
        "plant": ("pottedplant", 0.2),
        "cat": ("cat", 0.05),
        "defaults": (None, None),
    }
    for name, (class_name, threshold) in requests.items():
        stream.send(name, data, class_name=class_name, threshold=threshold)
    results = {name: in_order(chunks) for name, chunks in collect(stream, set(requests)).items()}
    np.testing.assert_array_equal(results["keep-all"], original)  # every probability is above 0
    assert not results["keep-none"].any()  # none is above 1
    assert_matches(results["plant"], reference(data, SETTINGS, class_index("pottedplant"), 0.2))
    assert_matches(results["cat"], reference(data, SETTINGS, class_index("cat"), 0.05))
    assert np.mean(results["plant"] != results["cat"]) > 0.05
    assert_matches(results["defaults"], reference(data, SETTINGS, class_index("person"), 0.5))


@pytest.mark.parametrize(
    "class_name,threshold,returns,message",
    [
        ("unicorn", None, "segmented", "unknown class 'unicorn'"),
        (None, 1.5, "segmented", "threshold must be a number in \\[0, 1\\]"),
        (None, None, "everything", "returns must be one of segmented, mask, both"),
    ],
)
def test_parameters_that_make_no_sense_are_refused(stream, video, class_name, threshold, returns, message):
    stream.send("bad", video(4, **CPU_VIDEO), class_name=class_name, threshold=threshold, returns=returns)
    result = collect(stream, {"bad"})["bad"]
    assert isinstance(result, str)
    assert re.search(message, result), result


def test_a_request_chooses_what_comes_back(stream, video):
    data = video(11, width=64, height=48, **CPU_VIDEO)
    for returns in ("mask", "both"):
        stream.send(returns, data, class_name="pottedplant", threshold=0.2, returns=returns)
    results = collect(stream, {"mask", "both"})
    expected = reference(data, SETTINGS, class_index("pottedplant"), 0.2)
    masks = {}
    for returns in ("mask", "both"):
        chunks = sorted(results[returns], key=lambda c: c.first)
        masks[returns] = np.concatenate([c.mask for c in chunks])
        assert masks[returns].shape == (11, *SETTINGS.model_size) and masks[returns].dtype == np.uint8
        assert set(np.unique(masks[returns])) <= {0, 1}
    assert all(c.frames is None for c in results["mask"])
    assert_matches(in_order(results["both"]), expected)
    np.testing.assert_array_equal(masks["mask"], masks["both"])
    # The mask at the model's size (64x64), sampled at the frame's pixels (48x64, nearest), is what the frames kept
    # (up to the frames' black pixels, which look dropped when kept, and rounding at the sampling edges).
    kept = np.stack([f.any(-1) for f in expected])
    rows = ((np.arange(48) + 0.5) * 64 / 48).astype(int)
    assert np.mean(masks["mask"][:, rows].astype(bool) != kept) <= 0.01


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_the_entry_model_counts_frames_chunks_and_videos_on_the_metrics_endpoint(server, stream, video):
    before = {m: metric(server, m) for m in ("segment_video_frames_total", "segment_video_chunks_total")}
    failed_before = metric(server, 'segment_video_videos_total{outcome="failed"}')
    stream.send("counted", video(19, **CPU_VIDEO))
    stream.send("refused", b"not a video")
    collect(stream, {"counted", "refused"})
    assert metric(server, "segment_video_frames_total") - before["segment_video_frames_total"] == 19
    assert metric(server, "segment_video_chunks_total") - before["segment_video_chunks_total"] == 3
    assert metric(server, 'segment_video_videos_total{outcome="failed"}') - failed_before == 1
    assert metric(server, "segment_video_chunk_latency_us_total") > 0
