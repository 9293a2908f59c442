"""Keep the pixels of one class: the post-processing of the chain.

Steps, per frame (one sample of the `masker` model's batch):
1. `PROBS` (21, h, w): take the channel of `CLASS_ID`.
2. Resize it to the frame's size with nearest-neighbour sampling.
3. Threshold: a pixel is kept exactly when its probability is above `THRESHOLD`.
4. `SEGMENTED`: the frame `FRAMES` (H, W, 3) uint8 times the mask; other pixels are 0.
"""

from nvidia.dali import fn, pipeline_def, types

FRAMES = "FRAMES"
PROBS = "PROBS"
CLASS_ID = "CLASS_ID"
THRESHOLD = "THRESHOLD"
SEGMENTED = "SEGMENTED"

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


def mask(device: str = "cpu"):
    frames = fn.external_source(name=FRAMES, layout="HWC", dtype=types.UINT8, device=device)
    probs = fn.external_source(name=PROBS, layout="CHW", device=device)
    class_id = fn.external_source(name=CLASS_ID, dtype=types.INT32)
    threshold = fn.external_source(name=THRESHOLD, dtype=types.FLOAT, device=device)
    prob = fn.expand_dims(probs[class_id[0]], axes=[2], new_axis_names="C")
    prob = fn.resize(prob, size=frames.shape(dtype=types.FLOAT)[0:2], interp_type=types.INTERP_NN, antialias=False)
    return fn.cast(frames * (prob > threshold), dtype=types.UINT8, name=SEGMENTED)


# `prefetch_queue_depth=1`: the server runs the pipeline once per response and must not run ahead of its input.
mask_pipeline = pipeline_def(mask, prefetch_queue_depth=1)
