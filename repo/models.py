"""The model repository, described once.

Every model's config is built here as Triton's own `ModelConfig` protobuf from one `Settings`; `repo.build` writes
them out. The two server targets differ only where a model runs a DALI pipeline: `backend: "dali"` with a
`dali.py` that the native DALI backend serializes at load, or `backend: "python"` with `dali_runner.py`, which
runs the same pipeline in the Python backend (servers without the DALI backend, like the one in nvidia-pytriton).

The client calls one of two ensembles; Triton moves every tensor between the steps (no Python in between):

    segment_video       check_video -> video_decoder (decoupled: a response per chunk) -> segmenter -> masker
    segment_video_mask  check_video -> input_decoder (no frames)                       -> segmenter -> class_masker

`check_video` refuses what the chain cannot take, with a message for the user (what the decoder takes it asks of
`decoder_formats`, which asked the GPU when the server started; clients ask it too), and turns the request's
parameters into tensors; the decoder carries them along with each chunk (an ensemble step after a decoupled one may
only take that step's outputs). The segmenter and the maskers batch chunks of several videos and keep their order.
"""

import json
from dataclasses import dataclass
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from export import WEIGHTS_FILE
from pipelines import decode, mask
from stream_client import protocol

CHECK = "check_video"
DECODER = "video_decoder"  # frames and model input
INPUT_DECODER = "input_decoder"  # model input alone, for the mask
SEGMENTER = "segmenter"
MASKER = "masker"
CLASS_MASKER = "class_masker"  # the mask alone, for requests that want no pixels back
ENTRIES = {protocol.ENTRY: (DECODER, MASKER), protocol.MASK_ENTRY: (INPUT_DECODER, CLASS_MASKER)}

Target = Literal["python", "dali"]
Device = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Settings:
    target: Target = "python"
    device: Device = "cpu"
    frames_per_chunk: int = 16
    model_size: tuple[int, int] = (224, 224)
    half: bool = False  # float16 model input and segmenter (GPU)
    channels_last: bool = False  # the segmenter's memory format (GPU)
    max_batch: int = 64  # frames per batch of the segmenter and the maskers, in whole chunks
    gpus: tuple[int, ...] = (0,)  # GPU devices, () for every GPU the server sees; instance counts are per GPU
    decoder_instances: int = 2  # videos decoded at once (per GPU and per decoder model)
    # The Python runner's processes for them (per GPU), each decoding its share on threads. On an H200, 4 processes
    # for 16 decoders gave 1080 frames/s against one's 915, but failed a 60-minute run ("CUDA allocation failed" in
    # a decoder, not explained yet): one is the default.
    decoder_processes: int = 1
    check_instances: int = 1
    decoder_stall_seconds: float = 120.0  # a video whose decoder makes no progress this long fails (Python runner)
    segmenter_instances: int = 1
    masker_instances: int = 1
    random_weights_seed: int | None = None  # None: the segmenter needs a weights file
    default_class: str = "person"
    default_threshold: float = 0.5
    dali_threads: int = 2
    cuda_pool_bytes: int = 4 << 30  # Triton's CUDA memory pool, per GPU
    shm_bytes: int = 64 << 20  # the Python backend's shared memory region per model instance, to start with
    # Limits on one request (one video or segment), refused with a message naming the limit. What a video may hold
    # at once on the server is bounded by them: its decoder runs ahead of the segmenter by up to a whole request.
    max_video_bytes: int = 1 << 30
    max_video_frames: int = 18000  # 10 minutes at 30 frames/s
    max_frame_size: tuple[int, int] = (4096, 4096)  # (H, W): NVDEC's limit for H.264
    # What one request's frames may hold of the server's memory at once (`protocol.ServerInfo.frame_bytes`); None:
    # on a GPU a decoder's share of the CUDA pool, on the CPU no limit (0).
    video_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        mask.class_index(self.default_class)
        if not 0.0 <= self.default_threshold <= 1.0:
            raise ValueError(f"default_threshold must be in [0, 1], not {self.default_threshold}")
        if not 1 <= self.frames_per_chunk <= self.max_batch:
            raise ValueError("frames_per_chunk must be at least 1 and at most max_batch (a batch holds whole chunks)")
        if min(self.max_video_bytes, self.max_video_frames, *self.max_frame_size) < 1:
            raise ValueError("the request limits (max_video_*, max_frame_size) must be positive")
        if self.video_memory_bytes is not None and self.video_memory_bytes < 0:
            raise ValueError("video_memory_bytes must be 0 (no limit) or more")
        counts = (self.decoder_instances, self.decoder_processes, self.check_instances, self.segmenter_instances,
                  self.masker_instances)  # fmt: skip
        if min(counts) < 1:
            raise ValueError("every instance count must be at least 1")

    @property
    def model_dtype(self) -> int:
        return mc.TYPE_FP16 if self.half else mc.TYPE_FP32

    @property
    def chunks_per_batch(self) -> int:
        return self.max_batch // self.frames_per_chunk

    def server_info(self) -> protocol.ServerInfo:
        memory = self.video_memory_bytes
        if memory is None:
            memory = self.cuda_pool_bytes // self.decoder_instances if self.device == "gpu" else 0
        return protocol.ServerInfo(
            self.device, decode.codecs_for(self.device), self.default_class, self.default_threshold,
            self.model_size, self.max_video_bytes, self.max_video_frames, memory, 2 if self.half else 4,
        )  # fmt: skip


