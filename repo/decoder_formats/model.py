"""What this server's decoder takes, for clients (`protocol.FORMATS_MODEL`) and for `check_video`.

On a GPU the formats are asked of the device once, at load, by `python -m repo.formats` in a process of its own (its
CUDA context and DALI's decoders go with it, and a decoder that crashes on a probe cannot take this model down); a
GPU where that fails fails the load, with the reason. On the CPU: none listed, the codecs in the config say it all.
A request has no input; its one output, FORMATS, is the JSON list.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from stream_client import protocol


def _python() -> str:
    """The interpreter of the libpython this stub runs (it sees the same packages); the stub's own `sys.executable`
    is whatever `python3` was on PATH."""
    own = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(own) if own.exists() else sys.executable


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if args["model_instance_kind"] != "GPU":
            self.formats = "[]"
            return
        device = args["model_instance_device_id"]
        probe = subprocess.run([_python(), "-m", "repo.formats", "--device", device], capture_output=True, text=True,
                               timeout=600, cwd=Path(__file__).resolve().parent)  # fmt: skip
        lines = probe.stdout.strip().splitlines()
        if probe.returncode != 0 or not lines:
            why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            raise pb_utils.TritonModelException(f"decoder_formats: asking GPU {device} what it decodes failed: {why}")
        self.formats = lines[-1]
        listed = "; ".join(f"{f.codec} {f.layout()} {f.sizes()}" for f in protocol.formats_from_json(self.formats))
        pb_utils.Logger.log_info(f"decoder_formats: GPU {device} decodes {listed}")

    def execute(self, requests: list) -> list:
        out = np.array([self.formats.encode()], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(protocol.FORMATS, out)]) for _ in requests]
