"""One gRPC stream to a server's entry models: videos go in as requests, chunks of frames come out.

    with SegmentationStream("gpu-a:8001") as stream:
        stream.send("clip", Path("clip.mp4").read_bytes(), class_name="person", returns="both")
        while not isinstance(event := stream.next_event(), (Finished, Failed)):
            print(event.first, event.frames.shape, event.mask.mean())    # a Chunk: its frames, in order

The shape of Triton's streaming examples: the stream is opened once, each request carries an id, one thread puts
what arrives on a queue, the caller drains it. Events are `Chunk`, `Finished` or `Failed`, each naming its video;
the chunks of one video arrive in order (the server keeps it), those of several videos interleave.
"""

import io
import queue
import re
import threading
from dataclasses import dataclass

import av
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from stream_client import protocol
from stream_client.access import Tls
from stream_client.videos import nv12_to_rgb


@dataclass
class Chunk:
    """Frames [first, first + len) of a video, as the server sent them."""

    video: str
    first: int  # index of its first frame in the video
    segmented: np.ndarray | None  # (F, 3 H'/2, W') uint8 NV12, the frame size rounded up to even (when asked for)
    mask: np.ndarray | None  # (F, h, w) uint8 0/1 at the model's size (when asked for)
    size: tuple[int, int]  # (H, W): the video's frame size

    def __len__(self) -> int:
        return len(self.segmented if self.segmented is not None else self.mask)

    @property
    def frames(self) -> np.ndarray | None:
        """The segmented frames as RGB, (F, H, W, 3) uint8 (converted from NV12 here, on the client)."""
        if self.segmented is None:
            return None
        return np.stack([nv12_to_rgb(f, *self.size) for f in self.segmented])


@dataclass
class Finished:
    video: str


@dataclass
class Failed:
    video: str | None  # None: the stream itself failed, for every video on it
    message: str


Event = Chunk | Finished | Failed

_ENSEMBLE = re.compile(r"^in ensemble '[^']*', ")  # what Triton puts before a step's error
# A DALI pipeline's error: the operator's definition traceback, then what went wrong after "encountered:".
_DALI = re.compile(
    r"Critical error in pipeline:.*?encountered:\s*(?:Assert on \"[^\n]*?\" failed: )?(?P<error>[^\n]*).*", re.DOTALL
)
# What Triton says when a restricted protocol is called without its header (or with a wrong value).
_RESTRICTED = re.compile(r"restricted, expecting header '(?P<header>[^']+)'")


class StreamError(RuntimeError):
    pass


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


def one_line(message: str) -> str:
    """A server's error as one line: without Triton's ensemble prefix and DALI's traceback of its pipeline."""
    return " ".join(_DALI.sub(r"\g<error>", _ENSEMBLE.sub("", message)).split())


def frame_size(data: bytes) -> tuple[int, int]:
    """(H, W) of an encoded video's frames, from its header."""
    with av.open(io.BytesIO(data)) as container:
        context = container.streams.video[0].codec_context
        return context.height, context.width


