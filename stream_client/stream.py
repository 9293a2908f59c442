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
from stream_client.access import Tls


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


# What Triton says when a restricted protocol is called without its header (or with a wrong value).
_RESTRICTED = re.compile(r"restricted, expecting header '(?P<header>[^']+)'")


def explain(
    url: str,
    error: InferenceServerException,
    tls: Tls | None = None,
    headers: dict[str, str] | None = None,
    *,
    connecting: bool = False,
) -> str:
    """A refused or failed call -> one line that names the server and the likely cause. `connecting`: the first
    calls (a closed socket then hints at TLS; later it means the server went away)."""
    message = error.message() or str(error)
    if found := _RESTRICTED.search(message):
        header = found["header"]
        sent = "the value sent is wrong" if header.lower() in (headers or {}) else "it was not sent"
        return (
            f"the server at {url} refused access: it wants the header {header!r} with its access key, and {sent} "
            f"(--header {header}=VALUE or --header-from-env {header}=ENVVAR)"
        )
    if not connecting:
        return f"{url}: {message}"
    if "WRONG_VERSION_NUMBER" in message:
        return f"the server at {url} does not speak TLS on this port: leave out --tls and --tls-ca ({message})"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return (
            f"the server at {url} has a certificate this client does not trust: give the CA that signed it with "
            f"--tls-ca FILE ({message})"
        )
    if "Tls handshake failed" in message or "SSL_ERROR" in message:
        return f"TLS with the server at {url} failed: {message}"
    if "Socket closed" in message or "Connection reset" in message:
        if tls is None:
            cause = "it may want TLS (--tls, or --tls-ca FILE)"
        elif tls.certificate_chain is None:
            cause = "it may want a client certificate (mutual TLS: --tls-cert FILE --tls-key FILE)"
        else:
            cause = "it may not accept this client certificate"
        return f"the server at {url} closed the connection: {cause} ({message})"
    return f"no Triton server at {url}: {message}"


@dataclass(frozen=True)
class ServerInfo:
    decoder_device: str
    codecs: tuple[str, ...]
    default_class: str
    default_threshold: float


class SegmentationStream:
    """`with SegmentationStream(url) as stream:` then `stream.send(...)` and `stream.next_event()`."""

    def __init__(
        self,
        url: str,
        *,
        idle_timeout: float = 300.0,
        events: "queue.Queue[Event] | None" = None,
        tls: Tls | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`events`: a queue to share with other streams (several servers, one consumer). `tls`: gRPC over TLS (None:
        plain). `headers`: sent with every call, the stream included (e.g. a Triton access key:
        `{"triton-grpc-protocol-KEY": VALUE}`)."""
        self.url = url
        self.idle_timeout = idle_timeout
        self.tls = tls
        self.headers = {k.lower(): v for k, v in (headers or {}).items()} or None  # gRPC metadata keys: lowercase
        self.client = grpcclient.InferenceServerClient(url, **(tls.client_options() if tls else {}))
        self._events: queue.Queue[Event] = events if events is not None else queue.Queue()
        self._config: dict | None = None

    def __enter__(self) -> "SegmentationStream":
        try:
            ready = self.client.is_model_ready(models.ENTRY, headers=self.headers)
            if ready:
                # Health stays open on a server with restricted protocols; the model's config does not: a missing
                # key or a wrong one is refused here, before any video is sent.
                self._config = self.client.get_model_config(models.ENTRY, headers=self.headers, as_json=True)
        except InferenceServerException as e:
            self.client.close()
            raise StreamError(explain(self.url, e, self.tls, self.headers, connecting=True)) from None
        if not ready:
            self.client.close()
            raise StreamError(f"the server at {self.url} has no ready model {models.ENTRY!r}")
        self.client.start_stream(callback=self._on_response, headers=self.headers)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # On an error or Ctrl-C, cancel what is in flight so that the server stops decoding it.
        self.client.stop_stream(cancel_requests=exc_type is not None)
        self.client.close()

    def server_info(self) -> ServerInfo:
        if self._config is None:
            try:
                self._config = self.client.get_model_config(models.ENTRY, headers=self.headers, as_json=True)
            except InferenceServerException as e:
                raise StreamError(explain(self.url, e, self.tls, self.headers)) from None
        params = {k: v["string_value"] for k, v in self._config["config"]["parameters"].items()}
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
            raise StreamError(explain(self.url, e, self.tls, self.headers)) from None

    def next_event(self) -> Event:
        try:
            return self._events.get(timeout=self.idle_timeout)
        except queue.Empty:
            raise StreamError(f"nothing arrived from {self.url} for {self.idle_timeout:.0f} s") from None

    def _on_response(self, result: grpcclient.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None:
            found = _ERROR.match(error.message() or "")
            failed = (
                Failed(found["video"], found["message"])
                if found
                else Failed(None, explain(self.url, error, self.tls, self.headers))
            )
            self._events.put(failed)
            return
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            self._events.put(Finished(response.id))
            return
        first = int(result.as_numpy(models.FRAME_INDEX)[0])
        self._events.put(Chunk(response.id, first, result.as_numpy(models.SEGMENTED), result.as_numpy(models.MASK)))
