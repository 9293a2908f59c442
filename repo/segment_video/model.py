"""The entry model the client calls: a request per video, a response per chunk of segmented frames, the final flag.

Why a decoupled BLS model and not an ensemble: an ensemble step cannot take the request's class and threshold
together with the outputs of a decoupled step (Triton refuses to load it), and a decoupled decoder inside an
ensemble runs ahead of the segmenter without bound. Here each video keeps at most `chunks_in_flight` chunks
between the decoder and the client, and every failure reaches the client as an error on its stream.

Per video (each on its own thread, so that one instance serves many videos at once):
1. check it: readable, has a video stream, in a codec this server's decoder reads (a clear error if not);
2. stream the decoder's responses; each chunk's frames are the batch of one segmenter call and one masker call
   (the decoder's (chunks, frames, ...) tensors are flattened to (chunks * frames, ...));
3. send SEGMENTED with FRAME_INDEX, the index of its first frame in the video, as each chunk is done.
"""

import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from pipelines import decode, mask
from pipelines.probe import probe
from repo import models
from repo.triton_tensors import from_torch, output_tensor, to_torch

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def infer(model: str, inputs: list, outputs: list[str]) -> "pb_utils.InferenceResponse":
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs).exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return response


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.default_class = params["default_class"]
        self.default_threshold = float(params["default_threshold"])
        self.in_flight = int(params["chunks_in_flight"])
        self.device = params["decoder_device"]
        self.codecs = params["decoder_codecs"].split(",")
        self.chunk_workers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chunk")
        # Videos wait here, not in the decoder's queue: BLS requests left waiting in numbers stall the stub.
        self.decoding = threading.Semaphore(int(params["max_active_videos"]))
        self.metrics = Metrics()

    def execute(self, requests: list) -> None:
        for request in requests:
            threading.Thread(target=self._segment, args=(request,), daemon=True).start()
        return None

    def finalize(self) -> None:
        self.chunk_workers.shutdown(wait=True, cancel_futures=True)

    def _options(self, request) -> tuple[int, float, tuple[str, ...]]:
        params = json.loads(request.parameters() or "{}")
        returns = str(params.get(models.RETURNS_PARAMETER, "segmented"))
        if returns not in models.RETURNS:
            raise ValueError(f"returns must be one of {', '.join(models.RETURNS)}, not {returns!r}")
        class_id = mask.class_index(str(params.get(models.CLASS_PARAMETER, self.default_class)))
        try:
            threshold = float(params.get(models.THRESHOLD_PARAMETER, self.default_threshold))
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], not {params[models.THRESHOLD_PARAMETER]!r}")
        return class_id, threshold, models.RETURNS[returns]

    def _check(self, video: np.ndarray) -> None:
        found = probe(video.data)
        if found.codec not in self.codecs:
            raise ValueError(
                f"this server decodes on the {self.device} and reads {', '.join(self.codecs)}, not {found.codec}: "
                "re-encode the video (the project's client does it when it sees this server's codecs)"
            )

    def _segment(self, request) -> None:
        with self.decoding:
            self._segment_video(request)

    def _segment_video(self, request) -> None:
        sender = request.get_response_sender()
        pending: deque[Future] = deque()
        try:
            class_id, threshold, returns = self._options(request)
            video = pb_utils.get_input_tensor_by_name(request, models.VIDEO).as_numpy()
            self._check(video)
            # Frames are decoded out only when the client wants pixels back: a mask needs the model input alone.
            wanted = [decode.FRAMES, decode.MODEL_INPUT] if models.SEGMENTED in returns else [decode.MODEL_INPUT]
            decoder = pb_utils.InferenceRequest(
                model_name=models.DECODER,
                inputs=[pb_utils.Tensor(decode.VIDEO, video[None])],
                requested_output_names=wanted,
            )
            first = 0
            for response in decoder.exec(decoupled=True):
                if response.has_error():
                    raise RuntimeError(response.error().message())
                if request.is_cancelled():
                    raise RuntimeError("cancelled by the client")
                if not response.output_tensors():  # the decoder's empty final response
                    continue
                model_input = output_tensor(response, decode.MODEL_INPUT).flatten(0, 1)
                frames = output_tensor(response, decode.FRAMES).flatten(0, 1) if models.SEGMENTED in returns else None
                chunk = (frames, model_input, class_id, threshold, returns, first)
                pending.append(self.chunk_workers.submit(self._chunk, *chunk))
                first += len(model_input)
                while len(pending) >= self.in_flight:
                    self._send(sender, pending.popleft())
            while pending:
                self._send(sender, pending.popleft())
        except Exception as e:  # noqa: BLE001 - every failure ends this video with an error, not the server
            for future in pending:
                future.cancel()
            # tritonclient hands a stream's errors to the callback without their request: say which video it was.
            message = f"[{request.request_id()}] {e}"
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
            self.metrics.video(done=False)
            return
        sender.send(flags=FINAL)
        self.metrics.video(done=True)

    def _send(self, sender, chunk: Future) -> None:
        response, frames, started = chunk.result()
        sender.send(response)
        self.metrics.chunk(frames, time.monotonic() - started)

    def _chunk(self, frames, model_input, class_id: int, threshold: float, returns: tuple[str, ...], first: int):
        """Segment and mask one chunk: (its response, its frame count, when it started)."""
        started = time.monotonic()
        n = len(model_input)
        probs = infer(models.SEGMENTER, [from_torch(decode.MODEL_INPUT, model_input)], [mask.PROBS])
        inputs = [
            pb_utils.get_output_tensor_by_name(probs, mask.PROBS),
            pb_utils.Tensor(mask.CLASS_ID, np.full((n, 1), class_id, np.int32)),
            pb_utils.Tensor(mask.THRESHOLD, np.full((n, 1), threshold, np.float32)),
        ]
        if frames is None:
            masked = infer(models.CLASS_MASKER, inputs, list(returns))
        else:
            masked = infer(models.MASKER, [from_torch(mask.FRAMES, frames), *inputs], list(returns))
        outputs = [from_torch(name, to_torch(pb_utils.get_output_tensor_by_name(masked, name))) for name in returns]
        first_index = pb_utils.Tensor(models.FRAME_INDEX, np.array([first], np.int64))
        return pb_utils.InferenceResponse(output_tensors=[*outputs, first_index]), n, started


class Metrics:
    """The entry model's own counters on Triton's metrics endpoint (besides Triton's per-model ones).

    Updated under one lock: concurrent updates from several threads were seen to crash tritonserver 2.51.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.families = []  # a family must outlive its metrics

        def counter(name: str, description: str):
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            self.families.append(family)
            return family

        self.frames = counter("segment_video_frames_total", "Frames segmented and sent").Metric(labels={})
        self.chunks = counter("segment_video_chunks_total", "Chunks segmented and sent").Metric(labels={})
        latency = counter("segment_video_chunk_latency_us_total", "Sum of chunk latencies, decoded to sent (us)")
        self.latency_us = latency.Metric(labels={})
        videos = counter("segment_video_videos_total", "Videos (segments) ended, by outcome")
        self.done = videos.Metric(labels={"outcome": "done"})
        self.failed = videos.Metric(labels={"outcome": "failed"})

    def chunk(self, frames: int, seconds: float) -> None:
        with self.lock:
            self.frames.increment(frames)
            self.chunks.increment(1)
            self.latency_us.increment(int(seconds * 1e6))

    def video(self, done: bool) -> None:
        with self.lock:
            (self.done if done else self.failed).increment(1)
