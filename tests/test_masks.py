"""The masks are the video's: what a server keeps is checked against a reference made without it.

The reference decodes with PyAV (FFmpeg's software decoders, not the server's DALI or NVDEC), prepares the frames
with the server's own preparation step (`pipelines.decode.prepared`) and runs the same seeded weights. A video goes
through the server as the client sends it, in segments, and several videos go at once or one after another, each
with its own class and threshold: a decoder instance serves segments of different videos in turn. The checks:
- every chunk a decoder sends carries its own request's values and its own frames (the decoder alone);
- the masks of every segment agree with the reference (the whole chain, both entries): of the pixels whose reference
  probability is further than `MASK_MARGIN` (relative) from the threshold, at most `MASK_TOLERANCE` differ.
The README names both. The margin is there because the server's decoder converts YUV to RGB its own way (DALI's CPU
decoder and NVDEC differ from PyAV by one to two levels on average), which moves the probabilities by a few per cent
(float16 adds less): pixels that close to the threshold may flip either way. A mask of another class or threshold,
or of other frames, differs on many times more of the judged pixels; the test checks that on its own reference
first, so a wrong mask fails it.

The same tests run on the native target (tests/native) and on a GPU (tests/gpu), on both targets.
"""

import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import collect
from reference import class_probs, decoded, prepared, pyav_frames

from pipelines import decode
from pipelines.mask import VOC_CLASSES
from repo.models import DECODER, INPUT_DECODER, Settings
from stream_client import gops
from stream_client.sample import make_video
from stream_client.stream import SegmentationStream

MASK_MARGIN = 0.1  # pixels whose reference probability is this close to the threshold (relative) are not judged
MASK_TOLERANCE = 0.03  # the share of a segment's judged mask pixels that may differ from the reference
MODEL_INPUT_TOLERANCE = 0.05  # the mean absolute difference of the model input from PyAV's (ImageNet units)


@dataclass
class Clip:
    """A video of several segments, as the client cuts it, with its reference."""

    name: str
    data: bytes
    segments: list[gops.Segment]
    frames: np.ndarray  # PyAV's
    model_input: np.ndarray  # the frames prepared as the server prepares them


def clips(folder: Path, settings: Settings) -> list[Clip]:
    """Two different videos, each cut into segments of two chunks and a shorter last one. The codec is one the
    server's decoder reads; on a GPU, H.264 with B-frames (NVDEC's minimum size is well below 320x240)."""
    chunk = settings.frames_per_chunk
    if settings.device == "gpu":
        codec, suffix, sizes = "libx264", ".mp4", [(320, 240), (352, 288)]
        options = {"g": str(chunk), "keyint_min": str(chunk), "bf": "2", "sc_threshold": "0"}
    else:
        codec, suffix, sizes = "libvpx-vp9", ".webm", [(64, 48), (80, 48)]
        options = {"g": str(chunk), "keyint_min": str(chunk), "auto-alt-ref": "0", "lag-in-frames": "0"}
    made = []
    for i, (width, height) in enumerate(sizes):
        path = make_video(folder / f"clip{i}{suffix}", 5 * chunk + 3, width=width, height=height, codec=codec,
                          options=options)  # fmt: skip
        segments = list(gops.segments(path, max_seconds=(2 * chunk - 1) / 25))
        assert [s.frames for s in segments] == [2 * chunk, 2 * chunk, chunk + 3], "the clip is not cut as meant"
        data = path.read_bytes()
        frames = pyav_frames(data)
        made.append(Clip(f"clip{i}", data, segments, frames, prepared(frames, settings)))
    return made