# What a GPU server runs best with, where the options do not say otherwise (measured on an H200: README).
GPU_TUNED = {"half": True, "channels_last": True, "frames_per_chunk": 32, "max_batch": 128, "decoder_instances": 16,
             "check_instances": 2, "cuda_pool_bytes": 16 << 30}  # fmt: skip


def tuned(device: str) -> dict[str, object]:
    return dict(GPU_TUNED) if device == "gpu" else {}


@dataclass(frozen=True)
class PipelineCall:
    """How a model builds its DALI pipeline: a graph function of `pipelines`, its arguments, the batch size."""

    module: str
    graph: str
    kwargs: dict
    batch_size: int


def pipeline_calls(s: Settings) -> dict[str, PipelineCall]:
    def decoder(with_frames: bool) -> PipelineCall:
        kwargs = {"device": s.device, "frames_per_chunk": s.frames_per_chunk, "model_size": list(s.model_size),
                  "half": s.half, "with_frames": with_frames}  # fmt: skip
        return PipelineCall("pipelines.decode", "decode", kwargs, 1)  # one chunk per response

    def masker(with_frames: bool) -> PipelineCall:
        kwargs = {"device": s.device, "with_frames": with_frames}
        return PipelineCall("pipelines.mask", "mask", kwargs, s.chunks_per_batch)

    return {DECODER: decoder(True), INPUT_DECODER: decoder(False), MASKER: masker(True), CLASS_MASKER: masker(False)}


def _inp(name: str, dtype: int, dims: list[int], ragged: bool = False) -> mc.ModelInput:
    return mc.ModelInput(name=name, data_type=dtype, dims=dims, allow_ragged_batch=ragged)


def _out(name: str, dtype: int, dims: list[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=dtype, dims=dims)


def _instances(s: Settings, count: int, on_gpu: bool) -> list[mc.ModelInstanceGroup]:
    if s.device == "gpu" and on_gpu:  # without a list of GPUs, Triton places `count` on every GPU it sees
        return [mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=list(s.gpus))]
    return [mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)]


def _parameters(config: mc.ModelConfig, values: dict[str, object]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)


def _batching() -> mc.ModelDynamicBatching:
    # preserve_ordering: the chunks of a video leave in the order they came (the client counts frames by it).
    return mc.ModelDynamicBatching(max_queue_delay_microseconds=2000, preserve_ordering=True)


def _python_model(s: Settings, config: mc.ModelConfig) -> mc.ModelConfig:
    config.backend = "python"
    if s.device == "gpu":
        # Keep GPU tensors on the GPU between models (the Python backend copies inputs to the CPU by default).
        _parameters(config, {"FORCE_CPU_ONLY_INPUT_TENSORS": "no"})
    return config


