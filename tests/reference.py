"""The chain run in-process, without a server: the same pipelines and the same seeded weights as the server's."""

import numpy as np
import torch
from nvidia.dali import pipeline_def
from nvidia.dali.tensors import TensorListGPU

from export import fcn
from pipelines.decode import decode
from pipelines.mask import mask
from pipelines.probe import probe
from repo.models import Settings

_models: dict[tuple, fcn.Segmenter] = {}


def _numpy(out, i: int) -> np.ndarray:
    return np.array((out.as_cpu() if isinstance(out, TensorListGPU) else out)[i])


def _pipeline(graph, settings: Settings, batch_size: int, **kwargs):
    device_id = 0 if settings.device == "gpu" else None
    pipe = pipeline_def(graph, batch_size=batch_size, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
    built = pipe(device=settings.device, **kwargs)
    built.build()
    return built


def decoded(data: bytes, settings: Settings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, model input) per chunk, from the decoder the server uses (CPU or NVDEC)."""
    pipe = _pipeline(
        decode,
        settings,
        1,
        frames_per_chunk=settings.frames_per_chunk,
        model_size=settings.model_size,
        half=settings.half,
    )
    pipe.feed_input("VIDEO", [np.frombuffer(data, np.uint8)])
    frames, model_input = [], []
    for _ in range(-(-probe(data).packets // settings.frames_per_chunk)):
        f, m = pipe.run()
        frames.append(_numpy(f, 0))
        model_input.append(_numpy(m, 0))
    return frames, model_input


def segmented(data: bytes, settings: Settings, class_id: int, threshold: float) -> np.ndarray:
    """(N, H, W, 3): every frame of the video as the server should return it."""
    device = "cuda" if settings.device == "gpu" else "cpu"
    dtype = torch.float16 if settings.half else torch.float32
    key = (settings.random_weights_seed, device, dtype)
    if key not in _models:
        _models[key] = fcn.seeded(settings.random_weights_seed).to(device, dtype)
    model = _models[key]
    frames, model_input = decoded(data, settings)
    pipe = _pipeline(mask, settings, settings.max_batch)
    out = []
    for f, m in zip(frames, model_input, strict=True):
        with torch.inference_mode():
            probs = model(torch.from_numpy(m).to(device)).cpu().numpy()
        pipe.feed_input("FRAMES", list(f))
        pipe.feed_input("PROBS", list(probs))
        pipe.feed_input("CLASS_ID", [np.array([class_id], np.int32)] * len(f))
        pipe.feed_input("THRESHOLD", [np.array([threshold], np.float32)] * len(f))
        result, _ = pipe.run()
        out.extend(_numpy(result, i) for i in range(len(f)))
    return np.stack(out)
