"""Write a Triton model repository for one target from the description in `repo.models`.

    python -m repo.build --out build/repo                          # Python-backend runner, CPU (tests, quick start)
    python -m repo.build --out build/repo-gpu --device gpu --half  # same target on a GPU (nvidia-pytriton's server)
    python -m repo.build --out build/repo-dali --target dali --device gpu   # native DALI backend (NGC images)

Python-backend models get their `model.py` from this folder; DALI models get `dali.py` (native target, with a copy of
`pipelines/` beside it) or the shared `dali_runner.py` (Python target). The segmenter's weights file is linked into
its model directory.
"""

import argparse
import shutil
from dataclasses import fields
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import WEIGHTS_FILE
from repo import models

HERE = Path(__file__).parent
PROJECT = HERE.parent
DEFAULT_WEIGHTS = PROJECT / "export" / WEIGHTS_FILE

DALI_PY = """\
# Written by `python -m repo.build`: the DALI backend serializes this pipeline when it loads the model, so the
# pipeline always matches the server's DALI. The graph itself is defined once, in pipelines/{module_file}.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvidia.dali import pipeline_def  # noqa: E402
from nvidia.dali.plugin.triton import autoserialize  # noqa: E402

from {module} import {graph}  # noqa: E402


@autoserialize
@pipeline_def(batch_size={batch_size}, num_threads={num_threads}, device_id={device_id}, prefetch_queue_depth=1)
def {name}():
    return {graph}(**{kwargs!r})
"""


def dali_py(settings: models.Settings, name: str) -> str:
    call = models.pipeline_calls(settings)[name]
    return DALI_PY.format(
        module=call.module,
        module_file=call.module.split(".")[-1] + ".py",
        graph=call.graph,
        kwargs=call.kwargs,
        batch_size=call.batch_size,
        num_threads=settings.dali_threads,
        device_id=0 if settings.device == "gpu" else None,
        name=name,
    )


def config_text(config: mc.ModelConfig) -> str:
    """The config as Triton reads it, with `max_batch_size` always written: protobuf's text writer leaves out a field
    at its default (0), and the native DALI backend reads the field from this text, taking a missing one for a
    batched model."""
    rest = mc.ModelConfig()
    rest.CopyFrom(config)
    rest.ClearField("max_batch_size")
    return f"max_batch_size: {config.max_batch_size}\n" + text_format.MessageToString(rest)


def build(settings: models.Settings, out: Path, weights: Path | None = None) -> Path:
    """Write the repository into `out` (replacing what is there) and return it."""
    if settings.random_weights_seed is None:
        weights = weights or DEFAULT_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(
                f"no segmenter weights at {weights}: write them with `python -m export.weights` "
                "(or build with --random-weights SEED for tests and offline demos)"
            )
    if out.exists():
        shutil.rmtree(out)
    for name, config in models.configs(settings).items():
        version = out / name / "1"
        version.mkdir(parents=True)
        (out / name / "config.pbtxt").write_text(config_text(config))
        if config.platform == "ensemble":
            continue
        if config.backend == "dali":
            (version / "dali.py").write_text(dali_py(settings, name))
            shutil.copytree(PROJECT / "pipelines", version / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
        elif name in models.pipeline_calls(settings):
            shutil.copy(HERE / "dali_runner.py", version / "model.py")
        else:
            shutil.copy(HERE / name / "model.py", version / "model.py")
    if weights is not None and settings.random_weights_seed is None:
        (out / models.SEGMENTER / "1" / WEIGHTS_FILE).symlink_to(weights.resolve())
    return out


def settings_parser(device: str = "cpu") -> argparse.ArgumentParser:
    """The options that choose `Settings`, shared by this command and the CLI's local server. Options left out take
    the device's tuned values (`models.tuned`), then `Settings`' defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    defaults = models.Settings()
    g = parser.add_argument_group("model repository")
    g.add_argument("--target", choices=["python", "dali"], default=defaults.target)
    g.add_argument("--device", choices=["cpu", "gpu", "auto"], default=device, help="auto: gpu where CUDA runs")
    g.add_argument("--frames-per-chunk", type=int)
    g.add_argument("--model-size", type=int, nargs=2, metavar=("H", "W"), default=defaults.model_size)
    g.add_argument("--half", action=argparse.BooleanOptionalAction, help="float16 model input and segmenter (GPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="the segmenter's memory format")
    g.add_argument("--max-batch", type=int, help="frames per batch of the segmenter and the maskers")
    g.add_argument("--gpus", nargs="+", help="GPU devices, or `all`: every GPU the server sees (default: 0; the "
                   "CLI's local server: all)")  # fmt: skip
    g.add_argument("--decoder-instances", type=int, help="videos decoded at once, per GPU")
    g.add_argument("--decoder-processes", type=int, help="the Python runner's processes for them, per GPU")
    g.add_argument("--check-instances", type=int)
    g.add_argument("--segmenter-instances", type=int)
    g.add_argument("--masker-instances", type=int)
    g.add_argument("--cuda-pool-bytes", type=int, help="Triton's CUDA memory pool, per GPU")
    g.add_argument("--decoder-stall-seconds", type=float, help="fail a video whose decoder stalls this long")
    g.add_argument(
        "--random-weights",
        dest="random_weights_seed",
        type=int,
        metavar="SEED",
        help="segmenter with seeded RANDOM weights instead of a weights file (tests, offline demos)",
    )
    g.add_argument("--default-class", default=defaults.default_class)
    g.add_argument("--default-threshold", type=float, default=defaults.default_threshold)
    g.add_argument("--max-video-bytes", type=int, default=defaults.max_video_bytes, help="per request")
    g.add_argument("--max-video-frames", type=int, default=defaults.max_video_frames, help="per request")
    g.add_argument("--max-frame-size", type=int, nargs=2, metavar=("H", "W"), default=defaults.max_frame_size)
    g.add_argument("--video-memory-bytes", type=int, help="what a request's frames may hold of the server's memory "
                   "at once (default: on a GPU, a decoder's share of the CUDA pool; 0: no limit)")  # fmt: skip
    g.add_argument("--weights", type=Path, help=f"segmenter weights file (default: {DEFAULT_WEIGHTS})")
    return parser


def settings_from(args: argparse.Namespace) -> models.Settings:
    device = args.device
    if device == "auto":
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    given = {f.name: getattr(args, f.name) for f in fields(models.Settings) if getattr(args, f.name, None) is not None}
    values = {**models.tuned(device), **given, "device": device}
    if "gpus" in values:
        values["gpus"] = () if values["gpus"] == ["all"] else tuple(int(g) for g in values["gpus"])
    for name in ("model_size", "max_frame_size"):
        values[name] = tuple(values[name])
    return models.Settings(**values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[settings_parser()]
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = build(settings_from(args), args.out, args.weights)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
