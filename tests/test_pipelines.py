"""The DALI pipelines on the CPU, built as Triton's DALI backend builds them: chunking, the request's values carried
with every chunk, shapes, layout, normalisation, what the mask keeps, NV12."""

import numpy as np
import pytest

import pipelines
from pipelines import decode, mask
from pipelines.mask import VOC_CLASSES, class_index
from repo.dali_contract import streamed
from stream_client.videos import frames as pyav_frames


def run_decode(data: bytes, video_runs: int, with_frames: bool = True, **kwargs) -> list[list[np.ndarray]]:
    """A request of the decoder as Triton's DALI backend runs it: the video and the request's values fed once, a run
    per chunk until an input is depleted."""
    pipe = pipelines.build(
        decode.decode, batch_size=1, device_id=None, num_threads=1, with_frames=with_frames, **kwargs
    )
    inputs = {
        decode.VIDEO: [np.frombuffer(data, np.uint8)],
        decode.CLASS_ID: [np.array([7], np.int32)],
        decode.THRESHOLD: [np.array([0.3], np.float32)],
        **({decode.FRAME_SIZE: [np.array([24, 40], np.int32)]} if with_frames else {}),
    }
    return [[np.array(o[0]) for o in outputs] for outputs, _ in streamed(pipe, inputs, video_runs)]


def test_decode_chunks_every_frame_once_with_a_short_last_chunk_and_carries_the_requests_values(video):
    data = video(21, width=40, height=24)
    runs = run_decode(data, 3, frames_per_chunk=8, model_size=(16, 16))
    frames = [r[0] for r in runs]
    assert [len(f) for f in frames] == [8, 8, 5]  # the request's values, fed once, do not end the stream early
    assert all(f.shape[1:] == (24, 40, 3) and f.dtype == np.uint8 for f in frames)
    assert [r[1].shape for r in runs] == [(len(f), 3, 16, 16) for f in frames]
    assert all(r[1].dtype == np.float32 for r in runs)
    # The values fed once with the video go out with every chunk.
    assert [(r[2].tolist(), r[3].tolist(), r[4].tolist()) for r in runs] == [([7], [np.float32(0.3)], [24, 40])] * 3
    # MJPEG 4:4:4 decodes to the same pixels in DALI and in FFmpeg: the chunks are the video's frames, in order.
    np.testing.assert_array_equal(np.concatenate(frames), np.stack(list(pyav_frames(data))))


def test_the_mask_decoder_makes_no_frames(video):
    runs = run_decode(video(10), 2, with_frames=False, frames_per_chunk=6, model_size=(8, 8))
    assert [[o.shape for o in r] for r in runs] == [[(6, 3, 8, 8), (1,), (1,)], [(4, 3, 8, 8), (1,), (1,)]]


def test_model_input_is_imagenet_normalised_fchw(video):
    data = video(8, width=32, height=24)
    ((frames, model_input, *_),) = run_decode(data, 1, frames_per_chunk=8, model_size=(24, 32))
    # Same size: no resampling, so the normalisation can be checked exactly.
    expected = (frames.astype(np.float32) / 255 - decode.IMAGENET_MEAN) / decode.IMAGENET_STD
    np.testing.assert_allclose(model_input, expected.transpose(0, 3, 1, 2), atol=1e-5)


def test_half_model_input(video):
    ((_, model_input, *_),) = run_decode(video(4), 1, frames_per_chunk=4, model_size=(16, 16), half=True)
    assert model_input.dtype == np.float16


def run_mask(chunks: list[np.ndarray], probs: list[np.ndarray], thresholds: list[float]) -> list[list[np.ndarray]]:
    """Each chunk (F, H, W, 3) with its class probabilities (F, 1, h, w): [NV12 (F, 3 H'/2, W'), mask (F, h, w)]."""
    pipe = pipelines.build(mask.mask, batch_size=len(chunks), device_id=None, num_threads=1)
    pipe.feed_input(mask.FRAMES, chunks)
    pipe.feed_input(mask.CLASS_PROBS, probs)
    pipe.feed_input(mask.THRESHOLD, [np.array([t], np.float32) for t in thresholds])
    pipe.feed_input(mask.FRAME_SIZE, [np.array(c.shape[1:3], np.int32) for c in chunks])
    nv12, masks = pipe.run()
    return [[np.array(nv12[i]), np.array(masks[i])] for i in range(len(chunks))]


