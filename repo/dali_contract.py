"""What Triton's DALI backend (dali_backend) demands of a model, its config and its requests, with its messages.

Read from dali_backend's source (dali_model.h, config_tools.cc, dali_model_instance.cc, dali_executor.cc) and checked
against the backend itself by `tests/native`; the Python runner (`repo/dali_runner.py`) holds every model of the
Python target to it, so that CI, which cannot build the backend, fails where the production server would. The README
lists the rules.
"""

import re
from collections.abc import Iterator

# dali_backend wraps its own checks so (ENFORCE -> DaliBackendException -> "DALI Backend error: "), and a pipeline's
# failure so: DaliExecutor::Run rethrows it as a std::runtime_error (seen in tests/native).
BACKEND_ERROR = "DALI Backend error: "
RUNTIME_ERROR = "Runtime error: "


def error_message(e: Exception) -> str:
    """A failure as the backend words it for the client."""
    return (BACKEND_ERROR if isinstance(e, ContractError) else RUNTIME_ERROR) + str(e)


class ContractError(RuntimeError):
    """What dali_backend refuses, with its message."""


def max_batch_size_in_text(text: str) -> int | None:
    """The top-level `max_batch_size` of a config's text, None when absent (dali_backend's ReadMBSFromPBtxt)."""
    depth, found = 0, None
    for line in re.sub(r"#[^\n]*|\"(?:\\.|[^\"\\])*\"", "", text).splitlines():
        if depth == 0 and (match := re.match(r"\s*max_batch_size\s*:\s*(-?\w+)", line)):
            found = int(match.group(1), 0)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return found


def pipeline_inputs(pipe) -> dict[str, int | None]:
    """The pipeline's inputs (external sources, the video input) and the dimensions each declares (None: any)."""
    inputs = {}
    for op in pipe._ops:
        kind = type(op._op).__name__
        if kind == "ExternalSource":
            inputs[op.name] = op._op._ndim
        elif kind == "Video":  # fn.experimental.inputs.video: one encoded file per sample
            inputs[op.name] = 1
    return inputs


def runs_until_depleted(pipe, video_runs: int) -> int:
    """How many runs a request of the streaming mode gets. dali_backend feeds a request's inputs once, before its first
    run, and ends the stream after the first run on which any input operator is depleted (DaliExecutor's
    IsInputConsumed, which reads DALI's "depleted" trace): an external source fed its one batch is depleted after one
    run unless it repeats its last batch (`repeat_last`); the video input after its last sequence (`video_runs`)."""
    runs = [video_runs] if any(type(op._op).__name__ == "Video" for op in pipe._ops) else []
    runs += [1 for op in pipe._ops if type(op._op).__name__ == "ExternalSource" and not op._op._repeat_last]
    if not runs:
        raise ContractError("a streaming pipeline whose inputs all repeat is never depleted: its stream never ends")
    return min(runs)


def streamed(pipe, inputs: dict[str, list], video_runs: int) -> Iterator[tuple[list, bool]]:
    """A request of the streaming mode run as dali_backend runs it: every input fed once, then a run per response until
    an input is depleted. Yields each run's outputs and whether it is the last."""
    runs = runs_until_depleted(pipe, video_runs)
    for name, samples in inputs.items():
        pipe.feed_input(name, samples)
    for run in range(runs):
        yield pipe.run(), run == runs - 1


def validate(config: dict, pipe, batched: bool) -> None:
    """dali_backend's checks of a config against its pipeline (ValidateConfig), with its messages."""
    declared = pipeline_inputs(pipe)
    for entry in config["input"]:
        if entry["name"] not in declared:
            raise ContractError(
                f"Configuration file contains config for {entry['name']} but such input is not present in the pipeline."
            )
    names = [entry["name"] for entry in config["input"]]
    for name in declared:
        if name not in names:
            raise ContractError(f'Missing config for "{name}" input.')
    outputs = len(pipe._graph_outputs)
    if len(config["output"]) != outputs:
        raise ContractError(
            "The number of outputs specified in the DALI pipeline and the configuration file do not match.\n"
            f"Model config outputs: {len(config['output'])}\nPipeline outputs: {outputs}"
        )
    for entry in config["input"]:
        ndim = declared[entry["name"]]
        dims = len(entry["dims"]) - (0 if batched else 1)  # the streaming mode's first dimension is the batch
        if ndim is not None and dims != ndim:
            raise ContractError(
                f'Mismatch in number of dimensions for "{entry["name"]}"\nNumber of dimensions defined in config: '
                f"{len(entry['dims'])}\nNumber of dimensions defined in pipeline: {ndim}"
            )


def requested(asked: int, outputs: int) -> None:
    """A request asks for every output of the pipeline (asking for none, Triton asks for all)."""
    if (asked or outputs) != outputs:
        raise ContractError(
            f"Number of outputs expected by the requests ({asked}) does not match the number of outputs from DALI "
            f"pipeline ({outputs})."
        )
