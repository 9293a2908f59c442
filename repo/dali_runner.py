"""Runs one DALI pipeline of `pipelines/` in Triton's Python backend: the stand-in for Triton's DALI backend.

`repo.build` copies this file as the `model.py` of every DALI model of the Python target; the config's parameters
name the graph function, its arguments and the batch size (see `repo.models.pipeline_calls`). The production server
runs the same pipelines in the native DALI backend, which CI cannot build (`tests/native` serves them in it where it
is built), so this runner holds that backend's contract to the letter (from dali_backend's source, checked by
`tests/native`; the README lists the rules):

- the config TEXT says which mode: `max_batch_size: 0` is the streaming mode (one request at a time, a response per
  run), any other value, or none at all, the batched mode (the requests of an execution run as one batch);
- the pipeline is built as the backend builds it (`pipelines.build`): the older executor (not DALI's dynamic one,
  which would let a CPU operator read GPU data), pipelined and asynchronous, prefetch depth 1;
- at load: every config input is a pipeline input and the other way round (by name), config outputs are the
  pipeline's outputs by position, and where the pipeline declares an input's dimensions the config agrees (in the
  streaming mode the config's first dimension is the batch);
- a request must ask for every output; the inputs of one request have one batch size;
- streaming mode: a request's inputs are fed once, before its first run; a response per run, and the stream ends
  after the first run on which any input is depleted (`runs_until_depleted`), the final flag on that response (no
  empty final response); an error is one response with the final flag, and the pipeline is built anew;
- batched mode: one error fails every request of the execution.
Unlike the backend, an output whose samples differ in shape is refused (the backend would pack them into one
tensor, silently wrong). The streaming mode serves `streams` requests at once, each on a pipeline of its own (the
backend: one instance each), and a watchdog turns a request that makes no progress into an error on it.
"""

import ctypes
import ctypes.util
import faulthandler
import importlib
import json
import math
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
from nvidia.dali.tensors import TensorListGPU

