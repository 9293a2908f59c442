"""The native lane: the `--target dali` repository served by Triton's DALI backend, built for this machine, in the
wheel's tritonserver beside its Python backend.

The backend is not built here (CI cannot reach its source): `SEGMENT_DALI_BACKEND` names a built `libtriton_dali.so`
(or its folder), else it is looked for in `build/native/dali/`. Without it the lane is skipped, in one line.
"""

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SETTINGS

from repo.build import build
from repo.models import Settings, server_args
from repo.serve import ServerError, TritonServer, dali_backend_folder

DEFAULT_PLACE = Path(__file__).resolve().parents[2] / "build" / "native" / "dali"
BACKEND = Path(os.environ.get("SEGMENT_DALI_BACKEND") or DEFAULT_PLACE)
NATIVE = replace(SETTINGS, target="dali")


def backend_missing() -> str | None:
    """Why the lane cannot run here, or None."""
    try:
        dali_backend_folder(BACKEND)
    except ServerError as e:
        return f"Triton's DALI backend is not built here: {e} (SEGMENT_DALI_BACKEND names one; see the README)"
    return None


@pytest.fixture(scope="session")
def settings() -> Settings:
    return NATIVE


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[TritonServer]:
    """Overrides the Python target's server for every test of this folder, the shared tests included."""
    repository = build(NATIVE, tmp_path_factory.mktemp("native-repo") / "repo")
    with TritonServer(repository, args=server_args(NATIVE), dali_backend=BACKEND) as running:
        yield running
