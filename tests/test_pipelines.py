"""The DALI pipelines on the CPU: chunking, shapes, layout, normalisation, and what the mask keeps."""

import numpy as np
import pytest
from nvidia.dali import pipeline_def

from pipelines.decode import IMAGENET_MEAN, IMAGENET_STD, decode
from pipelines.mask import VOC_CLASSES, class_index, mask
from stream_client.videos import frames as pyav_frames


def run_decode(data: bytes, runs: int, batch_size: int = 1, **kwargs) -> list[tuple[list, list]]:
    pipe = pipeline_def(decode, batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=1)(
        device="cpu", **kwargs
    )
    pipe.build()
    pipe.feed_input("VIDEO", [np.frombuffer(data, np.uint8)])
    out = []
    for _ in range(runs):
        f, m = pipe.run()
        out.append(([np.array(t) for t in f], [np.array(t) for t in m]))
    return out


def test_decode_chunks_every_frame_once_with_a_short_last_chunk(video):
    data = video(21, width=40, height=24)
    runs = run_decode(data, 3, frames_per_chunk=8, model_size=(16, 16))
    frames = [f[0] for f, _ in runs]
    model_input = [m[0] for _, m in runs]
    assert [len(f) for f in frames] == [8, 8, 5]
    assert all(f.shape[1:] == (24, 40, 3) and f.dtype == np.uint8 for f in frames)
    assert [m.shape for m in model_input] == [(len(f), 3, 16, 16) for f in frames]
    assert all(m.dtype == np.float32 for m in model_input)
    # MJPEG 4:4:4 decodes to the same pixels in DALI and in FFmpeg: the chunks are the video's frames, in order.
    np.testing.assert_array_equal(np.concatenate(frames), np.stack(list(pyav_frames(data))))


def test_decode_batch_is_chunks_per_response(video):
    data = video(20, width=32, height=32)
    runs = run_decode(data, 2, batch_size=2, frames_per_chunk=6, model_size=(8, 8))
    assert [[len(f) for f in fs] for fs, _ in runs] == [[6, 6], [6, 2]]


def test_model_input_is_imagenet_normalised_fchw(video):
    data = video(8, width=32, height=24)
    (((frames,), (model_input,)),) = run_decode(data, 1, frames_per_chunk=8, model_size=(24, 32))
    # Same size: no resampling, so the normalisation can be checked exactly.
    expected = (frames.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(model_input, expected.transpose(0, 3, 1, 2), atol=1e-5)


def test_half_model_input(video):
    ((_, (model_input,)),) = run_decode(video(4), 1, frames_per_chunk=4, model_size=(16, 16), half=True)
    assert model_input.dtype == np.float16


def run_mask(frames: list, probs: list, class_ids: list[int], thresholds: list[float]) -> list[np.ndarray]:
    pipe = pipeline_def(mask, batch_size=len(frames), num_threads=1, device_id=None, prefetch_queue_depth=1)()
    pipe.build()
    pipe.feed_input("FRAMES", frames)
    pipe.feed_input("PROBS", probs)
    pipe.feed_input("CLASS_ID", [np.array([c], np.int32) for c in class_ids])
    pipe.feed_input("THRESHOLD", [np.array([t], np.float32) for t in thresholds])
    out, _ = pipe.run()
    return [np.array(o) for o in out]


def test_mask_keeps_a_pixel_exactly_when_its_class_probability_is_above_the_threshold():
    rng = np.random.default_rng(0)
    frames = [rng.integers(1, 256, (12, 10, 3), dtype=np.uint8) for _ in range(3)]
    probs = [rng.random((21, 12, 10), dtype=np.float32) for _ in range(3)]
    probs[2][7, :6] = 0.5  # exactly at the threshold: not kept
    out = run_mask(frames, probs, [15, 3, 7], [0.5, 0.2, 0.5])
    for f, p, c, t, o in zip(frames, probs, [15, 3, 7], [0.5, 0.2, 0.5], out, strict=True):
        assert o.dtype == np.uint8 and o.shape == f.shape
        np.testing.assert_array_equal(o, f * (p[c] > t)[..., None])
    assert not out[2][:6].any()


def test_mask_resizes_the_probabilities_to_the_frame_with_nearest_neighbours():
    rng = np.random.default_rng(1)
    frame = rng.integers(1, 256, (24, 32, 3), dtype=np.uint8)
    probs = rng.random((21, 6, 8), dtype=np.float32)
    (out,) = run_mask([frame], [probs], [15], [0.5])
    keep = np.repeat(np.repeat(probs[15] > 0.5, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(out, frame * keep[..., None])


def test_class_names_are_the_21_voc_classes():
    assert len(VOC_CLASSES) == 21 and class_index("person") == 15
    with pytest.raises(ValueError, match="unknown class 'human'.*person"):
        class_index("human")


def test_mask_alone_is_the_thresholded_class_channel_at_the_models_size():
    rng = np.random.default_rng(2)
    probs = [rng.random((21, 6, 8), dtype=np.float32).astype(np.float16) for _ in range(2)]
    pipe = pipeline_def(mask, batch_size=2, num_threads=1, device_id=None, prefetch_queue_depth=1)(with_frames=False)
    pipe.build()
    pipe.feed_input("PROBS", probs)
    pipe.feed_input("CLASS_ID", [np.array([4], np.int32), np.array([9], np.int32)])
    pipe.feed_input("THRESHOLD", [np.array([0.3], np.float32)] * 2)
    (out,) = pipe.run()
    for i, (c, p) in enumerate(zip([4, 9], probs, strict=True)):
        np.testing.assert_array_equal(np.array(out[i]), (p[c].astype(np.float32) > 0.3).astype(np.uint8))
