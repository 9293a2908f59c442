"""The CLI's local server: a model repository built for this machine, a tritonserver on loopback, stopped after.

`segment-video VIDEO` without --url comes here: the server side of the line between client and server (it needs the
`server` extra). Its options are `repo.build`'s; the device is the GPU where CUDA runs, with the GPU's tuned values.
"""

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from repo.build import build, settings_from, settings_parser
from repo.models import server_args
from repo.serve import TritonServer

READY_TIMEOUT_S = 300.0  # the models of a GPU server load in about a minute; a slow disk may double it


def options() -> argparse.ArgumentParser:
    return settings_parser(device="auto")


@contextmanager
def local_server(args: argparse.Namespace, workdir: Path, log: TextIO = sys.stderr) -> Iterator[str]:
    """Start the server for `args` (the options of `options()`), yield its gRPC address, stop it."""
    if args.gpus is None:
        args.gpus = ["all"]  # a local server uses every GPU of the machine
    settings = settings_from(args)
    gpu_count = _gpu_count() if settings.device == "gpu" else 0
    repository = build(settings, workdir / "repo", args.weights)
    server = TritonServer(repository, args=server_args(settings, gpu_count), ready_timeout=READY_TIMEOUT_S)
    print(f"starting a local tritonserver on the {settings.device} (log: {server.log_path}) ...", file=log)
    with server:
        yield server.url


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
