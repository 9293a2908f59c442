"""The model repository, described once.

Every model's config is built here as Triton's own `ModelConfig` protobuf from one `Settings`; `repo.build` writes
them out. The two server targets differ only where a model runs a DALI pipeline: `backend: "dali"` with a
`dali.py` that the native DALI backend serializes at load, or `backend: "python"` with `dali_runner.py`, which
runs the same pipeline in the Python backend (servers without the DALI backend, like the one in nvidia-pytriton).

The chain: segment_video (entry, decoupled BLS) -> video_decoder (decoupled, one response per chunk)
-> segmenter (fcn_resnet101, per frame, dynamic batching) -> masker (per frame) -> back to the client.
"""

import json
from dataclasses import dataclass
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from export import WEIGHTS_FILE
from pipelines import decode, mask

ENTRY = "segment_video"
DECODER = "video_decoder"
SEGMENTER = "segmenter"
MASKER = "masker"
CLASS_MASKER = "class_masker"  # the mask alone, for requests that want no pixels back

# The entry model's own tensors (the client's whole interface) and request parameters.
VIDEO = "VIDEO"
SEGMENTED = mask.SEGMENTED
MASK = mask.MASK
FRAME_INDEX = "FRAME_INDEX"
PROBS = mask.PROBS
CLASS_PROBS = "CLASS_PROBS"  # the segmenter's output for one class (CLASS_ID): 1/21 of PROBS to pass on
CLASS_PARAMETER = "class"
THRESHOLD_PARAMETER = "threshold"
RETURNS_PARAMETER = "returns"
# What a request gets back: the segmented frames (frame size), the class mask (model size), or both.
RETURNS = {"segmented": (SEGMENTED,), "mask": (MASK,), "both": (SEGMENTED, MASK)}

Target = Literal["python", "dali"]
Device = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Settings:
    target: Target = "python"
    device: Device = "cpu"
    frames_per_chunk: int = 16
    chunks_per_response: int = 1
    model_size: tuple[int, int] = (224, 224)
    half: bool = False  # float16 model input and segmenter (GPU)
    channels_last: bool = False  # the segmenter's memory format (GPU)
    max_batch: int = 64  # frames per batch of the segmenter and the masker
    gpus: tuple[int, ...] = (0,)  # GPU devices; every instance count below is per GPU
    decoder_instances: int = 2  # videos decoded at once (per GPU)
    entry_instances: int = 1  # processes of the entry model; the decoders are shared out among them
    segmenter_instances: int = 1
    masker_instances: int = 1
    chunks_in_flight: int = 2  # per video, between the decoder and the client
    random_weights_seed: int | None = None  # None: the segmenter needs a weights file
    default_class: str = "person"
    default_threshold: float = 0.5
    dali_threads: int = 2
    cuda_pool_bytes: int = 4 << 30  # Triton's CUDA memory pool, per GPU
    shm_bytes: int = 64 << 20  # the Python backend's shared memory region per model instance, to start with
    # Limits on one request (one video or segment), refused with a message naming the limit. The server does not
    # wait for a client that reads slowly: what a stream has not read yet stays queued in tritonserver, up to the
    # whole output of the videos it has in flight (the project's client bounds that with --window).
    max_video_bytes: int = 1 << 30
    max_video_frames: int = 18000  # 10 minutes at 30 frames/s
    max_frame_size: tuple[int, int] = (4096, 4096)  # (H, W): NVDEC's limit for H.264

    def __post_init__(self) -> None:
        mask.class_index(self.default_class)
        if not 0.0 <= self.default_threshold <= 1.0:
            raise ValueError(f"default_threshold must be in [0, 1], not {self.default_threshold}")
        if self.frames_per_chunk < 1 or self.chunks_per_response < 1:
            raise ValueError("frames_per_chunk and chunks_per_response must be at least 1")
        if self.frames_per_chunk * self.chunks_per_response > self.max_batch:
            raise ValueError("a response (frames_per_chunk * chunks_per_response) must fit in max_batch frames")
        if min(self.max_video_bytes, self.max_video_frames, *self.max_frame_size) < 1:
            raise ValueError("the request limits (max_video_*, max_frame_size) must be positive")
        if self.target == "dali" and self.chunks_per_response != 1:
            # The last response of a video may hold chunks of different lengths, which the native backend
            # cannot return as one tensor; the Python runner concatenates them.
            raise ValueError("the native DALI target sends one chunk per response (chunks_per_response=1)")

    @property
    def model_dtype(self) -> int:
        return mc.TYPE_FP16 if self.half else mc.TYPE_FP32