def _dali_model(s: Settings, config: mc.ModelConfig, streams: int = 1) -> mc.ModelConfig:
    """Point a model that runs a DALI pipeline at the target's backend. `streams`: requests a decoder serves at
    once (the native backend: an instance each, threads of the server; the Python runner: `decoder_processes`
    processes, a pipeline each on a thread)."""
    call = pipeline_calls(s)[config.name]
    if s.target == "dali":
        config.backend = "dali"
        # Without it the backend first tries `model.dali`, logging a Python traceback for the missing file.
        config.default_model_filename = "dali.py"
        config.instance_group[0].count = streams
        _parameters(config, {"num_threads": str(s.dali_threads)})
    else:
        _python_model(s, config)
        processes = min(s.decoder_processes, streams)
        config.instance_group[0].count = processes
        _parameters(config, {"pipeline_module": call.module, "pipeline_graph": call.graph,
                             "pipeline_kwargs": call.kwargs, "pipeline_batch_size": str(call.batch_size),
                             "num_threads": str(s.dali_threads), "streams": str(-(-streams // processes)),
                             "stall_seconds": str(s.decoder_stall_seconds)})  # fmt: skip
    return config


def _check(s: Settings) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=CHECK,
        max_batch_size=0,
        input=[_inp(protocol.VIDEO, mc.TYPE_UINT8, [1, -1])],
        # What the decoder carries along with each chunk, as the request's values: one sample, DALI's batch of 1.
        output=[
            _out(decode.CLASS_ID, mc.TYPE_INT32, [1, 1]),
            _out(decode.THRESHOLD, mc.TYPE_FP32, [1, 1]),
            _out(decode.FRAME_SIZE, mc.TYPE_INT32, [1, 2]),
        ],
        instance_group=_instances(s, s.check_instances, on_gpu=False),
    )
    _parameters(_python_model(s, config), {**s.server_info().parameters(), "max_frame_size": s.max_frame_size})
    return config


def _formats(s: Settings) -> mc.ModelConfig:
    """What the decoder takes, asked of the decoders' device (a GPU's instance probes it at load): no input."""
    config = mc.ModelConfig(
        name=protocol.FORMATS_MODEL,
        max_batch_size=0,
        output=[_out(protocol.FORMATS, mc.TYPE_STRING, [1])],
        instance_group=_instances(s, 1, on_gpu=True),
    )
    return _python_model(s, config)


def _decoder(s: Settings, name: str, with_frames: bool) -> mc.ModelConfig:
    h, w = s.model_size
    carried = decode.carried(with_frames)
    dims = {decode.CLASS_ID: [-1, 1], decode.THRESHOLD: [-1, 1], decode.FRAME_SIZE: [-1, 2]}
    types = {decode.CLASS_ID: mc.TYPE_INT32, decode.THRESHOLD: mc.TYPE_FP32, decode.FRAME_SIZE: mc.TYPE_INT32}
    outputs = [_out(decode.MODEL_INPUT, s.model_dtype, [-1, -1, 3, h, w])]
    if with_frames:
        outputs.insert(0, _out(decode.FRAMES, mc.TYPE_UINT8, [-1, -1, -1, -1, 3]))
    config = mc.ModelConfig(
        name=name,
        max_batch_size=0,
        # DALI's video input takes a batch of one encoded file: (1, bytes); the request's values, one sample each.
        input=[_inp(decode.VIDEO, mc.TYPE_UINT8, [-1, -1]), *(_inp(n, types[n], dims[n]) for n in carried)],
        output=[*outputs, *(_out(decode.CHUNK + n, types[n], dims[n]) for n in carried)],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        instance_group=_instances(s, 1, on_gpu=True),
    )
    return _dali_model(s, config, streams=s.decoder_instances)


def _segmenter(s: Settings) -> mc.ModelConfig:
    h, w = s.model_size
    config = mc.ModelConfig(
        name=SEGMENTER,
        max_batch_size=s.chunks_per_batch,
        # A batch item is a chunk of frames (F, 3, h, w); chunks of other lengths (a video's last) batch together.
        input=[
            _inp(decode.MODEL_INPUT, s.model_dtype, [-1, 3, h, w], ragged=True),
            _inp(decode.CLASS_ID, mc.TYPE_INT32, [1]),
        ],
        output=[_out(mask.CLASS_PROBS, s.model_dtype, [-1, 1, h, w])],
        dynamic_batching=_batching(),
        instance_group=_instances(s, s.segmenter_instances, on_gpu=True),
    )
    weights = {"weights_file": WEIGHTS_FILE, "half": str(s.half).lower(), "channels_last": str(s.channels_last).lower()}
    if s.random_weights_seed is not None:
        weights = {**weights, "random_weights_seed": str(s.random_weights_seed)}
    _parameters(_python_model(s, config), weights)
    return config


def _masker(s: Settings, name: str, with_frames: bool) -> mc.ModelConfig:
    h, w = s.model_size
    inputs = [
        _inp(mask.CLASS_PROBS, s.model_dtype, [-1, 1, h, w], ragged=True),
        _inp(mask.THRESHOLD, mc.TYPE_FP32, [1]),
    ]
    outputs = [_out(mask.MASK, mc.TYPE_UINT8, [-1, h, w])]
    if with_frames:
        inputs = [_inp(mask.FRAMES, mc.TYPE_UINT8, [-1, -1, -1, 3], ragged=True), *inputs,
                  _inp(mask.FRAME_SIZE, mc.TYPE_INT32, [2])]  # fmt: skip
        outputs.insert(0, _out(mask.SEGMENTED, mc.TYPE_UINT8, [-1, -1, -1]))
    config = mc.ModelConfig(
        name=name,
        max_batch_size=s.chunks_per_batch,
        input=inputs,
        output=outputs,
        dynamic_batching=_batching(),
        instance_group=_instances(s, s.masker_instances, on_gpu=True),
    )
    return _dali_model(s, config)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    """An ensemble step: the model's tensor names -> the ensemble's."""
    return mc.ModelEnsembling.Step(model_name=model, model_version=-1, input_map=inputs, output_map=outputs)


def _entry(s: Settings, name: str) -> mc.ModelConfig:
    decoder, masker = ENTRIES[name]
    with_frames = decoder == DECODER
    h, w = s.model_size
    carried = decode.carried(with_frames)
    decoded = [decode.FRAMES] * with_frames + [decode.MODEL_INPUT] + [decode.CHUNK + n for n in carried]
    masked = {mask.MASK: protocol.MASK, **({mask.SEGMENTED: protocol.SEGMENTED} if with_frames else {})}
    segmenter_inputs = {decode.MODEL_INPUT: decode.MODEL_INPUT, decode.CLASS_ID: decode.CHUNK + decode.CLASS_ID}
    masker_inputs = {mask.CLASS_PROBS: mask.CLASS_PROBS, mask.THRESHOLD: decode.CHUNK + decode.THRESHOLD}
    if with_frames:
        masker_inputs |= {mask.FRAMES: decode.FRAMES, mask.FRAME_SIZE: decode.CHUNK + decode.FRAME_SIZE}

    def tensors(names: dict[str, str] | list[str]) -> dict[str, str]:
        """A step's tensor names -> the ensemble's: the producing model's name, lowercased."""
        pairs = names.items() if isinstance(names, dict) else ((n, n) for n in names)
        return {model_name: ensemble_name.lower() for model_name, ensemble_name in pairs}

    steps = [
        _step(CHECK, {protocol.VIDEO: protocol.VIDEO}, tensors(list(carried))),
        _step(decoder, {decode.VIDEO: protocol.VIDEO, **tensors(list(carried))}, tensors(decoded)),
        _step(SEGMENTER, tensors(segmenter_inputs), tensors([mask.CLASS_PROBS])),
        _step(masker, tensors(masker_inputs), masked),  # the ensemble's outputs, named as the protocol says
    ]
    outputs = [_out(protocol.MASK, mc.TYPE_UINT8, [-1, -1, h, w])]
    if with_frames:
        outputs.insert(0, _out(protocol.SEGMENTED, mc.TYPE_UINT8, [-1, -1, -1, -1]))
    config = mc.ModelConfig(
        name=name,
        platform="ensemble",
        max_batch_size=0,
        input=[_inp(protocol.VIDEO, mc.TYPE_UINT8, [1, -1])],
        output=outputs,
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )
    _parameters(config, s.server_info().parameters())  # what the client reads of this server
    return config


def configs(s: Settings) -> dict[str, mc.ModelConfig]:
    return {
        protocol.ENTRY: _entry(s, protocol.ENTRY),
        protocol.MASK_ENTRY: _entry(s, protocol.MASK_ENTRY),
        CHECK: _check(s),
        protocol.FORMATS_MODEL: _formats(s),
        DECODER: _decoder(s, DECODER, with_frames=True),
        INPUT_DECODER: _decoder(s, INPUT_DECODER, with_frames=False),
        SEGMENTER: _segmenter(s),
        MASKER: _masker(s, MASKER, with_frames=True),
        CLASS_MASKER: _masker(s, CLASS_MASKER, with_frames=False),
    }


def server_args(s: Settings, gpu_count: int | None = None) -> list[str]:
    """tritonserver options that go with these settings (`gpu_count`: how many GPUs the server sees, when `gpus` is
    () for all of them)."""
    # The Python backend's shared memory: one region per model instance, made big enough at the start not to grow
    # under load (growing it while many threads send was seen to break the stub: boost lock_exception).
    args = [
        f"--backend-config=python,shm-default-byte-size={s.shm_bytes}",
        "--backend-config=python,shm-growth-byte-size=67108864",
    ]
    if s.device == "gpu":
        # GPU tensors between the models pass through this pool (64 MiB by default, too small); what does not fit
        # falls back to pinned host memory (slower). In flight per GPU: each decoder's run-ahead, up to a request.
        gpus = s.gpus or range(gpu_count or 1)
        args += [f"--cuda-memory-pool-byte-size={gpu}:{s.cuda_pool_bytes}" for gpu in gpus]
    return args
