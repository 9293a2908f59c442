"""The chain run in-process, without a server: the same pipelines (built as the server builds them) and the same seeded
weights as the server's."""

import io

import av
import numpy as np
import torch
from nvidia.dali.tensors import TensorListGPU

import pipelines
from export import fcn
from pipelines import decode, mask
from repo.dali_contract import streamed
from repo.models import Settings
from stream_client.probe import probe

_models: dict[tuple, fcn.Segmenter] = {}


def _numpy(out, i: int) -> np.ndarray:
    return np.array((out.as_cpu() if isinstance(out, TensorListGPU) else out)[i])


def _build(graph, settings: Settings, **kwargs):
    device_id = 0 if settings.device == "gpu" else None
    return pipelines.build(graph, batch_size=1, device_id=device_id, device=settings.device, **kwargs)


def decoded(data: bytes, settings: Settings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, model input) per chunk, from the decoder the server uses (CPU or NVDEC)."""
    pipe = _build(decode.decode, settings, frames_per_chunk=settings.frames_per_chunk,
                  model_size=settings.model_size, half=settings.half)  # fmt: skip
    found = probe(data)
    inputs = {
        decode.VIDEO: [np.frombuffer(data, np.uint8)],
        decode.CLASS_ID: [np.array([0], np.int32)],
        decode.THRESHOLD: [np.array([0.0], np.float32)],
        decode.FRAME_SIZE: [np.array([found.height, found.width], np.int32)],
    }
    frames, model_input = [], []
    for (f, m, *_), _ in streamed(pipe, inputs, -(-found.packets // settings.frames_per_chunk)):
        frames.append(_numpy(f, 0))
        model_input.append(_numpy(m, 0))
    return frames, model_input


def segmented(data: bytes, settings: Settings, class_id: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(segmented NV12 (N, 3 H'/2, W'), mask (N, h, w)): every frame of the video as the server should return it."""
    device = "cuda" if settings.device == "gpu" else "cpu"
    model = _model(settings, device)
    frames, model_input = decoded(data, settings)
    pipe = _build(mask.mask, settings)
    nv12, masks = [], []
    for f, m in zip(frames, model_input, strict=True):
        with torch.inference_mode():
            probs = model(torch.from_numpy(m).to(device))[:, class_id : class_id + 1].contiguous().cpu().numpy()
        pipe.feed_input(mask.FRAMES, [f])
        pipe.feed_input(mask.CLASS_PROBS, [probs])
        pipe.feed_input(mask.THRESHOLD, [np.array([threshold], np.float32)])
        pipe.feed_input(mask.FRAME_SIZE, [np.array(f.shape[1:3], np.int32)])
        out, kept = pipe.run()
        nv12.append(_numpy(out, 0))
        masks.append(_numpy(kept, 0))
    return np.concatenate(nv12), np.concatenate(masks)


def pyav_frames(data: bytes) -> np.ndarray:
    """Every frame of the video as PyAV (FFmpeg's software decoders) gives it, (N, H, W, 3) uint8 RGB."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def prepared(frames: np.ndarray, settings: Settings) -> np.ndarray:
    """Frames as the segmenter's input (N, 3, h, w), by the server's own preparation step run on the CPU."""
    pipe = pipelines.build(decode.prepared, batch_size=1, device_id=None, model_size=settings.model_size,
                           half=settings.half)  # fmt: skip
    pipe.feed_input(decode.FRAMES, [frames])
    (out,) = pipe.run()
    return _numpy(out, 0)


def class_probs(model_input: np.ndarray, settings: Settings, class_id: int, batch: int = 32) -> np.ndarray:
    """The class's probability per pixel, (N, h, w) float32, from the server's model with the same seeded weights."""
    device = "cuda" if settings.device == "gpu" else "cpu"
    model = _model(settings, device)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(model_input), batch):
            x = torch.from_numpy(model_input[start : start + batch]).to(device)
            parts.append(model(x)[:, class_id].float().cpu().numpy())
    return np.concatenate(parts)


def _model(settings: Settings, device: str) -> fcn.Segmenter:
    dtype = torch.float16 if settings.half else torch.float32
    key = (settings.random_weights_seed, device, dtype)
    if key not in _models:
        _models[key] = fcn.seeded(settings.random_weights_seed).to(device, dtype)
    return _models[key]
