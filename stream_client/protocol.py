"""The wire protocol between the client and the model repository, written once: both sides import this module.

A request is one encoded video (or one segment of a long one) sent to an entry model; the responses are its chunks
of frames, in order, then the final flag. Only the standard library here: the client installs without the server.
"""

from dataclasses import dataclass

ENTRY = "segment_video"  # the segmented frames (and the class mask)
MASK_ENTRY = "segment_video_mask"  # the class mask alone: no frames are decoded out or sent back

VIDEO = "VIDEO"  # the request's one input: the encoded file's bytes, UINT8 (bytes,)
# Outputs, each (1, F, ...) per response: a chunk of F frames.
SEGMENTED = "SEGMENTED"  # (1, F, 3 H'/2, W') uint8, NV12: the frames with only the class's pixels kept (others 0)
MASK = "MASK"  # (1, F, h, w) uint8 0/1: the class mask at the model's size (h, w)

CLASS_PARAMETER = "class"  # a VOC class name (the server's default: `ServerInfo.default_class`)
THRESHOLD_PARAMETER = "threshold"  # keep a pixel when its class probability is above this, in [0, 1]
PARAMETERS = (CLASS_PARAMETER, THRESHOLD_PARAMETER)

# What a request asks for -> (the model it goes to, the outputs it asks for).
RETURNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segmented": (ENTRY, (SEGMENTED,)),
    "mask": (MASK_ENTRY, (MASK,)),
    "both": (ENTRY, (SEGMENTED, MASK)),
}


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size of SEGMENTED's frames: NV12 wants even sizes, so an odd one gets a black row or column."""
    return height + height % 2, width + width % 2


@dataclass(frozen=True)
class ServerInfo:
    """What a server says of itself, in its entry models' config parameters."""

    decoder_device: str  # "cpu" or "gpu"
    codecs: tuple[str, ...]  # the codecs its decoder reads (FFmpeg names)
    default_class: str
    default_threshold: float
    model_size: tuple[int, int]  # (h, w) of MASK
    max_video_bytes: int  # per request
    max_video_frames: int  # per request
    # What one request may hold of the server's GPU memory at once (0: no such limit): its decoder runs ahead of the
    # segmenter by up to the whole request, so a request's frames must fit (`max_frames`).
    video_memory_bytes: int = 0
    model_value_bytes: int = 4  # 2 for a float16 model

    def frame_bytes(self, height: int, width: int, frames: bool) -> int:
        """GPU memory a decoded frame holds until it is done: the model's input, probability and mask, and with
        `frames` the frame itself and its segmented NV12."""
        h, w = self.model_size
        model = h * w * (4 * self.model_value_bytes + 1)
        return model + (height * width * 9 // 2 if frames else 0)

    def max_frames(self, height: int, width: int, frames: bool) -> int:
        """The most frames of this size one request may have."""
        if not self.video_memory_bytes:
            return self.max_video_frames
        return max(1, min(self.max_video_frames, self.video_memory_bytes // self.frame_bytes(height, width, frames)))

    def parameters(self) -> dict[str, str]:
        return {
            "decoder_device": self.decoder_device,
            "decoder_codecs": ",".join(self.codecs),
            "default_class": self.default_class,
            "default_threshold": str(self.default_threshold),
            "model_size": f"{self.model_size[0]}x{self.model_size[1]}",
            "max_video_bytes": str(self.max_video_bytes),
            "max_video_frames": str(self.max_video_frames),
            "video_memory_bytes": str(self.video_memory_bytes),
            "model_value_bytes": str(self.model_value_bytes),
        }

    @classmethod
    def from_parameters(cls, values: dict[str, str]) -> "ServerInfo":
        h, w = values["model_size"].split("x")
        return cls(
            values["decoder_device"],
            tuple(values["decoder_codecs"].split(",")),
            values["default_class"],
            float(values["default_threshold"]),
            (int(h), int(w)),
            int(values["max_video_bytes"]),
            int(values["max_video_frames"]),
            int(values["video_memory_bytes"]),
            int(values["model_value_bytes"]),
        )