@dataclass(frozen=True)
class PipelineCall:
    """How a model builds its DALI pipeline: a graph function of `pipelines`, its arguments, the batch size."""

    module: str
    graph: str
    kwargs: dict
    batch_size: int


def pipeline_calls(s: Settings) -> dict[str, PipelineCall]:
    return {
        DECODER: PipelineCall(
            "pipelines.decode",
            "decode",
            {
                "device": s.device,
                "frames_per_chunk": s.frames_per_chunk,
                "model_size": list(s.model_size),
                "half": s.half,
            },
            s.chunks_per_response,
        ),
        MASKER: PipelineCall("pipelines.mask", "mask", {"device": s.device, "with_frames": True}, s.max_batch),
        CLASS_MASKER: PipelineCall("pipelines.mask", "mask", {"device": s.device, "with_frames": False}, s.max_batch),
    }


def _tensor(cls, name: str, dtype: int, dims: list[int]):
    return cls(name=name, data_type=dtype, dims=dims)


def _inp(name: str, dtype: int, dims: list[int]) -> mc.ModelInput:
    return _tensor(mc.ModelInput, name, dtype, dims)


def _out(name: str, dtype: int, dims: list[int]) -> mc.ModelOutput:
    return _tensor(mc.ModelOutput, name, dtype, dims)


def _instances(s: Settings, count: int, on_gpu: bool) -> list[mc.ModelInstanceGroup]:
    if s.device == "gpu" and on_gpu:
        return [mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=list(s.gpus))]
    return [mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)]


def _parameters(config: mc.ModelConfig, values: dict[str, object]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)


def _python_model(s: Settings, config: mc.ModelConfig) -> mc.ModelConfig:
    config.backend = "python"
    if s.device == "gpu":
        # Keep GPU tensors on the GPU between models (the Python backend copies inputs to the CPU by default).
        _parameters(config, {"FORCE_CPU_ONLY_INPUT_TENSORS": "no"})
    return config


def _dali_model(s: Settings, config: mc.ModelConfig) -> mc.ModelConfig:
    """Point a model that runs a DALI pipeline at the target's backend."""
    call = pipeline_calls(s)[config.name]
    if s.target == "dali":
        config.backend = "dali"
        _parameters(config, {"num_threads": str(s.dali_threads)})
    else:
        _python_model(s, config)
        _parameters(
            config,
            {
                "pipeline_module": call.module,
                "pipeline_graph": call.graph,
                "pipeline_kwargs": call.kwargs,
                "pipeline_batch_size": str(call.batch_size),
                "num_threads": str(s.dali_threads),
            },
        )
    return config


def _masker(s: Settings, name: str, with_frames: bool) -> mc.ModelConfig:
    h, w = s.model_size
    inputs = [
        # (C, h, w): all classes' probabilities, or only the wanted one's (the entry model's CLASS_PROBS, CLASS_ID 0).
        _inp(mask.PROBS, s.model_dtype, [-1, h, w]),
        _inp(mask.CLASS_ID, mc.TYPE_INT32, [1]),
        _inp(mask.THRESHOLD, mc.TYPE_FP32, [1]),
    ]
    outputs = [_out(mask.MASK, mc.TYPE_UINT8, [h, w])]
    if with_frames:
        inputs.insert(0, _inp(mask.FRAMES, mc.TYPE_UINT8, [-1, -1, 3]))
        outputs.insert(0, _out(mask.SEGMENTED, mc.TYPE_UINT8, [-1, -1, 3]))
    config = mc.ModelConfig(
        name=name,
        max_batch_size=s.max_batch,
        input=inputs,
        output=outputs,
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=1000),
        instance_group=_instances(s, s.masker_instances, on_gpu=True),
    )
    return _dali_model(s, config)