def to_nv12(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited range, chroma averaged over 2x2 (frames of even size): NV12 (F, 3 H/2, W), computed here."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    f, h, w = y.shape
    halves = [c.reshape(f, h // 2, 2, w // 2, 2).mean(axis=(2, 4)) for c in (cb, cr)]
    uv = np.stack(halves, axis=-1).reshape(f, h // 2, w)
    return np.concatenate([y, uv], axis=1)


def test_the_mask_keeps_a_pixel_exactly_when_its_class_probability_is_above_the_threshold():
    rng = np.random.default_rng(0)
    chunks = [rng.integers(60, 256, (3, 12, 10, 3), dtype=np.uint8) for _ in range(2)]
    probs = [rng.random((3, 1, 12, 10), dtype=np.float32) for _ in range(2)]
    probs[1][1, 0, :6] = 0.5  # exactly at the threshold: not kept
    for chunk, p, t, (nv12, got) in zip(chunks, probs, [0.5, 0.2], run_mask(chunks, probs, [0.5, 0.2]), strict=True):
        keep = (p[:, 0] > t).astype(np.uint8)
        np.testing.assert_array_equal(got, keep)
        assert nv12.shape == (3, 18, 10) and nv12.dtype == np.uint8
        expected = to_nv12(chunk * keep[..., None])
        assert np.abs(nv12[:, :12].astype(int) - expected[:, :12]).max() <= 1  # luma, pixel by pixel
        assert np.abs(nv12[:, 12:].astype(int) - expected[:, 12:]).max() <= 2  # chroma, 2x2 averages
    assert (run_mask(chunks, probs, [0.5, 0.5])[1][1][1, :6] == 0).all()


def test_threshold_0_keeps_every_pixel_and_1_none_where_float16_rounds_the_probability_to_0_or_1():
    probs = [np.array([[[[0.0, 6e-8, 1e-4, 0.5, 1 - 1e-4, 1.0]]]], np.float16)]
    pipe = pipelines.build(mask.mask, batch_size=1, device_id=None, num_threads=1, with_frames=False)
    kept = {}
    for threshold in (0.0, 0.5, 1.0):
        pipe.feed_input(mask.CLASS_PROBS, probs)
        pipe.feed_input(mask.THRESHOLD, [np.array([threshold], np.float32)])
        kept[threshold] = np.array(pipe.run()[0][0])[0, 0].tolist()
    assert kept == {0.0: [1] * 6, 0.5: [0, 0, 0, 0, 1, 1], 1.0: [0] * 6}


def test_the_mask_is_resized_to_the_frame_with_nearest_neighbours():
    rng = np.random.default_rng(1)
    chunk = rng.integers(60, 256, (2, 24, 32, 3), dtype=np.uint8)
    probs = rng.random((2, 1, 6, 8), dtype=np.float32)
    ((nv12, _),) = run_mask([chunk], [probs], [0.5])
    keep = np.repeat(np.repeat(probs[:, 0] > 0.5, 4, axis=1), 4, axis=2)
    np.testing.assert_array_equal(nv12[:, :24] > 16, keep)  # dropped pixels are black: luma 16


def test_odd_frames_get_a_black_row_and_column_and_chunks_of_several_sizes_batch_together():
    rng = np.random.default_rng(2)
    chunks = [rng.integers(60, 256, (2, 25, 41, 3), dtype=np.uint8), rng.integers(60, 256, (4, 24, 40, 3), np.uint8)]
    probs = [np.ones((2, 1, 4, 4), np.float32), np.ones((4, 1, 4, 4), np.float32)]
    (odd, _), (even, _) = run_mask(chunks, probs, [0.5, 0.5])
    assert odd.shape == (2, 39, 42) and even.shape == (4, 36, 40)
    assert (odd[:, 25, :] == 16).all() and (odd[:, :25, 41] == 16).all()  # the padding: black
    np.testing.assert_allclose(odd[:, :24, :40], to_nv12(chunks[0][:, :24, :40])[:, :24], atol=1)


def test_class_names_are_the_21_voc_classes():
    assert len(VOC_CLASSES) == 21 and class_index("person") == 15
    with pytest.raises(ValueError, match="unknown class 'human'.*person"):
        class_index("human")


def test_the_mask_alone_is_the_thresholded_probability_at_the_models_size():
    rng = np.random.default_rng(3)
    probs = [rng.random((5, 1, 6, 8), dtype=np.float32).astype(np.float16) for _ in range(2)]
    pipe = pipelines.build(mask.mask, batch_size=2, device_id=None, num_threads=1, with_frames=False)
    pipe.feed_input(mask.CLASS_PROBS, probs)
    pipe.feed_input(mask.THRESHOLD, [np.array([0.3], np.float32)] * 2)
    (out,) = pipe.run()
    for i, p in enumerate(probs):
        np.testing.assert_array_equal(np.array(out[i]), (p[:, 0].astype(np.float32) > 0.3).astype(np.uint8))


def test_pipelines_are_built_with_the_executor_of_tritons_dali_backend():
    pipe = pipelines.build(mask.mask, batch_size=1, device_id=None, with_frames=False)
    assert (pipe.exec_pipelined, pipe.exec_async, pipe.exec_dynamic) == (True, True, False)
