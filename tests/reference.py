"""The chain run in-process, without a server: the same pipelines and the same seeded weights as the server's."""

import numpy as np
import torch
from nvidia.dali import pipeline_def

from export import fcn
from pipelines.decode import decode
from pipelines.mask import mask
from pipelines.probe import probe
from repo.models import Settings

_models: dict[int, fcn.Segmenter] = {}


def decoded(data: bytes, settings: Settings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, model input) per chunk, from DALI's CPU decoder."""
    pipe = pipeline_def(decode, batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)(
        device="cpu", frames_per_chunk=settings.frames_per_chunk, model_size=settings.model_size
    )
    pipe.build()
    pipe.feed_input("VIDEO", [np.frombuffer(data, np.uint8)])
    chunks = -(-probe(data).packets // settings.frames_per_chunk)
    frames, model_input = [], []
    for _ in range(chunks):
        f, m = pipe.run()
        frames.append(np.array(f[0]))
        model_input.append(np.array(m[0]))
    return frames, model_input


def segmented(data: bytes, settings: Settings, class_id: int, threshold: float) -> np.ndarray:
    """(N, H, W, 3): every frame of the video as the server should return it."""
    model = _models.setdefault(settings.random_weights_seed, fcn.seeded(settings.random_weights_seed))
    frames, model_input = decoded(data, settings)
    pipe = pipeline_def(mask, batch_size=settings.max_batch, num_threads=1, device_id=None, prefetch_queue_depth=1)()
    pipe.build()
    out = []
    for f, m in zip(frames, model_input, strict=True):
        with torch.inference_mode():
            probs = model(torch.from_numpy(m)).numpy()
        pipe.feed_input("FRAMES", list(f))
        pipe.feed_input("PROBS", list(probs))
        pipe.feed_input("CLASS_ID", [np.array([class_id], np.int32)] * len(f))
        pipe.feed_input("THRESHOLD", [np.array([threshold], np.float32)] * len(f))
        (result,) = pipe.run()
        out.extend(np.array(result[i]) for i in range(len(f)))
    return np.stack(out)