def wrong(mask: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    """The share of the judged pixels (not within the margin of the threshold) where `mask` is not the reference's."""
    assert mask.shape == probs.shape, (mask.shape, probs.shape)
    judged = np.abs(probs - threshold) > MASK_MARGIN * threshold
    return float(np.mean((mask != 0)[judged] != (probs > threshold)[judged]))


@pytest.fixture(scope="module")
def made_clips(tmp_path_factory, settings) -> list[Clip]:
    return clips(tmp_path_factory.mktemp("clips"), settings)


@pytest.fixture(scope="module")
def asked(made_clips, settings) -> dict[str, tuple[str, float, np.ndarray]]:
    """Each clip's class, threshold and reference probabilities: the first class (in VOC's order from `person` on)
    whose median probability lies well inside (0, 1), which then keeps part of its pixels (random weights saturate
    differently with the model's size and float16: at 224x224 most of a class's probabilities may underflow to 0);
    no two clips the same class."""
    found = {}
    for clip in made_clips:
        for class_name in VOC_CLASSES[15:] + VOC_CLASSES[:15]:
            probs = class_probs(clip.model_input, settings, VOC_CLASSES.index(class_name))
            threshold = float(np.median(probs))
            taken = {name for name, _, _ in found.values()}
            if class_name not in taken and 1e-3 < threshold < 0.99 and 0.2 < np.mean(probs > threshold) < 0.8:
                found[clip.name] = (class_name, threshold, probs)
                break
        assert clip.name in found, "no class of the random weights keeps part of this clip"
    for clip, other in zip(made_clips, made_clips[::-1], strict=True):
        _, threshold, probs = found[clip.name]
        # What the test must catch: another request's class and threshold, another chunk's frames.
        other_class, other_threshold, _ = found[other.name]
        wrong_values = class_probs(clip.model_input, settings, VOC_CLASSES.index(other_class)) > other_threshold
        assert wrong(wrong_values, probs, threshold) > 3 * MASK_TOLERANCE
        shift = settings.frames_per_chunk
        assert wrong(probs[shift:] > threshold, probs[:-shift], threshold) > 3 * MASK_TOLERANCE
    return found


@pytest.mark.parametrize("order", ["at-once", "one-after-another"])
def test_every_segments_masks_agree_with_a_reference_decoded_by_pyav(server, made_clips, asked, order):
    requests = [(clip, segment) for i in range(3) for clip in made_clips for segment in clip.segments[i : i + 1]]
    results = {}
    with SegmentationStream(server.url, idle_timeout=300) as stream:
        for number, (clip, segment) in enumerate(requests):
            # One clip through each entry: frames and mask (video_decoder, masker), the mask alone (input_decoder).
            class_name, threshold, _ = asked[clip.name]
            video = f"{clip.name}-{segment.index}"
            stream.send(video, segment.data, class_name=class_name, threshold=threshold,
                        returns="both" if clip is made_clips[0] else "mask")  # fmt: skip
            if order == "one-after-another":
                results |= collect(stream, {video})
            elif number == len(requests) - 1:
                results |= collect(stream, {f"{c.name}-{s.index}" for c, s in requests})
    for clip, segment in requests:
        result = results[f"{clip.name}-{segment.index}"]
        assert not isinstance(result, str), result
        got = np.concatenate([chunk.mask for chunk in result])
        _, threshold, probs = asked[clip.name]
        own = slice(segment.first_frame, segment.first_frame + segment.frames)
        assert wrong(got, probs[own], threshold) <= MASK_TOLERANCE, f"{clip.name} segment {segment.index}"


def test_each_chunk_of_a_decoder_carries_its_own_requests_frames_and_values(server, settings, made_clips):
    """The decoders alone, called directly: every chunk's model input (and frames) are its own segment's frames, and
    its CHUNK_* values the ones its request sent, with segments of different videos at once and one after another."""
    arrived: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: arrived.put((result, error)))
    rng = np.random.default_rng(0)
    sent = {}

    def send(decoder: str, clip: Clip, segment: gops.Segment) -> str:
        request_id = f"{decoder}-{clip.name}-{segment.index}-{len(sent)}"
        values = {
            decode.CLASS_ID: np.array([[rng.integers(21)]], np.int32),
            decode.THRESHOLD: np.array([[rng.random()]], np.float32),
        }
        if decoder == DECODER:
            values[decode.FRAME_SIZE] = np.array([clip.frames.shape[1:3]], np.int32)
        video = np.frombuffer(segment.data, np.uint8)[None]
        inputs = [grpcclient.InferInput(decode.VIDEO, list(video.shape), "UINT8")]
        inputs[0].set_data_from_numpy(video)
        for name, value in values.items():
            datatype = "INT32" if value.dtype == np.int32 else "FP32"
            inputs.append(grpcclient.InferInput(name, list(value.shape), datatype))
            inputs[-1].set_data_from_numpy(value)
        client.async_stream_infer(decoder, inputs, request_id=request_id, enable_empty_final_response=True)
        sent[request_id] = (clip, segment, values, [])
        return request_id

    def wait(ids: set[str]) -> None:
        while ids:
            result, error = arrived.get(timeout=300)
            assert error is None, error
            response = result.get_response()
            if response.outputs:
                sent[response.id][3].append(result)
            if response.parameters["triton_final_response"].bool_param:
                ids.discard(response.id)

    try:
        for clip in made_clips:  # one after another: each decoder instance gets segments of both videos in turn
            for segment in clip.segments:
                for decoder in (DECODER, INPUT_DECODER):
                    wait({send(decoder, clip, segment)})
        wait({send(decoder, clip, segment) for clip in made_clips for segment in clip.segments
              for decoder in (DECODER, INPUT_DECODER)})  # fmt: skip
    finally:
        client.stop_stream()
        client.close()

    in_process = {}  # each segment decoded by a new pipeline of the server's graph, in this process
    for request_id, (clip, segment, values, results) in sent.items():
        first = segment.first_frame
        key = (clip.name, segment.index)
        if key not in in_process:
            in_process[key] = np.concatenate(decoded(segment.data, settings)[1]).astype(np.float32)
        for result in results:
            for name, value in values.items():
                np.testing.assert_array_equal(result.as_numpy(decode.CHUNK + name), value, err_msg=request_id)
            model_input = result.as_numpy(decode.MODEL_INPUT)[0].astype(np.float32)
            own = clip.model_input[first : first + len(model_input)].astype(np.float32)
            # Each chunk's frames are nearest to their own frames of the reference, and close to them.
            distance = np.abs(model_input[:, None] - clip.model_input[None].astype(np.float32)).mean(axis=(2, 3, 4))
            assert (distance.argmin(axis=1) == np.arange(first, first + len(model_input))).all(), request_id
            assert np.abs(model_input - own).mean() <= MODEL_INPUT_TOLERANCE, request_id
            # And equal to what a new pipeline makes of the segment: a decoder that served other videos before keeps
            # nothing of them (float16's step at the input's largest values is 2e-3).
            fresh = in_process[key][first - segment.first_frame : first - segment.first_frame + len(model_input)]
            assert np.abs(model_input - fresh).max() <= 1e-2, request_id
            if decode.FRAME_SIZE in values:
                frames = result.as_numpy(decode.FRAMES)[0]
                assert frames.shape[1:] == clip.frames.shape[1:]
                assert np.abs(frames.astype(np.int16) - clip.frames[first : first + len(frames)]).mean() < 4, request_id
            first += len(model_input)
        assert first == segment.first_frame + segment.frames, request_id
