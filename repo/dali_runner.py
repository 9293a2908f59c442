"""Runs one DALI pipeline of `pipelines/` in Triton's Python backend: the target for servers without the DALI backend.

`repo.build` copies this file as the `model.py` of every DALI model of the Python target; the config's parameters
name the graph function, its arguments and the batch size (see `repo.models.pipeline_calls`).

- Decoupled model (the video decoder): per request, feed the encoded video and send one response per run of the
  pipeline, then the final flag; with the `credits_fifo` parameter, each run waits for a credit from the caller
  (`repo.flow_control`). Running the video input once more after its video is used up kills the pipeline,
  so the runner counts the runs first: DALI decodes one frame per video packet, and PyAV counts the packets
  without decoding. On any error the request gets an error response and the pipeline is built anew.
- Other models (the masker): the requests of one execution are fed as one batch and their outputs split back.
"""

import faulthandler
import importlib
import json
import math
import signal

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from nvidia.dali import pipeline_def
from nvidia.dali.backend import ReleaseUnusedMemory
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
from nvidia.dali.tensors import TensorListGPU

from pipelines import decode
from pipelines.probe import probe
from repo.flow_control import CREDITS_PARAMETER, CreditWait
from repo.triton_tensors import from_torch, input_tensor

# A decoder waits this long for the caller to take its chunks (a slow client holds them) before it gives up.
CREDIT_TIMEOUT_S = 600.0

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        graph = getattr(importlib.import_module(params["pipeline_module"]), params["pipeline_graph"])
        self.kwargs = json.loads(params["pipeline_kwargs"])
        self.batch_size = int(params["pipeline_batch_size"])
        self.on_gpu = args["model_instance_kind"] == "GPU"
        self.make_pipeline = pipeline_def(
            graph,
            batch_size=self.batch_size,
            num_threads=int(params["num_threads"]),
            device_id=int(args["model_instance_device_id"]) if self.on_gpu else None,
            prefetch_queue_depth=1,
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.pipe = self._new_pipeline()

    def _new_pipeline(self):
        pipe = self.make_pipeline(**self.kwargs)
        pipe.build()
        return pipe

    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        return self._batch(requests)

    def _stream(self, request) -> None:
        sender = request.get_response_sender()
        credits = None
        try:
            video = pb_utils.get_input_tensor_by_name(request, decode.VIDEO).as_numpy()
            if video.ndim != 2 or video.shape[0] != 1:
                raise ValueError(f"{decode.VIDEO} must be one encoded video of shape (1, bytes), not {video.shape}")
            packets = probe(video[0].data).packets
            chunks = math.ceil(packets / self.kwargs["frames_per_chunk"])
            decoded = 0
            wanted = set(request.requested_output_names()) or set(self.outputs)
            credits_path = json.loads(request.parameters() or "{}").get(CREDITS_PARAMETER)
            credits = CreditWait(credits_path, CREDIT_TIMEOUT_S) if credits_path else None
            self.pipe.feed_input(decode.VIDEO, [video[0]])
            for _ in range(math.ceil(chunks / self.batch_size)):
                if credits is not None:
                    credits.take()
                if request.is_cancelled():
                    raise RuntimeError("cancelled by the client")
                outputs = self.pipe.run()
                decoded += sum(outputs[0][i].shape()[0] for i in range(len(outputs[0])))
                # All chunks of this run as one (1, frames, ...) tensor: the last one of a video may be shorter.
                # Only what the caller asked for is copied out and sent (frames are 20x the model input's bytes).
                tensors = [
                    from_torch(name, _concat(_samples(out))[None])
                    for name, out in zip(self.outputs, outputs, strict=True)
                    if name in wanted
                ]
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
            if decoded != packets:  # frames of this video left in the pipeline would go out with the next one
                raise RuntimeError(f"decoded {decoded} frames of the video's {packets}")
        except Exception as e:  # noqa: BLE001 - every failure ends this request, not the server
            self.pipe = self._new_pipeline()  # it may hold the rest of the video, or be dead
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"decoding failed: {e}")), flags=FINAL)
            return
        finally:
            if credits is not None:
                credits.close()
            if self.on_gpu:
                # DALI keeps what a video needed in its memory pools; videos of other sizes would add to it.
                ReleaseUnusedMemory()
        sender.send(flags=FINAL)

    def _batch(self, requests: list) -> list:
        sizes = []
        for name in self.inputs:
            samples = []
            for request in requests:
                batch = input_tensor(request, name)
                # DALI takes CPU data as numpy: for a torch tensor it would ask CUDA for a stream.
                samples.extend(batch if batch.is_cuda else batch.numpy())
                if name == self.inputs[0]:
                    sizes.append(len(batch))
            self.pipe.feed_input(name, samples)
        outputs = [torch.stack(_samples(out)) for out in self.pipe.run()]
        responses, start = [], 0
        for request, size in zip(requests, sizes, strict=True):
            wanted = set(request.requested_output_names()) or set(self.outputs)
            tensors = [
                from_torch(name, out[start : start + size])
                for name, out in zip(self.outputs, outputs, strict=True)
                if name in wanted
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _samples(out) -> list[torch.Tensor]:
    """The samples of a DALI output, copied out of DALI's buffers (the next run reuses them)."""
    if not isinstance(out, TensorListGPU):
        return [torch.from_numpy(np.array(out[i])) for i in range(len(out))]
    stream = torch.cuda.current_stream()
    parts = []
    for i in range(len(out)):
        part = torch.empty(out[i].shape(), dtype=to_torch_type[out[i].dtype], device="cuda")
        feed_ndarray(out[i], part, cuda_stream=stream)
        parts.append(part)
    stream.synchronize()
    return parts
