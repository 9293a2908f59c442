"""The first step of both entry ensembles: refuse what the chain cannot take, and turn the request into tensors.

Per request (one video, or one segment of a long one):
1. the parameters: `class` (a VOC class name) and `threshold` (in [0, 1]), the config's defaults when absent;
   anything else is refused (a misspelt parameter would otherwise be ignored);
2. the video: readable, with a video stream, in a format this server's decoder takes (codec, chroma, bit depth and
   size, as `decoder_formats` says, asked of the GPU), within the request limits,
   without an edit list that hides frames (DALI would decode them);
   and, on a GPU, short enough that its decoded frames fit the video's share of the GPU memory (the decoder runs
   ahead of the segmenter by up to the whole request: this is the bound on what a video holds at once);
3. out: CLASS_ID, THRESHOLD and FRAME_SIZE (H, W), which the decoder carries along with every chunk.
An error here fails the request with a message for the user; nothing is decoded.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from pipelines import decode, mask
from stream_client import protocol
from stream_client.probe import VideoProbe, probe


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.info = protocol.ServerInfo.from_parameters(params)
        self.max_height, self.max_width = json.loads(params["max_frame_size"])
        self.formats_asked = False

    def _ask_formats(self) -> None:
        """What the decoder takes, from `decoder_formats` (once: it asked the device when the server started)."""
        request = pb_utils.InferenceRequest(
            model_name=protocol.FORMATS_MODEL, requested_output_names=[protocol.FORMATS], inputs=[]
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"check_video: {response.error().message()}")
        text = pb_utils.get_output_tensor_by_name(response, protocol.FORMATS).as_numpy()[0]
        self.info = self.info.with_formats(protocol.formats_from_json(text.decode()))
        self.formats_asked = True

    def execute(self, requests: list) -> list:
        if not self.formats_asked:
            self._ask_formats()
        responses = []
        for request in requests:
            try:
                class_id, threshold = self._options(request)
                video = pb_utils.get_input_tensor_by_name(request, protocol.VIDEO).as_numpy()
                # The mask's ensemble asks for no frame size: it decodes no frames.
                found = self._check(video, frames=decode.FRAME_SIZE in request.requested_output_names())
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            values = {
                decode.CLASS_ID: np.array([[class_id]], np.int32),
                decode.THRESHOLD: np.array([[threshold]], np.float32),
                decode.FRAME_SIZE: np.array([[found.height, found.width]], np.int32),
            }
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in values.items()]))
        return responses

    def _options(self, request) -> tuple[int, float]:
        params = json.loads(request.parameters() or "{}")
        unknown = sorted(k for k in params if k not in protocol.PARAMETERS and not k.startswith("triton_"))
        if unknown:
            raise ValueError(f"unknown request parameters {unknown}; this model takes {list(protocol.PARAMETERS)}")
        class_id = mask.class_index(str(params.get(protocol.CLASS_PARAMETER, self.info.default_class)))
        value = params.get(protocol.THRESHOLD_PARAMETER, self.info.default_threshold)
        try:
            threshold = float("nan") if isinstance(value, bool) else float(value)  # float(True) would be 1.0
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], not {value!r}")
        return class_id, threshold

    def _check(self, video: np.ndarray, frames: bool) -> VideoProbe:
        """What the video holds, once it is known to be one this server takes."""
        if video.ndim != 2 or video.shape[0] != 1:
            raise ValueError(f"{protocol.VIDEO} must be one encoded file, shape (1, bytes), not {video.shape}")
        if video.nbytes > self.info.max_video_bytes:
            raise ValueError(
                f"the video is {video.nbytes} bytes, more than this server takes in one request "
                f"({self.info.max_video_bytes}): send it in segments (the project's client does)"
            )
        found = probe(video[0].data)
        if found.height > self.max_height or found.width > self.max_width:
            raise ValueError(
                f"frames of {found.width}x{found.height} are larger than this server decodes "
                f"({self.max_width}x{self.max_height})"
            )
        if found.packets > self.info.max_video_frames:
            raise ValueError(
                f"the video has {found.packets} frames, more than this server takes in one request "
                f"({self.info.max_video_frames}): send it in segments (the project's client does)"
            )
        fits = self.info.max_frames(found.height, found.width, frames)
        if found.packets > fits:
            size = self.info.frame_bytes(found.height, found.width, frames) * found.packets / 2**30
            raise ValueError(
                f"the video's {found.packets} frames of {found.width}x{found.height} would hold {size:.2f} GiB of this "
                f"server's {self.info.decoder_device.upper()} memory at once, more than a request's share "
                f"({self.info.video_memory_bytes / 2**30:.2f} GiB): send segments of at most {fits} frames (the "
                "project's client cuts them so)"
            )
        if why := self.info.refusal(found.codec, found.chroma, found.bit_depth, found.width, found.height):
            raise ValueError(
                f"this server cannot decode the video: {why}; re-encode it (the project's client does, as it reads "
                f"what this server's decoder takes from {protocol.FORMATS_MODEL})"
            )
        if found.hidden:
            # DALI's video input decodes the frames an edit list cuts: its frames would not be the video's, and the
            # decoder's pipeline would keep the surplus for the next video.
            raise ValueError(
                f"the container's edit list hides {found.hidden} frames of the video, which this server's decoder "
                "cannot skip: re-encode the video, or remux it without the edit list (Matroska)"
            )
        return found