def configs(s: Settings) -> dict[str, mc.ModelConfig]:
    h, w = s.model_size
    entry = mc.ModelConfig(
        name=ENTRY,
        max_batch_size=0,
        input=[_inp(VIDEO, mc.TYPE_UINT8, [-1])],
        output=[
            _out(SEGMENTED, mc.TYPE_UINT8, [-1, -1, -1, 3]),
            _out(MASK, mc.TYPE_UINT8, [-1, h, w]),
            _out(FRAME_INDEX, mc.TYPE_INT64, [1]),
        ],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        instance_group=_instances(s, s.entry_instances, on_gpu=False),
    )
    gpu_count = len(s.gpus) if s.device == "gpu" else 1
    _parameters(
        _python_model(s, entry),
        {
            "default_class": s.default_class,
            "default_threshold": str(s.default_threshold),
            "chunks_in_flight": str(s.chunks_in_flight),
            "max_active_videos": str(-(-s.decoder_instances * gpu_count // s.entry_instances)),
            "decoder_device": s.device,
            "decoder_codecs": ",".join(decode.codecs_for(s.device)),
            # What one video may hold in Triton's CUDA pool at once: half of its share, the rest a margin.
            "pool_bytes_per_video": str(s.cuda_pool_bytes // (2 * s.decoder_instances) if s.device == "gpu" else 0),
            "frames_per_response": str(s.frames_per_chunk * s.chunks_per_response),
            "model_size": s.model_size,
            "half": str(s.half).lower(),
            "max_video_bytes": str(s.max_video_bytes),
            "max_video_frames": str(s.max_video_frames),
            "max_frame_size": s.max_frame_size,
        },
    )
    decoder = mc.ModelConfig(
        name=DECODER,
        max_batch_size=0,
        # DALI's video input takes a batch of one encoded file: (1, bytes).
        input=[_inp(decode.VIDEO, mc.TYPE_UINT8, [-1, -1])],
        output=[
            _out(decode.FRAMES, mc.TYPE_UINT8, [-1, -1, -1, -1, 3]),
            _out(decode.MODEL_INPUT, s.model_dtype, [-1, -1, 3, h, w]),
        ],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        instance_group=_instances(s, s.decoder_instances, on_gpu=True),
    )
    segmenter = mc.ModelConfig(
        name=SEGMENTER,
        max_batch_size=s.max_batch,
        input=[
            _inp(decode.MODEL_INPUT, s.model_dtype, [3, h, w]),
            mc.ModelInput(name=mask.CLASS_ID, data_type=mc.TYPE_INT32, dims=[1], optional=True),
        ],
        output=[
            _out(PROBS, s.model_dtype, [len(mask.VOC_CLASSES), h, w]),
            _out(CLASS_PROBS, s.model_dtype, [1, h, w]),
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=2000),
        instance_group=_instances(s, s.segmenter_instances, on_gpu=True),
    )
    weights = {"weights_file": WEIGHTS_FILE, "half": str(s.half).lower(), "channels_last": str(s.channels_last).lower()}
    if s.random_weights_seed is not None:
        weights = {**weights, "random_weights_seed": str(s.random_weights_seed)}
    _parameters(_python_model(s, segmenter), weights)
    return {
        ENTRY: entry,
        DECODER: _dali_model(s, decoder),
        SEGMENTER: segmenter,
        MASKER: _masker(s, MASKER, with_frames=True),
        CLASS_MASKER: _masker(s, CLASS_MASKER, with_frames=False),
    }


def server_args(s: Settings) -> list[str]:
    """tritonserver options that go with these settings."""
    # The Python backend's shared memory: one region per model instance, made big enough at the start not to grow
    # under load (growing it while many threads send was seen to break the stub: boost lock_exception).
    args = [
        f"--backend-config=python,shm-default-byte-size={s.shm_bytes}",
        "--backend-config=python,shm-growth-byte-size=67108864",
    ]
    if s.device == "gpu":
        # GPU tensors between Python-backend models pass through this pool (64 MiB by default, too small: sends fail
        # with "failed to copy data"). What is in flight: per GPU, the decoders' chunks not yet taken by the entry
        # model, plus the chunks between the models (chunks_in_flight per video).
        args += [f"--cuda-memory-pool-byte-size={gpu}:{s.cuda_pool_bytes}" for gpu in s.gpus]
    return args
