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

import faulthandler
import json
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from pipelines import decode, mask
from pipelines.probe import VideoProbe, probe
from repo import models
from repo.flow_control import CREDITS_PARAMETER, Credits
from repo.triton_tensors import from_torch, output_tensor, to_torch

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
KNOWN_PARAMETERS = {models.CLASS_PARAMETER, models.THRESHOLD_PARAMETER, models.RETURNS_PARAMETER}


def infer(model: str, inputs: list, outputs: list[str]) -> "pb_utils.InferenceResponse":
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs).exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return response


def _drain(responses) -> None:
    for _ in responses:
        pass


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.default_class = params["default_class"]
        self.default_threshold = float(params["default_threshold"])
        self.in_flight = int(params["chunks_in_flight"])
        self.device = params["decoder_device"]
        self.codecs = params["decoder_codecs"].split(",")
        self.pool_bytes_per_video = int(params["pool_bytes_per_video"])
        self.frames_per_response = int(params["frames_per_response"])
        self.model_size = json.loads(params["model_size"])
        self.model_value_bytes = 2 if params["half"] == "true" else 4
        self.max_bytes = int(params["max_video_bytes"])
        self.max_frames = int(params["max_video_frames"])
        self.max_height, self.max_width = json.loads(params["max_frame_size"])
        self.chunk_workers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chunk")
        # This instance's share of the decoders: videos beyond it wait here, not in the decoder's queue (BLS requests
        # left waiting in numbers stall the stub).
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
        unknown = sorted(k for k in params if k not in KNOWN_PARAMETERS and not k.startswith("triton_"))
        if unknown:
            raise ValueError(f"unknown request parameters {unknown}; this model takes {sorted(KNOWN_PARAMETERS)}")
        returns = str(params.get(models.RETURNS_PARAMETER, "segmented"))
        if returns not in models.RETURNS:
            raise ValueError(f"returns must be one of {', '.join(models.RETURNS)}, not {returns!r}")
        class_id = mask.class_index(str(params.get(models.CLASS_PARAMETER, self.default_class)))
        value = params.get(models.THRESHOLD_PARAMETER, self.default_threshold)
        try:
            threshold = float("nan") if isinstance(value, bool) else float(value)  # float(True) would be 1.0
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], not {params[models.THRESHOLD_PARAMETER]!r}")
        return class_id, threshold, models.RETURNS[returns]

    def _chunks_in_flight(self, found: VideoProbe, returns: tuple[str, ...]) -> int:
        """As many chunks as `chunks_in_flight`, or fewer where their GPU tensors would not fit this video's share of
        Triton's CUDA pool (a full pool blocks sends, and the video with them)."""
        if not self.pool_bytes_per_video:
            return self.in_flight
        h, w = self.model_size
        # Each tensor is in the pool twice: made by one model, taken by the next.
        per_frame = 2 * (3 * h * w * self.model_value_bytes + h * w * self.model_value_bytes + h * w)
        if models.SEGMENTED in returns:
            per_frame += 2 * 2 * found.height * found.width * 3  # the frames and the segmented frames
        fits = self.pool_bytes_per_video // (self.frames_per_response * per_frame)
        return max(1, min(self.in_flight, fits))

    def _check(self, video: np.ndarray) -> VideoProbe:
        """What the video holds, once it is known to be one this server takes."""
        if video.ndim != 1:
            raise ValueError(f"{models.VIDEO} must be the encoded file's bytes, shape (bytes,), not {video.shape}")
        if video.nbytes > self.max_bytes:
            raise ValueError(
                f"the video is {video.nbytes} bytes, more than this server takes in one request ({self.max_bytes}): "
                "send it in segments (the project's client does)"
            )
        found = probe(video.data)
        if found.height > self.max_height or found.width > self.max_width:
            raise ValueError(
                f"frames of {found.width}x{found.height} are larger than this server decodes "
                f"({self.max_width}x{self.max_height})"
            )
        if found.packets > self.max_frames:
            raise ValueError(
                f"the video has {found.packets} frames, more than this server takes in one request "
                f"({self.max_frames}): send it in segments (the project's client does)"
            )
        if found.codec not in self.codecs:
            raise ValueError(
                f"this server decodes on the {self.device} and reads {', '.join(self.codecs)}, not {found.codec}: "
                "re-encode the video (the project's client does it when it sees this server's codecs)"
            )
        if found.hidden:
            # DALI's video input decodes the frames an edit list cuts: its frames would not be the video's, and the
            # decoder's pipeline would keep the surplus for the next video.
            raise ValueError(
                f"the container's edit list hides {found.hidden} frames of the video, which this server's decoder "
                "cannot skip: re-encode the video, or remux it without the edit list (Matroska)"
            )
        return found

    def _segment(self, request) -> None:
        with self.decoding:
            self._segment_video(request)

    def _segment_video(self, request) -> None:
        sender = request.get_response_sender()
        pending: deque[Future] = deque()
        credits = None
        responses, decoding = (), False  # the decoder's stream, and whether it has not ended yet
        try:
            class_id, threshold, returns = self._options(request)
            video = pb_utils.get_input_tensor_by_name(request, models.VIDEO).as_numpy()
            found = self._check(video)
            # Frames are decoded out only when the client wants pixels back: a mask needs the model input alone.
            wanted = [decode.FRAMES, decode.MODEL_INPUT] if models.SEGMENTED in returns else [decode.MODEL_INPUT]
            in_flight = self._chunks_in_flight(found, returns)
            credits = Credits(in_flight)
            decoder = pb_utils.InferenceRequest(
                model_name=models.DECODER,
                inputs=[pb_utils.Tensor(decode.VIDEO, video[None])],
                requested_output_names=wanted,
                parameters={CREDITS_PARAMETER: str(credits.path)},
            )
            first = 0
            responses, decoding = decoder.exec(decoupled=True), True
            for response in responses:
                if response.has_error():  # the decoder's last response
                    decoding = False
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
                while len(pending) >= in_flight:
                    self._send(sender, pending.popleft())
                    credits.give()
            decoding = False
            while pending:
                self._send(sender, pending.popleft())
            if first != found.packets:  # what was sent stays sent; the client learns the rest is missing
                raise RuntimeError(f"the decoder returned {first} of the video's {found.packets} frames")
        except Exception as e:  # noqa: BLE001 - every failure ends this video with an error, not the server
            for future in pending:
                future.cancel()
            if credits is not None:
                credits.close(cancel=True)  # the decoder stops at its next chunk
            # Asked before the final response: after it, asking crashes tritonserver 2.51 (a freed response factory).
            outcome = "cancelled" if request.is_cancelled() else "failed"
            # tritonclient hands a stream's errors to the callback without their request: say which video it was.
            message = f"[{request.request_id()}] {e}"
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
            self.metrics.video(outcome)
            if decoding:
                # Read the decoder's stream to its end: one left open keeps this process from stopping with the
                # server. On a thread of its own: the stream of a cancelled request may never end.
                threading.Thread(target=_drain, args=(responses,), daemon=True).start()
            return
        credits.close()
        sender.send(flags=FINAL)
        self.metrics.video("done")

    def _send(self, sender, chunk: Future) -> None:
        response, frames, started = chunk.result()
        sender.send(response)
        self.metrics.chunk(frames, time.monotonic() - started)

    def _chunk(self, frames, model_input, class_id: int, threshold: float, returns: tuple[str, ...], first: int):
        """Segment and mask one chunk: (its response, its frame count, when it started)."""
        started = time.monotonic()
        n = len(model_input)
        wanted = pb_utils.Tensor(mask.CLASS_ID, np.full((n, 1), class_id, np.int32))
        probs = infer(models.SEGMENTER, [from_torch(decode.MODEL_INPUT, model_input), wanted], [models.CLASS_PROBS])
        inputs = [
            from_torch(mask.PROBS, output_tensor(probs, models.CLASS_PROBS)),
            pb_utils.Tensor(mask.CLASS_ID, np.zeros((n, 1), np.int32)),  # the only channel of CLASS_PROBS
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
        self.videos = {
            outcome: videos.Metric(labels={"outcome": outcome}) for outcome in ("done", "failed", "cancelled")
        }

    def chunk(self, frames: int, seconds: float) -> None:
        with self.lock:
            self.frames.increment(frames)
            self.chunks.increment(1)
            self.latency_us.increment(int(seconds * 1e6))

    def video(self, outcome: str) -> None:
        with self.lock:
            self.videos[outcome].increment(1)
