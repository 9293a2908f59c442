"""One gRPC stream to the `segment_video` model: videos go in as requests, chunks of segmented frames come out.

The shape of tritonclient's streaming example: the stream is opened once, each request carries an id, one callback
puts what arrives on a queue, and the caller drains it. Events are `Chunk`, `Finished` or `Failed`, each naming its
video; chunks of one video may arrive in any order (put them back with `reorder.Reorderer`).
"""

import queue
import re
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from repo import models


@dataclass
class Chunk:
    video: str
    first: int  # index of its first frame in the video
    frames: np.ndarray | None  # (F, H, W, 3) uint8, the segmented frames (when asked for)
    mask: np.ndarray | None = None  # (F, h, w) uint8 0/1 at the model's size (when asked for)

    def __len__(self) -> int:
        return len(self.frames if self.frames is not None else self.mask)


@dataclass
class Finished:
    video: str


@dataclass
class Failed:
    video: str | None  # None: the stream itself failed, for every video on it
    message: str


Event = Chunk | Finished | Failed

# The server names the video in its errors ("[id] message"): tritonclient passes errors on without their request.
_ERROR = re.compile(r"^\[(?P<video>[^\]]*)\] (?P<message>.*)$", re.DOTALL)


class StreamError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerInfo:
    decoder_device: str
    codecs: tuple[str, ...]
    default_class: str
    default_threshold: float


class SegmentationStream:
    """`with SegmentationStream(url) as stream:` then `stream.send(...)` and `stream.next_event()`."""

    def __init__(self, url: str, *, idle_timeout: float = 300.0, events: "queue.Queue[Event] | None" = None) -> None:
        """`events`: a queue to share with other streams (several servers, one consumer)."""
        self.url = url
        self.idle_timeout = idle_timeout
        self.client = grpcclient.InferenceServerClient(url)
        self._events: queue.Queue[Event] = events if events is not None else queue.Queue()

    def __enter__(self) -> "SegmentationStream":
        try:
            ready = self.client.is_model_ready(models.ENTRY)
        except InferenceServerException as e:
            raise StreamError(f"no Triton server at {self.url}: {e.message()}") from None
        if not ready:
            raise StreamError(f"the server at {self.url} has no ready model {models.ENTRY!r}")
        self.client.start_stream(callback=self._on_response)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # On an error or Ctrl-C, cancel what is in flight so that the server stops decoding it.
        self.client.stop_stream(cancel_requests=exc_type is not None)
        self.client.close()

    def server_info(self) -> ServerInfo:
        params = {
            k: v["string_value"]
            for k, v in self.client.get_model_config(models.ENTRY, as_json=True)["config"]["parameters"].items()
        }
        return ServerInfo(
            params["decoder_device"],
            tuple(params["decoder_codecs"].split(",")),
            params["default_class"],
            float(params["default_threshold"]),
        )

    def send(
        self,
        video: str,
        data: bytes,
        *,
        class_name: str | None = None,
        threshold: float | None = None,
        returns: str = "segmented",
    ) -> None:
        """`returns`: "segmented" (frames, the frame size), "mask" (the class mask, the model's size) or "both"."""
        array = np.frombuffer(data, np.uint8)
        tensor = grpcclient.InferInput(models.VIDEO, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        parameters: dict[str, str | float] = {}
        if class_name is not None:
            parameters[models.CLASS_PARAMETER] = class_name
        if threshold is not None:
            parameters[models.THRESHOLD_PARAMETER] = threshold
        if returns != "segmented":
            parameters[models.RETURNS_PARAMETER] = returns
        outputs = [*models.RETURNS.get(returns, (models.SEGMENTED,)), models.FRAME_INDEX]
        try:
            self.client.async_stream_infer(
                models.ENTRY,
                [tensor],
                request_id=video,
                outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                parameters=parameters or None,
                enable_empty_final_response=True,
            )
        except InferenceServerException as e:  # the stream broke (its cause reaches the callback too)
            raise StreamError(f"{self.url}: {e.message()}") from None

    def next_event(self) -> Event:
        try:
            return self._events.get(timeout=self.idle_timeout)
        except queue.Empty:
            raise StreamError(f"nothing arrived from {self.url} for {self.idle_timeout:.0f} s") from None

    def _on_response(self, result: grpcclient.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None:
            found = _ERROR.match(error.message() or "")
            failed = Failed(found["video"], found["message"]) if found else Failed(None, f"{self.url}: {error}")
            self._events.put(failed)
            return
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            self._events.put(Finished(response.id))
            return
        first = int(result.as_numpy(models.FRAME_INDEX)[0])
        self._events.put(Chunk(response.id, first, result.as_numpy(models.SEGMENTED), result.as_numpy(models.MASK)))
