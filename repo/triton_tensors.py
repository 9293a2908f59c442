"""Triton Python-backend tensors <-> torch, without copies: numpy views on the CPU, DLPack on the GPU."""

import torch
import triton_python_backend_utils as pb_utils


def to_torch(tensor: "pb_utils.Tensor") -> torch.Tensor:
    return torch.from_numpy(tensor.as_numpy()) if tensor.is_cpu() else torch.from_dlpack(tensor.to_dlpack())


def from_torch(name: str, array: torch.Tensor) -> "pb_utils.Tensor":
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(array.contiguous()))


def input_tensor(request: "pb_utils.InferenceRequest", name: str) -> torch.Tensor:
    return to_torch(pb_utils.get_input_tensor_by_name(request, name))


def output_tensor(response: "pb_utils.InferenceResponse", name: str) -> torch.Tensor:
    return to_torch(pb_utils.get_output_tensor_by_name(response, name))
