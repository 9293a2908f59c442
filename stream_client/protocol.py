"""The wire protocol between the client and the model repository, written once: both sides import this module.

A request is one encoded video (or one segment of a long one) sent to an entry model; the responses are its chunks
of frames, in order, then the final flag. Only the standard library here: the client installs without the server.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

ENTRY = "segment_video"  # the segmented frames (and the class mask)
MASK_ENTRY = "segment_video_mask"  # the class mask alone: no frames are decoded out or sent back

VIDEO = "VIDEO"  # the request's one input: the encoded file's bytes, UINT8 (bytes,)
# Outputs, each (1, F, ...) per response: a chunk of F frames.
SEGMENTED = "SEGMENTED"  # (1, F, 3 H'/2, W') uint8, NV12: the frames with only the class's pixels kept (others 0)
MASK = "MASK"  # (1, F, h, w) uint8 0/1: the class mask at the model's size (h, w)

CLASS_PARAMETER = "class"  # a VOC class name (the server's default: `ServerInfo.default_class`)
THRESHOLD_PARAMETER = "threshold"  # keep a pixel when its class probability is above this, in [0, 1] (0: all)
PARAMETERS = (CLASS_PARAMETER, THRESHOLD_PARAMETER)

# What a request asks for -> (the model it goes to, the outputs it asks for).
RETURNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segmented": (ENTRY, (SEGMENTED,)),
    "mask": (MASK_ENTRY, (MASK,)),
    "both": (ENTRY, (SEGMENTED, MASK)),
}


# What the server's decoder takes, asked of its device when the server starts (a GPU's NVDEC differs by model): a model
# with no input whose one output is JSON, a list of `DecoderFormat`s ([] on a CPU server: `ServerInfo.codecs` alone).
FORMATS_MODEL = "decoder_formats"
FORMATS = "FORMATS"
CHROMA_NAMES = {"420": "4:2:0", "422": "4:2:2", "444": "4:4:4", "400": "grey"}


@dataclass(frozen=True)
class DecoderFormat:
    """One codec in one chroma subsampling and bit depth, within sizes, that the decoder takes."""

    codec: str  # FFmpeg's name
    chroma: str  # "420", "422", "444" or "400"
    bit_depth: int
    min_size: tuple[int, int]  # (width, height)
    max_size: tuple[int, int]
    max_pixels: int  # width * height at most (NVDEC's macroblocks)

    def fits(self, width: int, height: int) -> bool:
        (w0, h0), (w1, h1) = self.min_size, self.max_size
        return w0 <= width <= w1 and h0 <= height <= h1 and width * height <= self.max_pixels

    def layout(self) -> str:
        return f"{CHROMA_NAMES.get(self.chroma, self.chroma)} {self.bit_depth}-bit"

    def sizes(self) -> str:
        return f"{self.min_size[0]}x{self.min_size[1]} to {self.max_size[0]}x{self.max_size[1]}"


def formats_from_json(text: str) -> tuple[DecoderFormat, ...]:
    fields = [{**f, "min_size": tuple(f["min_size"]), "max_size": tuple(f["max_size"])} for f in json.loads(text)]
    return tuple(DecoderFormat(**f) for f in fields)


def formats_to_json(formats: Iterable[DecoderFormat]) -> str:
    return json.dumps([asdict(f) for f in formats])


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
    # What its decoder takes, asked of the device (`FORMATS_MODEL`); () where it did not say: any size of `codecs`.
    formats: tuple[DecoderFormat, ...] = ()

    def with_formats(self, formats: tuple[DecoderFormat, ...]) -> "ServerInfo":
        """This, with the formats its decoder takes (and the codecs of those)."""
        codecs = tuple(dict.fromkeys(f.codec for f in formats)) if formats else self.codecs
        return replace(self, formats=tuple(formats), codecs=codecs)

    def refusal(self, codec: str, chroma: str, bit_depth: int, width: int, height: int) -> str | None:
        """Why the decoder cannot take a video as it is, in a few words for the user; None when it can. A layout the
        container does not say ("", 0) is taken to be 4:2:0 8-bit, the common case."""
        device = self.decoder_device.upper()
        if codec not in self.codecs:
            return f"its {device} decoder reads {', '.join(self.codecs)}, not {codec}"
        if not self.formats:
            return None
        layouts = [f for f in self.formats if f.codec == codec]
        chroma, bit_depth = chroma or "420", bit_depth or 8
        same = [f for f in layouts if (f.chroma, f.bit_depth) == (chroma, bit_depth)]
        if not same:
            taken = ", ".join(dict.fromkeys(f.layout() for f in layouts))
            asked = DecoderFormat(codec, chroma, bit_depth, (0, 0), (0, 0), 0).layout()
            return f"its {device} decoder reads {codec} in {taken}, not {asked}"
        if not any(f.fits(width, height) for f in same):
            return f"its {device} decoder reads {codec} {same[0].layout()} from {same[0].sizes()}, not {width}x{height}"
        return None

    def conversion(self, width: int, height: int, encodable: tuple[str, ...]) -> tuple[str, int, int]:
        """What to convert a video the decoder refuses into: (codec, width, height), the first of `encodable` (in
        the caller's order of preference) that the decoder reads in 4:2:0 8-bit at a size as close to the frames' as
        its limits allow: a smaller frame scaled up to the smallest size (the model sees every frame scaled to its own
        size anyway). ValueError, for the user, when the frames are larger than every such format allows."""
        if not self.formats:
            for codec in encodable:
                if codec in self.codecs:
                    return codec, width, height
            raise ValueError(f"this server's decoder reads {', '.join(self.codecs)}: none of them can be made here")
        for codec in encodable:
            for f in self.formats:
                if (f.codec, f.chroma, f.bit_depth) != (codec, "420", 8):
                    continue
                w, h = (side + side % 2 for side in (max(width, f.min_size[0]), max(height, f.min_size[1])))
                if f.fits(w, h):
                    return codec, w, h
        largest = ", ".join(f"{f.codec} up to {f.max_size[0]}x{f.max_size[1]}" for f in self.formats
                            if (f.chroma, f.bit_depth) == ("420", 8))  # fmt: skip
        raise ValueError(
            f"frames of {width}x{height} are larger than this server's {self.decoder_device.upper()} decoder takes "
            f"({largest}): scale the video down first"
        )

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
