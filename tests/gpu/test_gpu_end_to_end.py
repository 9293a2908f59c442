"""The end-to-end tests on a GPU (run on the GPU machine: `SEGMENT_GPU_TESTS=1 pytest tests/gpu`), on the Python
target, and on the native target too where `SEGMENT_DALI_BACKEND` names a GPU build of Triton's DALI backend.

NVDEC decodes H.264 and HEVC as sent, tensors stay on the GPU between models, the segmenter runs in float16, the
DALI pipelines run on the executor of Triton's DALI backend (a CPU operator reading GPU data would fail here, as in
the production server). Tolerance against the in-process GPU reference: 0.5 % of values; float16 probabilities
differ with the batch the server happened to form, which flips pixels within a float16 step of the threshold.
"""

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers and reference
from helpers import collect  # noqa: E402
from reference import segmented as reference  # noqa: E402
from test_masks import (  # noqa: E402, F401
    asked,
    made_clips,
    test_each_chunk_of_a_decoder_carries_its_own_requests_frames_and_values,
    test_every_segments_masks_agree_with_a_reference_decoded_by_pyav,
)

from pipelines.mask import class_index
from stream_client.reorder import Reorderer
from stream_client.sample import make_video
from stream_client.segment import segment_file
from stream_client.stream import SegmentationStream

from .conftest import SETTINGS  # noqa: E402

MAX_DIFFERENT = 5e-3


def in_order(chunks, what: str) -> np.ndarray:
    reorder = Reorderer()
    frames = np.stack([f for c in chunks for f in reorder.push(c.first, getattr(c, what))])
    reorder.finish()
    return frames


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("libx265", ".mp4")], ids=["h264", "hevc"])
def test_nvdec_chain_is_frame_exact_and_matches_the_gpu_reference(server, tmp_path, codec, suffix):
    data = make_video(tmp_path / f"v{suffix}", 53, width=320, height=240, codec=codec).read_bytes()
    with SegmentationStream(server.url, idle_timeout=120) as stream:
        assert stream.server_info().decoder_device == "gpu"
        stream.send("v", data, class_name="pottedplant", threshold=0.2, returns="both")
        stream.send("m", data, class_name="pottedplant", threshold=0.2, returns="mask")
        results = collect(stream, {"v", "m"})
    assert not isinstance(results["v"], str), results["v"]
    segmented, mask = reference(data, SETTINGS, class_index("pottedplant"), 0.2)
    got = in_order(results["v"], "segmented")
    assert got.shape == segmented.shape == (53, 360, 320)
    assert np.mean(got != segmented) <= MAX_DIFFERENT
    for name in ("v", "m"):
        assert np.mean(in_order(results[name], "mask") != mask) <= MAX_DIFFERENT
    assert 0 < mask.sum() < mask.size


def test_nothing_is_lost_with_16_segments_in_flight(server, tmp_path):
    source = make_video(tmp_path / "long.mp4", 480, width=640, height=360, codec="libx264",
                        options={"g": "15", "keyint_min": "15", "bf": "2"})  # fmt: skip
    progress = io.StringIO()
    summary = segment_file(source, tmp_path / "out.mp4", server.url, threshold=0.0, window=16, max_seconds=0.5,
                           returns="both", progress_out=progress)  # fmt: skip
    assert summary.segments >= 16 and summary.frames == 480 and summary.frames_this_run == 480
    assert "trying again" not in progress.getvalue()
    assert summary.kept_pixels > 0.1  # threshold 0: what float16 does not round to 0