@dataclass
class _Sent:
    size: tuple[int, int]
    next_frame: int = 0


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
        self._requests: queue.Queue = queue.Queue()
        self._sent: dict[str, _Sent] = {}
        self._info: protocol.ServerInfo | None = None
        self._cancelled = False

    def __enter__(self) -> "SegmentationStream":
        try:
            ready = self.client.is_model_ready(protocol.ENTRY, headers=self.headers)
            if ready:
                # Health stays open on a server with restricted protocols; the model's config does not: a missing
                # key or a wrong one is refused here, before any video is sent.
                self._info = self._read_info()
        except InferenceServerException as e:
            self.client.close()
            raise StreamError(explain(self.url, e, self.tls, self.headers, connecting=True)) from None
        if not ready:
            self.client.close()
            raise StreamError(f"the server at {self.url} has no ready model {protocol.ENTRY!r}")
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if self.tls is None:
            self._channel = grpc.insecure_channel(self.url, options=options)
        else:
            self._channel = grpc.secure_channel(self.url, self.tls.credentials(), options=options)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        metadata = tuple((self.headers or {}).items())
        self._call = stub.ModelStreamInfer(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"stream {self.url}")
        self._reader.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # on an error or Ctrl-C, cancel what is in flight so that the server drops it
            self.cancel()
        self._requests.put(None)  # no more requests: the server ends the stream after its last response
        self._reader.join(timeout=10)
        self._channel.close()
        self.client.close()

    def cancel(self) -> None:
        """Cancel the stream: the server drops the videos in flight on it (their events stop coming)."""
        self._cancelled = True
        self._call.cancel()

    def _read_info(self) -> protocol.ServerInfo:
        config = self.client.get_model_config(protocol.ENTRY, headers=self.headers, as_json=True)
        info = protocol.ServerInfo.from_parameters(
            {k: v["string_value"] for k, v in config["config"]["parameters"].items()}
        )
        if not self.client.is_model_ready(protocol.FORMATS_MODEL, headers=self.headers):
            return info  # a server from before the decoder said what it takes: its codecs, at any size
        asked = self.client.infer(protocol.FORMATS_MODEL, [], headers=self.headers)
        return info.with_formats(protocol.formats_from_json(asked.as_numpy(protocol.FORMATS)[0].decode()))

    def server_info(self) -> protocol.ServerInfo:
        return self._info

    def send(
        self,
        video: str,
        data: bytes,
        *,
        class_name: str | None = None,
        threshold: float | None = None,
        returns: str = "segmented",
        size: tuple[int, int] | None = None,
    ) -> None:
        """Send one encoded video (or segment) under the id `video`. `returns`: "segmented" (the frames), "mask" (the
        class mask at the model's size) or "both". `size`: its frames' (H, W), when known (else read from `data`)."""
        if returns not in protocol.RETURNS:
            raise ValueError(f"returns must be one of {', '.join(protocol.RETURNS)}, not {returns!r}")
        model, outputs = protocol.RETURNS[returns]
        parameters: dict[str, object] = {}
        if class_name is not None:
            parameters[protocol.CLASS_PARAMETER] = class_name
        if threshold is not None:
            parameters[protocol.THRESHOLD_PARAMETER] = threshold
        self.send_request(video, data, model, outputs, parameters, size)

    def send_request(
        self,
        video: str,
        data: bytes,
        model: str,
        outputs: tuple[str, ...],
        parameters: dict[str, object],
        size: tuple[int, int] | None = None,
    ) -> None:
        """`send` without its checks: any model, outputs and parameters (tests send what a client should not)."""
        if not self._reader.is_alive():
            raise StreamError(f"the stream to {self.url} is closed")
        try:
            known = size or frame_size(data)
        except (av.FFmpegError, IndexError):
            known = (0, 0)  # not a video: the server says what is wrong with it
        self._sent[video] = _Sent(known)
        self._requests.put(_request(video, data, model, outputs, parameters))

    def next_event(self) -> Event:
        try:
            return self._events.get(timeout=self.idle_timeout)
        except queue.Empty:
            raise StreamError(f"nothing arrived from {self.url} for {self.idle_timeout:.0f} s") from None

    def _read(self) -> None:
        try:
            for response in self._call:
                self._on_response(response)
        except grpc.RpcError as e:
            if not self._cancelled:
                error = InferenceServerException(msg=f"[{e.code()}] {e.details()}")
                self._events.put(Failed(None, explain(self.url, error, self.tls, self.headers)))

    def _on_response(self, response: service_pb2.ModelStreamInferResponse) -> None:
        result = response.infer_response
        if response.error_message:
            sent = self._sent.pop(result.id, None)
            self._events.put(Failed(result.id if sent else None, one_line(response.error_message)))
            return
        sent = self._sent[result.id]
        if result.outputs:
            arrays = {
                o.name: np.frombuffer(raw, np.uint8).reshape(o.shape)[0]
                for o, raw in zip(result.outputs, result.raw_output_contents, strict=True)
            }
            segmented, mask = arrays.get(protocol.SEGMENTED), arrays.get(protocol.MASK)
            chunk = Chunk(result.id, sent.next_frame, segmented, mask, sent.size)
            sent.next_frame += len(chunk)
            self._events.put(chunk)
        if result.parameters["triton_final_response"].bool_param:
            del self._sent[result.id]
            self._events.put(Finished(result.id))


def _request(
    video: str, data: bytes, model: str, outputs: tuple[str, ...], parameters: dict[str, object]
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=video)
    tensor = request.inputs.add(name=protocol.VIDEO, datatype="UINT8")
    tensor.shape.extend([1, len(data)])
    request.raw_input_contents.append(bytes(data))
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in parameters.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        elif isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].string_param = str(value)
    # The final flag comes with the last chunk, or alone: every video ends with one `Finished`.
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request
