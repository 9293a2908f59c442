"""Decode an encoded video in chunks of frames and prepare the segmenter's input.

Steps, per run of the pipeline (one response of the `video_decoder` model):
1. `fn.experimental.inputs.video` decodes the next `chunks_per_response` sequences of `frames_per_chunk` frames
   from the video fed as `VIDEO` (NVDEC on a GPU, FFmpeg's CPU decoders otherwise); the last sequence of a video
   may be shorter.
2. `FRAMES`: the decoded frames as they are, (F, H, W, 3) uint8.
3. `MODEL_INPUT`: the frames resized to the model's size and normalised with ImageNet's mean and std,
   (F, 3, h, w) float (float16 on request), as torchvision's segmentation models expect.
"""

from nvidia.dali import fn, pipeline_def, types

VIDEO = "VIDEO"
FRAMES = "FRAMES"
MODEL_INPUT = "MODEL_INPUT"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# FFmpeg's CPU decoders that DALI's CPU video input reads; NVDEC (device "gpu") reads these and H.264/HEVC/AV1.
CPU_CODECS = ("vp8", "vp9", "mjpeg")
GPU_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mjpeg")


def codecs_for(device: str) -> tuple[str, ...]:
    return GPU_CODECS if device == "gpu" else CPU_CODECS


def decode(
    device: str = "cpu",
    frames_per_chunk: int = 16,
    model_size: tuple[int, int] = (224, 224),
    half: bool = False,
):
    """The graph, for either device; the pipeline's batch size is the number of chunks per response."""
    frames = fn.experimental.inputs.video(
        name=VIDEO,
        sequence_length=frames_per_chunk,
        device="mixed" if device == "gpu" else "cpu",
        last_sequence_policy="partial",
    )
    resized = fn.resize(frames, size=list(model_size))
    model_input = fn.crop_mirror_normalize(
        resized,
        dtype=types.FLOAT16 if half else types.FLOAT,
        output_layout="FCHW",
        mean=[255 * m for m in IMAGENET_MEAN],
        std=[255 * s for s in IMAGENET_STD],
        name=MODEL_INPUT,
    )
    # A zero-copy relabel, only to give the frames output its own name (the input operator holds `VIDEO`).
    return fn.reshape(frames, layout="FHWC", name=FRAMES), model_input


# `prefetch_queue_depth=1`: the server runs the pipeline once per response and must not run ahead of its input.
decode_pipeline = pipeline_def(decode, prefetch_queue_depth=1)
