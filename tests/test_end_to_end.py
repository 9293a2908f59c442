"""Videos streamed through the real tritonserver on loopback: every frame back once, in order, as the reference.

Tolerance against the in-process reference: the server batches frames differently (dynamic batching), so
probabilities may differ in the last float bits; a pixel whose probability is that close to the threshold may
flip. At most 0.1 % of the values may differ, and every frame must match the reference to that tolerance.
"""

import io
import re
import urllib.request

import av
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import CPU_VIDEO, SETTINGS, VP9_VIDEO
from helpers import collect
from reference import segmented as reference
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from pipelines.mask import class_index
from repo import models
from stream_client import protocol
from stream_client.reorder import Reorderer
from stream_client.videos import frames as pyav_frames
from stream_client.videos import keep_class

MAX_DIFFERENT = 1e-3


def in_order(chunks, what: str = "segmented") -> np.ndarray:
    reorder = Reorderer()
    frames = [f for c in chunks for f in reorder.push(c.first, getattr(c, what))]
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
    stream.send("v", data, class_name="pottedplant", threshold=0.2, returns="both")
    chunks = collect(stream, {"v"})["v"]
    assert not isinstance(chunks, str), chunks
    assert [c.first for c in chunks] == list(range(0, frames, SETTINGS.frames_per_chunk))  # in order, as they came
    segmented, mask = reference(data, SETTINGS, class_index("pottedplant"), 0.2)
    assert_matches(in_order(chunks), segmented)
    assert_matches(in_order(chunks, "mask"), mask)
    assert len(list(pyav_frames(data))) == frames
    assert 0 < mask.sum() < mask.size  # the mask keeps some pixels and drops others
    rgb = np.concatenate([c.frames for c in chunks])  # the client's RGB view: the video's size
    assert rgb.shape == (frames, 48, 64, 3)


def test_two_videos_at_once_on_one_stream_each_get_their_own_class_and_threshold(stream, video):
    """Several chunks each, so that a decoder must carry its request's values with every chunk, not the first only."""
    a = video(21, width=64, height=48, **CPU_VIDEO)
    b = video(19, width=48, height=32, **VP9_VIDEO)
    requests = {"a": (a, "pottedplant", 0.2), "b": (b, "cat", 0.05)}
    for name, (data, class_name, threshold) in requests.items():
        stream.send(name, data, class_name=class_name, threshold=threshold, returns="both")
    results = collect(stream, set(requests))
    for name, (data, class_name, threshold) in requests.items():
        assert not isinstance(results[name], str), results[name]
        segmented, mask = reference(data, SETTINGS, class_index(class_name), threshold)
        assert_matches(in_order(results[name]), segmented)
        assert_matches(in_order(results[name], "mask"), mask)
    # The other video's values would have given another mask.
    assert np.mean(in_order(results["a"], "mask") != reference(a, SETTINGS, class_index("cat"), 0.05)[1]) > 0.05


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
        stream.send(name, data, class_name=class_name, threshold=threshold, returns="both")
    results = collect(stream, set(requests))
    masks = {name: in_order(chunks, "mask") for name, chunks in results.items()}
    assert masks["keep-all"].all()  # every probability is above 0: the frames come back, to NV12's precision
    kept = np.concatenate([c.frames for c in results["keep-all"]]).astype(int)
    assert np.abs(kept - original).mean() < 2
    assert not masks["keep-none"].any()  # none is above 1: black
    assert (in_order(results["keep-none"])[:, :48] == 16).all()
    for name, class_name, threshold in [
        ("plant", "pottedplant", 0.2),
        ("cat", "cat", 0.05),
        ("defaults", "person", 0.5),
    ]:
        segmented, mask = reference(data, SETTINGS, class_index(class_name), threshold)
        assert_matches(in_order(results[name]), segmented)
        assert_matches(masks[name], mask)
    assert np.mean(masks["plant"] != masks["cat"]) > 0.05


