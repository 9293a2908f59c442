"""Decode an encoded video in chunks of frames and prepare the segmenter's input.

Steps, per run of the pipeline (one response of a decoder model, one chunk):
1. `fn.experimental.inputs.video` decodes the next `frames_per_chunk` frames of the video fed as `VIDEO` (NVDEC on a
   GPU, FFmpeg's CPU decoders otherwise); the last chunk of a video may be shorter.
2. `FRAMES`: the decoded frames as they are, (F, H, W, 3) uint8 (only `with_frames`: the mask alone needs none).
3. `MODEL_INPUT`: the frames resized to the model's size and normalised with ImageNet's mean and std,
   (F, 3, h, w) float (float16 on request), as torchvision's segmentation models expect.
4. The request's values (`CLASS_ID`, `THRESHOLD`, and `FRAME_SIZE` with frames), fed once per video like the video,
   go out with every chunk as `CHUNK_*`: in an ensemble the steps after a decoupled one may only take that step's
   outputs. Triton's DALI backend feeds a request's inputs once and ends its stream after the first run on which any
   input is depleted: these sources repeat their last value (`repeat_last`), so only the video ends the stream.
"""

from nvidia.dali import fn, types

VIDEO = "VIDEO"
CLASS_ID = "CLASS_ID"
THRESHOLD = "THRESHOLD"
FRAME_SIZE = "FRAME_SIZE"
FRAMES = "FRAMES"
MODEL_INPUT = "MODEL_INPUT"
CHUNK = "CHUNK_"  # the prefix of the request's values as they leave with a chunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# FFmpeg's CPU decoders that DALI's CPU video input reads. On a GPU, the codecs its GPU variant may read, where the
# GPU's NVDEC does (AV1: not on an H100): what a GPU server takes, with chroma, bit depth and sizes, is asked of the
# device when it starts (`repo.formats`); this list is only what a client that does not ask reads.
CPU_CODECS = ("vp8", "vp9", "mjpeg")
GPU_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
# The request's values: name -> (DALI type, values per video).
CARRIED = {CLASS_ID: (types.INT32, 1), THRESHOLD: (types.FLOAT, 1), FRAME_SIZE: (types.INT32, 2)}


def codecs_for(device: str) -> tuple[str, ...]:
    return GPU_CODECS if device == "gpu" else CPU_CODECS


def carried(with_frames: bool) -> tuple[str, ...]:
    """The request's values a decoder takes: the frame's size only goes with frames (the masker resizes to it)."""
    return tuple(name for name in CARRIED if with_frames or name != FRAME_SIZE)


def prepare(frames, model_size: tuple[int, int], half: bool):
    """Step 3: decoded frames (F, H, W, 3) uint8 -> the segmenter's input (F, 3, h, w)."""
    return fn.crop_mirror_normalize(
        fn.resize(frames, size=list(model_size)),
        dtype=types.FLOAT16 if half else types.FLOAT,
        output_layout="FCHW",
        mean=[255 * m for m in IMAGENET_MEAN],
        std=[255 * s for s in IMAGENET_STD],
        name=MODEL_INPUT,
    )


def prepared(device: str = "cpu", model_size: tuple[int, int] = (224, 224), half: bool = False):
    """Step 3 alone, on frames decoded elsewhere (`FRAMES`, (F, H, W, 3) uint8): the tests' reference decodes with
    PyAV and prepares the frames as the server does."""
    frames = fn.external_source(name=FRAMES, layout="FHWC", dtype=types.UINT8, ndim=4, device=device)
    return prepare(frames, model_size, half)


def decode(
    device: str = "cpu",
    frames_per_chunk: int = 16,
    model_size: tuple[int, int] = (224, 224),
    half: bool = False,
    with_frames: bool = True,
):
    """The graph, for either device; one chunk (one sample) per run."""
    frames = fn.experimental.inputs.video(
        name=VIDEO,
        sequence_length=frames_per_chunk,
        device="mixed" if device == "gpu" else "cpu",
        last_sequence_policy="partial",
    )
    model_input = prepare(frames, model_size, half)
    # no_copy: DALI keeps a repeating source's value by a copy through the CUDA runtime, which fails on a machine
    # without a GPU driver; the request's buffer outlives its runs in both server targets.
    values = [
        fn.copy(
            fn.external_source(name=name, dtype=CARRIED[name][0], ndim=1, repeat_last=True, no_copy=True),
            name=CHUNK + name,
        )
        for name in carried(with_frames)
    ]
    if not with_frames:
        return (model_input, *values)
    # A zero-copy relabel, only to give the frames output its own name (the input operator holds `VIDEO`).
    return (fn.reshape(frames, layout="FHWC", name=FRAMES), model_input, *values)
