"""Keep the pixels of one class: the post-processing of the chain.

Steps, per chunk (one sample of a masker model's batch: F frames of one video):
1. `CLASS_PROBS` (F, 1, h, w): the class's probability per pixel, from the segmenter. A pixel is kept exactly when
   it is above `THRESHOLD`; `MASK` is that, (F, h, w) uint8 0/1, at the model's size. A softmax probability lies
   strictly between 0 and 1, but float16 rounds those below 6e-8 to 0 (and float32 those near 1 to 1): compared as
   lying inside (0, 1), so that threshold 0 keeps every pixel and 1 none, whatever the rounding.
2. The mask resized to `FRAME_SIZE` (H, W) with nearest-neighbour sampling (the same as thresholding the resized
   probabilities, for a fraction of the bytes). The size comes as an input, not from the frames' shape: the
   executor of Triton's DALI backend runs no CPU operator on GPU data.
3. The frames `FRAMES` (F, H, W, 3) uint8 times the mask; other pixels are 0 (black).
4. `SEGMENTED`: that, in NV12 (F, 3 H'/2, W'): half the bytes of RGB, what a video encoder takes. Odd sizes get a
   black row or column (H', W' even); BT.601 limited range, as FFmpeg converts RGB by default.
Without frames (`with_frames=False`) the graph stops at 1: the mask alone, for clients that want no pixels back.
"""

from nvidia.dali import fn, types
from nvidia.dali import math as dali_math

INSIDE = 1e-7  # how far inside (0, 1) a rounded probability is taken to lie (1 - 1e-7 < 1 in float32)

FRAMES = "FRAMES"
CLASS_PROBS = "CLASS_PROBS"
THRESHOLD = "THRESHOLD"
FRAME_SIZE = "FRAME_SIZE"
SEGMENTED = "SEGMENTED"
MASK = "MASK"

# The 21 classes of torchvision's fcn_resnet101 (COCO images, Pascal VOC labels), in output-channel order.
VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def class_index(name: str) -> int:
    try:
        return VOC_CLASSES.index(name)
    except ValueError:
        raise ValueError(f"unknown class {name!r}; the model knows: {', '.join(VOC_CLASSES)}") from None


def mask(device: str = "cpu", with_frames: bool = True):
    probs = fn.external_source(name=CLASS_PROBS, layout="FCHW", device=device, ndim=4)
    threshold = fn.external_source(name=THRESHOLD, dtype=types.FLOAT, device=device, ndim=1)
    inside = dali_math.clamp(fn.cast(probs, dtype=types.FLOAT), INSIDE, 1 - INSIDE)
    keep = fn.cast(inside > threshold, dtype=types.UINT8)
    class_mask = fn.squeeze(keep, axes=[1], name=MASK)
    if not with_frames:
        return class_mask
    frames = fn.external_source(name=FRAMES, layout="FHWC", dtype=types.UINT8, device=device, ndim=4)
    size = fn.external_source(name=FRAME_SIZE, dtype=types.INT32, ndim=1)
    keep = fn.reshape(keep, src_dims=[0, 2, 3, 1], layout="FHWC")  # (F, h, w, 1): C is 1, nothing moves
    keep = fn.resize(keep, size=fn.cast(size, dtype=types.FLOAT), interp_type=types.INTERP_NN, antialias=False)
    half = (size + 1) // 2  # NV12's chroma size; each frame padded to twice that (pad's default: the batch's largest)
    kept = fn.pad(fn.cast(frames * keep, dtype=types.UINT8), axes=(1, 2), shape=half * 2)
    ycbcr = fn.color_space_conversion(kept, image_type=types.RGB, output_type=types.YCbCr)
    # Halved without antialiasing: each output pixel falls between four input pixels, linear sampling averages them.
    chroma = fn.resize(ycbcr[:, :, :, 1:3], size=fn.cast(half, dtype=types.FLOAT), antialias=False)
    # Cb and Cr interleaved: (F, H'/2, W'/2, 2) read as (F, H'/2, W'), NV12's second plane under the first.
    nv12 = fn.cat(ycbcr[:, :, :, 0], fn.reshape(chroma, rel_shape=[1, 1, 2]), axis=1, name=SEGMENTED)
    return nv12, class_mask
