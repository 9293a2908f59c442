"""The DALI pipelines of the chain, each defined once.

`decode`: encoded video -> chunks of frames and model input; `mask`: class probabilities (+ frames) -> the class mask
(+ segmented frames in NV12).

Both server targets (Triton's native DALI backend and the Python-backend runner) build their models from these
functions; nothing else in the project defines a DALI graph. `build` makes a pipeline the way Triton's DALI backend
does, so that what runs here (tests, the runner, benchmarks) fails where the production server would.
"""

from nvidia.dali import pipeline_def

# dali_backend creates pipelines through DALI's C API (daliCreatePipeline): the older executor, pipelined and
# asynchronous, one batch ahead; DALI's Python default, the dynamic executor, would let a CPU operator read GPU data.
BACKEND_EXECUTOR = {"exec_pipelined": True, "exec_async": True, "exec_dynamic": False, "prefetch_queue_depth": 1}


def build(graph, *, batch_size: int, device_id: int | None, num_threads: int = 2, **kwargs):
    """`graph(**kwargs)` as a built pipeline, with the executor Triton's DALI backend uses."""
    pipe = pipeline_def(graph, batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                        **BACKEND_EXECUTOR)(**kwargs)  # fmt: skip
    pipe.build()
    return pipe
