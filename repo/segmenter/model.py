"""The segmenter: torchvision's fcn_resnet101 with softmax over the 21 VOC classes, on chunks of frames.

A request is a chunk: MODEL_INPUT (1, F, 3, h, w) and CLASS_ID (1, 1); its output CLASS_PROBS (1, F, 1, h, w) is
that class's probability per pixel (1/21 of all the classes' bytes to pass on to the masker). The chunks of an
execution (of several videos, of any length) are flattened into one batch of frames for the model.
It counts the frames and chunks it segments on Triton's metrics endpoint (`segment_video_frames_total`, ...).

Weights come from the file named by the `weights_file` parameter in this model's version directory (written by
`python -m export.weights`, linked there by `python -m repo.build`). Without that file the model refuses to load,
unless the config sets `random_weights_seed`: seeded random weights, for tests and offline demos, said in the log.
"""

import faulthandler
import json
import signal
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from export import fcn
from pipelines import decode, mask
from repo.triton_tensors import from_torch, input_tensor


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        self.dtype = torch.float16 if params.get("half") == "true" else torch.float32
        weights = Path(args["model_repository"]) / args["model_version"] / params["weights_file"]
        if "random_weights_seed" in params:
            model = fcn.seeded(int(params["random_weights_seed"]))
            source = f"RANDOM weights, seed {params['random_weights_seed']}: segments are meaningless"
            pb_utils.Logger.log_warn(f"segmenter: {source} (random_weights_seed is set in the config)")
        elif weights.is_file():
            model, source = fcn.load(weights)
        else:
            raise pb_utils.TritonModelException(
                f"segmenter: no weights file {weights}; write it with `python -m export.weights`, or set the "
                "`random_weights_seed` parameter on purpose (tests, offline demos)"
            )
        pb_utils.Logger.log_info(f"segmenter: {source}")
        self.memory_format = torch.channels_last if params.get("channels_last") == "true" else torch.contiguous_format
        self.model = model.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.metrics = Metrics()

    @torch.inference_mode()
    def execute(self, requests: list) -> list:
        chunks = [input_tensor(r, decode.MODEL_INPUT) for r in requests]  # each (chunks, F, 3, h, w)
        frames = torch.cat([c.flatten(0, 1) for c in chunks])  # NFCHW -> (N*F)CHW: the model sees frames
        probs = self.model(frames.to(self.device, self.dtype, memory_format=self.memory_format))
        responses = []
        parts = torch.split(probs, [c.shape[0] * c.shape[1] for c in chunks])
        for request, chunk, part in zip(requests, chunks, parts, strict=True):
            class_id = input_tensor(request, decode.CLASS_ID).to(self.device, torch.int64)  # (chunks, 1)
            index = class_id.repeat_interleave(chunk.shape[1], dim=0)[:, :, None, None].expand(-1, 1, *part.shape[2:])
            class_probs = part.gather(1, index).unflatten(0, chunk.shape[:2])  # (chunks, F, 1, h, w)
            responses.append(pb_utils.InferenceResponse(output_tensors=[from_torch(mask.CLASS_PROBS, class_probs)]))
        self.metrics.count(len(frames), sum(c.shape[0] for c in chunks))
        return responses


class Metrics:
    """Frames and chunks segmented, on Triton's metrics endpoint (Prometheus counters)."""

    def __init__(self) -> None:
        def counter(name: str, description: str):
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            return family, family.Metric(labels={})

        self.frames_family, self.frames = counter("segment_video_frames_total", "Frames segmented")
        self.chunks_family, self.chunks = counter("segment_video_chunks_total", "Chunks of frames segmented")

    def count(self, frames: int, chunks: int) -> None:
        self.frames.increment(frames)
        self.chunks.increment(chunks)
