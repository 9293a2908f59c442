"""Fixtures: small real videos made with PyAV, and one real tritonserver for the session."""

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from repo.build import build
from repo.models import Settings, server_args
from repo.serve import TritonServer
from stream_client.sample import make_video
from stream_client.stream import SegmentationStream

# Tiny frames: the CPU runs fcn_resnet101 at ~18 frames/s at 64x64 (~1.5 at 224x224).
# A share of memory per request as a GPU server has (there: of its CUDA pool), to test the limit on the CPU.
SETTINGS = Settings(
    model_size=(64, 64), frames_per_chunk=8, max_batch=32, random_weights_seed=0, max_video_bytes=16 << 20,
    video_memory_bytes=256 << 20,
)  # fmt: skip

# Codecs the server's CPU decoder reads, with the extension of their usual container.
CPU_VIDEO = {"codec": "mjpeg", "suffix": ".mkv"}
VP9_VIDEO = {"codec": "libvpx-vp9", "suffix": ".webm"}
H264_VIDEO = {"codec": "libx264", "suffix": ".mp4"}


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Callable[..., bytes]:
    """`video(frames, codec=..., suffix=..., width=..., height=...)` -> the encoded file's bytes."""
    folder = tmp_path_factory.mktemp("videos")
    counter = itertools.count()

    def make(frames: int, codec: str = "mjpeg", suffix: str = ".mkv", **kwargs) -> bytes:
        path = folder / f"v{next(counter)}{suffix}"
        return make_video(path, frames, codec=codec, **kwargs).read_bytes()

    return make


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Callable[..., Path]:
    folder = tmp_path_factory.mktemp("files")
    counter = itertools.count()

    def make(frames: int, codec: str = "libx264", suffix: str = ".mp4", **kwargs) -> Path:
        return make_video(folder / f"f{next(counter)}{suffix}", frames, codec=codec, **kwargs)

    return make


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings `server` was built with (the other lanes override both)."""
    return SETTINGS


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[TritonServer]:
    repository = build(SETTINGS, tmp_path_factory.mktemp("repo") / "repo")
    with TritonServer(repository, args=server_args(SETTINGS)) as running:
        yield running


@pytest.fixture
def stream(server) -> Iterator[SegmentationStream]:
    with SegmentationStream(server.url, idle_timeout=120) as s:
        yield s


# The GPU variant runs on the GPU machine only, when asked: SEGMENT_GPU_TESTS=1 pytest tests/gpu
collect_ignore = [] if os.environ.get("SEGMENT_GPU_TESTS") else ["gpu"]