import pipelines
from pipelines import decode
from repo.dali_contract import (
    ContractError,
    error_message,
    max_batch_size_in_text,
    pipeline_inputs,
    requested,
    runs_until_depleted,
    streamed,
    validate,
)
from repo.triton_tensors import from_torch, to_torch
from stream_client.probe import probe

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class Stream:
    """One request of the streaming mode: its sender, and how far it got (for the watchdog)."""

    def __init__(self, request) -> None:
        self.sender = request.get_response_sender()
        self.lock = threading.Lock()
        self.ended = False
        self.abandoned = False  # ended by the watchdog: its pipeline is lost
        self.progress = time.monotonic()

    def send(self, response=None, flags: int = 0) -> bool:
        """Send unless the watchdog has already ended this request; whether it was sent."""
        with self.lock:
            if self.ended:
                return False
            self.sender.send(response, flags=flags)
            self.ended = bool(flags & FINAL)
            self.progress = time.monotonic()
            return True

    def fail(self, message: str) -> None:
        self.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)

    def abandon(self, message: str) -> bool:
        """End it with an error unless it is ending already or stuck in a send; whether it was abandoned."""
        if not self.lock.acquire(blocking=False):
            return False
        self.lock.release()
        self.abandoned = self.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
        return self.abandoned


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        text = (Path(args["model_repository"]) / "config.pbtxt").read_text()
        self.batched = max_batch_size_in_text(text) != 0
        graph = getattr(importlib.import_module(params["pipeline_module"]), params["pipeline_graph"])
        on_gpu = args["model_instance_kind"] == "GPU"
        # Named in every call: the requests' threads do not share a current device.
        self.device = torch.device("cuda", int(args["model_instance_device_id"])) if on_gpu else None
        batch_size = config["max_batch_size"] if self.batched and config["max_batch_size"] > 0 else None
        self.pipeline_args = {
            "batch_size": batch_size or int(params["pipeline_batch_size"]),
            "num_threads": int(params["num_threads"]),
            "device_id": int(args["model_instance_device_id"]) if on_gpu else None,
            **json.loads(params["pipeline_kwargs"]),
        }
        self.frames_per_chunk = self.pipeline_args.get("frames_per_chunk")
        self.graph = graph
        pipe = self._new_pipeline()
        try:
            validate(config, pipe, self.batched)
            if not self.batched:
                runs_until_depleted(pipe, 1)  # refuses a pipeline whose stream would never end
        except ContractError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.cpu_inputs = set(pipeline_inputs(pipe)) - self._gpu_inputs(pipe)
        if self.batched:
            self.pipe = pipe
        else:
            self.pipes: queue.Queue = queue.Queue()
            for i in range(int(params.get("streams", "1"))):
                self.pipes.put(pipe if i == 0 else self._new_pipeline())
            self.streams: dict[int, Stream] = {}
            self.stall_seconds = float(params.get("stall_seconds", "120"))
            threading.Thread(target=self._watchdog, daemon=True).start()

    def _new_pipeline(self):
        return pipelines.build(self.graph, **self.pipeline_args)

    @staticmethod
    def _gpu_inputs(pipe) -> set[str]:
        return {op.name for op in pipe._ops if type(op._op).__name__ == "ExternalSource" and op._op._device == "gpu"}

    def execute(self, requests: list) -> list | None:
        if self.batched:
            return self._batch(requests)
        for request in requests:
            threading.Thread(target=self._stream, args=(request,), daemon=True).start()
        return None

    # ------------------------------------------------------------------ requests
    def _requested(self, request) -> None:
        requested(len(request.requested_output_names()), len(self.outputs))

    def _inputs(self, request) -> dict[str, list]:
        """The request's inputs as DALI samples: numpy on the CPU, torch tensors on the GPU (dim 0 is the batch)."""
        samples = {}
        for name in self.inputs:
            tensor = to_torch(pb_utils.get_input_tensor_by_name(request, name))
            if tensor.is_cuda and name in self.cpu_inputs:
                tensor = tensor.cpu()
            samples[name] = list(tensor) if tensor.is_cuda else list(tensor.numpy())  # numpy: DALI asks no stream
        if len({len(s) for s in samples.values()}) > 1:
            raise ContractError("Each input in a request must have the same batch size.")
        return samples

    def _stream(self, request) -> None:
        stream = Stream(request)
        pipe = self.pipes.get()  # one request at a time per pipeline, as per instance in the backend
        self.streams[id(stream)] = stream
        try:
            self._requested(request)
            samples = self._inputs(request)
            video = samples.pop(decode.VIDEO)
            if len(video) != 1:
                raise ContractError("the video input takes one encoded file per request (a batch of 1)")
            # The backend reads DALI's "depleted" trace after each run, which Python cannot see: count the video's
            # runs first (DALI decodes one frame per packet; PyAV counts the packets without decoding). One more run
            # after the video's last frame would kill the pipeline.
            packets = probe(np.asarray(video[0]).data).packets
            video_runs = math.ceil(packets / self.frames_per_chunk)
            decoded, run = 0, -1
            for run, (outputs, last) in enumerate(streamed(pipe, {decode.VIDEO: video, **samples}, video_runs)):
                stream.progress = time.monotonic()
                decoded += sum(outputs[0][i].shape()[0] for i in range(len(outputs[0])))
                if run == video_runs - 1 and decoded != packets:  # frames left in it would go to the next video
                    raise RuntimeError(f"decoded {decoded} frames of the video's {packets}")
                batches = [_stack(_samples(out, self.device)) for out in outputs]
                tensors = [from_torch(name, batch) for name, batch in zip(self.outputs, batches, strict=True)]
                if not stream.send(pb_utils.InferenceResponse(output_tensors=tensors), FINAL if last else 0):
                    raise RuntimeError("ended by the watchdog")
                if not last and request.is_cancelled():
                    raise RuntimeError("cancelled by the client")
            if run < video_runs - 1:  # ended early, as the backend ends it: the rest must not reach the next video
                pipe = self._new_pipeline()
        except Exception as e:  # noqa: BLE001 - every failure ends this request, not the server
            if not stream.abandoned:
                pipe = self._new_pipeline()  # it may hold the rest of the video, or be dead
                stream.fail(error_message(e))
        finally:
            del self.streams[id(stream)]
            if not stream.abandoned:  # else the watchdog has put a new one in its place
                self.pipes.put(pipe)

    def _watchdog(self) -> None:
        """A request whose pipeline or send has not moved for `stall_seconds` gets an error (never a silent stall);
        its pipeline is replaced, so that the other requests keep their share."""
        while True:
            time.sleep(min(1.0, self.stall_seconds / 4))
            for stream in list(self.streams.values()):
                stalled = time.monotonic() - stream.progress
                message = f"decoding failed: no progress for {stalled:.0f} s; the decoder gave up on this video"
                if stalled > self.stall_seconds and stream.abandon(message):
                    self.pipes.put(self._new_pipeline())

    def _batch(self, requests: list) -> list:
        try:
            for request in requests:
                self._requested(request)
            per_request = [self._inputs(request) for request in requests]
            sizes = [len(next(iter(samples.values()))) for samples in per_request]
            for name in self.inputs:
                self.pipe.feed_input(name, [s for samples in per_request for s in samples[name]])
            outputs = [_samples(out, self.device) for out in self.pipe.run()]
        except Exception as e:  # noqa: BLE001 - the same error for every request of the batch, as the backend does
            self.pipe = self._new_pipeline()
            return [_error(e) for _ in requests]
        if self.device is None:
            _trim()
        responses, start = [], 0
        for size in sizes:
            try:
                parts = [_stack(out[start : start + size]) for out in outputs]
                tensors = [from_torch(name, part) for name, part in zip(self.outputs, parts, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except ContractError as e:
                responses.append(_error(e))
            start += size
        return responses


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def _trim() -> None:
    """Give the heap's free memory back to the system: the CPU pipelines' frame-sized buffers, freed by DALI's
    threads in arenas of their own, otherwise leave the process growing by a little after each new batch shape."""
    _LIBC.malloc_trim(0)


def _error(e: Exception) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(error_message(e)))


def _stack(samples: list[torch.Tensor]) -> torch.Tensor:
    """A request's samples as one tensor: they must have one shape (the backend would pack ragged ones silently)."""
    if len({tuple(s.shape) for s in samples}) > 1:
        raise ContractError(f"an output's samples differ in shape ({[tuple(s.shape) for s in samples]})")
    return samples[0][None] if len(samples) == 1 else torch.stack(samples)


def _samples(out, device: torch.device | None) -> list[torch.Tensor]:
    """The samples of a DALI output, copied out of DALI's buffers (the next run reuses them)."""
    if not isinstance(out, TensorListGPU):
        return [torch.from_numpy(np.array(out[i])) for i in range(len(out))]
    stream = torch.cuda.current_stream(device)
    parts = []
    for i in range(len(out)):
        part = torch.empty(out[i].shape(), dtype=to_torch_type[out[i].dtype], device=device)
        feed_ndarray(out[i], part, cuda_stream=stream)
        parts.append(part)
    stream.synchronize()
    return parts