@pytest.mark.parametrize(
    "class_name,threshold,message",
    [("unicorn", None, "unknown class 'unicorn'"), (None, 1.5, "threshold must be a number in \\[0, 1\\]")],
)
def test_parameters_that_make_no_sense_are_refused(stream, video, class_name, threshold, message):
    stream.send("bad", video(4, **CPU_VIDEO), class_name=class_name, threshold=threshold)
    result = collect(stream, {"bad"})["bad"]
    assert isinstance(result, str)
    assert re.search(message, result), result


def test_a_request_chooses_what_comes_back(stream, video):
    data = video(11, width=64, height=48, **CPU_VIDEO)
    for returns in protocol.RETURNS:
        stream.send(returns, data, class_name="pottedplant", threshold=0.2, returns=returns)
    results = collect(stream, set(protocol.RETURNS))
    segmented, mask = reference(data, SETTINGS, class_index("pottedplant"), 0.2)
    assert all(c.segmented is None and c.mask.shape[1:] == SETTINGS.model_size for c in results["mask"])
    assert all(c.mask is None for c in results["segmented"])
    for returns in ("mask", "both"):
        got = in_order(results[returns], "mask")
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
        assert_matches(got, mask)
    for returns in ("segmented", "both"):
        assert_matches(in_order(results[returns]), segmented)


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


DONE = f'nv_inference_request_success{{model="{protocol.ENTRY}"'
FAILED = f'nv_inference_request_failure{{model="{protocol.ENTRY}",reason="OTHER"'


def test_frames_chunks_and_videos_are_counted_on_the_metrics_endpoint(server, stream, video):
    before = {m: metric(server, m) for m in ("segment_video_frames_total", "segment_video_chunks_total", DONE, FAILED)}
    stream.send("counted", video(19, **CPU_VIDEO))
    stream.send("refused", b"not a video")
    collect(stream, {"counted", "refused"})
    after = {m: metric(server, m) - v for m, v in before.items()}
    assert after["segment_video_frames_total"] == 19 and after["segment_video_chunks_total"] == 3
    assert after[DONE] == 1 and after[FAILED] >= 1


def test_a_dali_model_refuses_a_request_for_fewer_than_all_its_outputs_as_tritons_dali_backend_does(server):
    """The runner stands in for dali_backend here: it holds its rules (repo/dali_contract.py), with its message."""
    chunk = np.zeros((1, 2, 48, 64, 3), np.uint8)
    probs = np.ones((1, 2, 1, *SETTINGS.model_size), np.float32)
    tensors = {"FRAMES": chunk, "CLASS_PROBS": probs, "THRESHOLD": np.array([[0.5]], np.float32),
               "FRAME_SIZE": np.array([[48, 64]], np.int32)}  # fmt: skip
    inputs = []
    for name, value in tensors.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException, match=re.escape(
            "DALI Backend error: Number of outputs expected by the requests (1) does not match the number of "
            "outputs from DALI pipeline (2).")):  # fmt: skip
            client.infer(models.MASKER, inputs, outputs=[grpcclient.InferRequestedOutput("MASK")])
        both = client.infer(models.MASKER, inputs)  # all of them (none asked: Triton asks for all)
        assert both.as_numpy("SEGMENTED").shape == (1, 2, 72, 64) and both.as_numpy("MASK").all()


def test_the_client_keeps_the_same_pixels_from_the_mask_as_the_server_from_its_frames(stream, video):
    """The CLI asks for the mask only and keeps the class's pixels of its own frames (`videos.keep_class`): the
    same picture as the server's SEGMENTED, up to rounding and the odd pixel on a mask's edge."""
    data = video(16, width=64, height=48, **CPU_VIDEO)
    stream.send("v", data, class_name="pottedplant", threshold=0.2, returns="both")
    chunks = collect(stream, {"v"})["v"]
    server, masks = in_order(chunks), in_order(chunks, "mask")
    with av.open(io.BytesIO(data)) as container:
        client = np.stack(
            [keep_class(f, m).to_ndarray() for f, m in zip(container.decode(video=0), masks, strict=True)]
        )
    assert client.shape == server.shape
    luma = np.abs(client[:, :48].astype(int) - server[:, :48])
    assert np.mean(luma > 2) < 0.01, np.mean(luma > 2)
    assert 0 < masks.mean() < 1
