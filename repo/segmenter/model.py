"""The segmenter: torchvision's fcn_resnet101 with softmax, a batch of frames (N, 3, h, w) -> (N, 21, h, w).

Outputs: PROBS, every class's probability; CLASS_PROBS (N, 1, h, w), the probability of the class a request names
in CLASS_ID, for callers that want one class (the entry model): 1/21 of the bytes to pass on.

Weights come from the file named by the `weights_file` parameter in this model's version directory (written by
`python -m export.weights`, linked there by `python -m repo.build`). Without that file the model refuses to load,
unless the config sets `random_weights_seed`: seeded random weights, for tests and offline demos, said in the log.
"""

import faulthandler
import json
import signal
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from export import fcn
from pipelines import decode, mask
from repo import models
from repo.triton_tensors import from_torch, input_tensor, to_torch


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        self.dtype = torch.float16 if params.get("half") == "true" else torch.float32
        weights = Path(args["model_repository"]) / args["model_version"] / params["weights_file"]
        if "random_weights_seed" in params:
            model = fcn.seeded(int(params["random_weights_seed"]))
            source = f"RANDOM weights, seed {params['random_weights_seed']}: segments are meaningless"
            pb_utils.Logger.log_warn(f"segmenter: {source} (random_weights_seed is set in the config)")
        elif weights.is_file():
            model, source = fcn.load(weights)
        else:
            raise pb_utils.TritonModelException(
                f"segmenter: no weights file {weights}; write it with `python -m export.weights`, or set the "
                "`random_weights_seed` parameter on purpose (tests, offline demos)"
            )
        pb_utils.Logger.log_info(f"segmenter: {source}")
        self.memory_format = torch.channels_last if params.get("channels_last") == "true" else torch.contiguous_format
        self.model = model.to(self.device, self.dtype, memory_format=self.memory_format).eval()

    @torch.inference_mode()
    def execute(self, requests: list) -> list:
        batches = [input_tensor(r, decode.MODEL_INPUT) for r in requests]
        probs = self.model(torch.cat(batches).to(self.device, self.dtype, memory_format=self.memory_format))
        responses = []
        for request, part in zip(requests, torch.split(probs, [len(b) for b in batches]), strict=True):
            wanted = set(request.requested_output_names()) or {mask.PROBS}
            class_id = pb_utils.get_input_tensor_by_name(request, mask.CLASS_ID)
            if models.CLASS_PROBS in wanted and class_id is None:
                error = pb_utils.TritonError(f"{models.CLASS_PROBS} needs the {mask.CLASS_ID} input")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            outputs = [from_torch(mask.PROBS, part)] if mask.PROBS in wanted else []
            if models.CLASS_PROBS in wanted:
                index = to_torch(class_id).to(self.device, torch.int64)[:, :, None, None]
                class_probs = part.gather(1, index.expand(-1, 1, *part.shape[2:]))
                outputs.append(from_torch(models.CLASS_PROBS, class_probs))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
