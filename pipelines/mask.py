"""Keep the pixels of one class: the post-processing of the chain.

Steps, per frame (one sample of the `masker` model's batch):
1. `PROBS` (21, h, w): take the channel of `CLASS_ID`.
2. Threshold: a pixel is kept exactly when its probability is above `THRESHOLD`; `MASK` is that, (h, w) uint8 0/1.
3. Resize the mask to the frame's size with nearest-neighbour sampling (the same as thresholding the resized
   probabilities, for a fraction of the bytes).
4. `SEGMENTED`: the frame `FRAMES` (H, W, 3) uint8 times the mask; other pixels are 0.
Without frames (`with_frames=False`) the graph stops at 2: the mask alone, for clients that want no pixels back.
"""

from nvidia.dali import fn, pipeline_def, types

FRAMES = "FRAMES"
PROBS = "PROBS"
CLASS_ID = "CLASS_ID"
THRESHOLD = "THRESHOLD"
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
    probs = fn.external_source(name=PROBS, layout="CHW", device=device)
    class_id = fn.external_source(name=CLASS_ID, dtype=types.INT32)
    threshold = fn.external_source(name=THRESHOLD, dtype=types.FLOAT, device=device)
    keep = fn.cast(fn.cast(probs[class_id[0]], dtype=types.FLOAT) > threshold, dtype=types.UINT8)
    class_mask = fn.reshape(keep, layout="HW", name=MASK)
    if not with_frames:
        return class_mask
    frames = fn.external_source(name=FRAMES, layout="HWC", dtype=types.UINT8, device=device)
    size = frames.shape(dtype=types.FLOAT)[0:2]
    keep = fn.resize(fn.expand_dims(keep, axes=[2], new_axis_names="C"), size=size, interp_type=types.INTERP_NN)
    return fn.cast(frames * keep, dtype=types.UINT8, name=SEGMENTED), class_mask


# `prefetch_queue_depth=1`: the server runs the pipeline once per response and must not run ahead of its input.
mask_pipeline = pipeline_def(mask, prefetch_queue_depth=1)
