"""The GPU lane's server: one per target for the whole lane (the Python target, and the native one where
`SEGMENT_DALI_BACKEND` names a GPU build of Triton's DALI backend), as the CLI starts it on a GPU (tuned), with fewer
decoders: these tests are about correctness."""

import os
from dataclasses import replace

import pytest

from repo.build import build
from repo.models import Settings, server_args, tuned
from repo.serve import TritonServer

SETTINGS = replace(Settings(**tuned("gpu"), device="gpu", random_weights_seed=0), decoder_instances=4)
DALI_BACKEND = os.environ.get("SEGMENT_DALI_BACKEND")


@pytest.fixture(scope="session", params=["python", *(["dali"] if DALI_BACKEND else [])])
def settings(request) -> Settings:
    return replace(SETTINGS, target=request.param)


@pytest.fixture(scope="session")
def server(settings, tmp_path_factory):
    repository = build(settings, tmp_path_factory.mktemp("repo") / "repo")
    backend = DALI_BACKEND if settings.target == "dali" else None
    with TritonServer(repository, args=server_args(settings), dali_backend=backend) as running:
        yield running
