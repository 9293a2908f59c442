"""Both server targets are well-formed: configs parse with Triton's own protobuf and say what the native DALI backend
reads from their text, the ensembles connect what each model takes and makes, DALI pipelines serialize, and the
contract the Python runner holds (dali_backend's) says what dali_backend says."""

import runpy
import sys
from dataclasses import replace

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import pipelines
from pipelines import decode, mask
from repo import models
from repo.build import build, config_text
from repo.dali_contract import ContractError, max_batch_size_in_text, requested, validate
from repo.models import Settings, server_args
from stream_client import protocol

TARGETS = [("python", "cpu"), ("python", "gpu"), ("dali", "cpu"), ("dali", "gpu")]
DALI_MODELS = [models.DECODER, models.INPUT_DECODER, models.MASKER, models.CLASS_MASKER]


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(params=TARGETS, ids=["-".join(t) for t in TARGETS])
def repository(request, tmp_path):
    target, device = request.param
    settings = Settings(target=target, device=device, random_weights_seed=0)
    return settings, build(settings, tmp_path / "repo")


def test_every_config_parses_and_writes_max_batch_size_in_its_text(repository):
    settings, repo = repository
    configs = {d.name: parse(d / "config.pbtxt") for d in repo.iterdir()}
    assert set(configs) == {protocol.ENTRY, protocol.MASK_ENTRY, models.CHECK, protocol.FORMATS_MODEL, *DALI_MODELS,
                            models.SEGMENTER}  # fmt: skip
    for name, config in configs.items():
        assert config.name == name
        # The native DALI backend reads the field from the text; a missing one means "batched" to it.
        assert max_batch_size_in_text((repo / name / "config.pbtxt").read_text()) == config.max_batch_size, name
    for name in DALI_MODELS:
        assert configs[name].backend == settings.target
        model_file = "dali.py" if settings.target == "dali" else "model.py"
        assert (repo / name / "1" / model_file).is_file()
        if settings.target == "dali":
            assert configs[name].default_model_filename == "dali.py"  # no probe of a missing model.dali
    assert configs[models.DECODER].max_batch_size == configs[models.INPUT_DECODER].max_batch_size == 0
    assert configs[models.DECODER].model_transaction_policy.decoupled
    for name in (models.CHECK, models.SEGMENTER, protocol.FORMATS_MODEL):
        assert configs[name].backend == "python" and (repo / name / "1" / "model.py").is_file()
    kind = mc.ModelInstanceGroup.KIND_GPU if settings.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    assert configs[models.SEGMENTER].instance_group[0].kind == kind
    assert configs[protocol.FORMATS_MODEL].instance_group[0].kind == kind  # on a GPU, it asks the decoders' GPU
    assert not configs[protocol.FORMATS_MODEL].input
    assert configs[models.CHECK].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_every_ensemble_step_gets_what_its_model_takes_and_asks_for_all_a_dali_model_makes(repository):
    settings, repo = repository
    configs = {d.name: parse(d / "config.pbtxt") for d in repo.iterdir()}
    for entry in (protocol.ENTRY, protocol.MASK_ENTRY):
        ensemble = configs[entry]
        produced = {i.name: (i.data_type, "ensemble input") for i in ensemble.input}
        for step in ensemble.ensemble_scheduling.step:
            model = configs[step.model_name]
            inputs = {i.name: i for i in model.input}
            assert set(step.input_map) == set(inputs), (entry, step.model_name)
            for name, tensor in step.input_map.items():
                assert produced[tensor][0] == inputs[name].data_type, (entry, step.model_name, name)
            outputs = {o.name: o for o in model.output}
            assert set(step.output_map) <= set(outputs)
            if model.backend == "dali" or step.model_name in DALI_MODELS:
                # dali_backend fails a request that does not ask for every output of the pipeline.
                assert set(step.output_map) == set(outputs), (entry, step.model_name)
            produced |= {tensor: (outputs[name].data_type, step.model_name) for name, tensor in step.output_map.items()}
        assert {o.name for o in ensemble.output} <= set(produced)
        # After the decoupled decoder, a step takes only what came out of it (Triton refuses to load it otherwise).
        decoder = ensemble.ensemble_scheduling.step[1]
        assert configs[decoder.model_name].model_transaction_policy.decoupled
        downstream = set(decoder.output_map.values())
        for step in ensemble.ensemble_scheduling.step[2:]:
            assert set(step.input_map.values()) <= downstream, step.model_name
            downstream |= set(step.output_map.values())
    assert {o.name for o in configs[protocol.ENTRY].output} == {protocol.SEGMENTED, protocol.MASK}
    assert {o.name for o in configs[protocol.MASK_ENTRY].output} == {protocol.MASK}
    # What the client reads of the server: the entries say it in their parameters.
    params = {k: v.string_value for k, v in configs[protocol.ENTRY].parameters.items()}
    assert protocol.ServerInfo.from_parameters(params) == settings.server_info()


@pytest.mark.parametrize("name", DALI_MODELS)
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_native_dali_py_serializes_the_shared_pipeline(tmp_path, name, device, monkeypatch):
    repository = build(Settings(target="dali", device=device, random_weights_seed=0), tmp_path / "repo")
    dali_py = repository / name / "1" / "dali.py"
    # The backend runs dali.py with its own DALI on a GPU; here it is run without one (device_id=None).
    source = dali_py.read_text().replace("device_id=0", "device_id=None")
    dali_py.write_text(source)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for module in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        monkeypatch.delitem(sys.modules, module)
    namespace = runpy.run_path(str(dali_py))
    pipe = namespace[name]()
    assert getattr(namespace[name], "_is_autoserialize", False)
    assert len(pipe.serialize()) > 100
    config = parse(repository / name / "config.pbtxt")
    assert [o.name for o in pipe._graph_outputs] == [o.name for o in config.output]


@pytest.mark.parametrize("name", DALI_MODELS)
def test_python_runner_parameters_build_the_same_pipeline_and_its_config_passes_the_backends_checks(name, tmp_path):
    settings = Settings(random_weights_seed=0)
    call = models.pipeline_calls(settings)[name]
    config = models.configs(settings)[name]
    assert config.parameters["pipeline_module"].string_value == call.module
    graph = getattr(__import__(call.module, fromlist=[call.graph]), call.graph)
    pipe = pipelines.build(graph, batch_size=call.batch_size, device_id=None, num_threads=1, **call.kwargs)
    assert [o.name for o in pipe._graph_outputs] == [o.name for o in config.output]
    as_json = {
        "input": [{"name": i.name, "dims": list(i.dims)} for i in config.input],
        "output": [{"name": o.name} for o in config.output],
    }
    validate(as_json, pipe, batched=config.max_batch_size != 0)  # raises with dali_backend's message if not


def test_the_contract_says_what_dali_backend_says():
    settings = Settings(random_weights_seed=0)
    config = models.configs(settings)[models.DECODER]
    text = config_text(config)
    assert max_batch_size_in_text(text) == 0
    # protobuf's own writer leaves the field out: dali_backend then takes the decoder for a batched model ...
    assert max_batch_size_in_text(text_format.MessageToString(config)) is None
    assert max_batch_size_in_text('name: "x" # max_batch_size: 3\nparameters { key: "max_batch_size" }\n') is None
    assert max_batch_size_in_text("input [{ dims: [1] }]\nmax_batch_size : 0x10\n") == 16
    call = models.pipeline_calls(settings)[models.DECODER]
    pipe = pipelines.build(decode.decode, batch_size=1, device_id=None, num_threads=1, **call.kwargs)
    as_json = {"input": [{"name": i.name, "dims": list(i.dims)} for i in config.input], "output": list(config.output)}
    # ... and refuses to load it, as it did in a pod (the server's words, from the issue).
    with pytest.raises(ContractError, match='Mismatch in number of dimensions for "VIDEO"\nNumber of dimensions '
                       "defined in config: 2\nNumber of dimensions defined in pipeline: 1"):  # fmt: skip
        validate(as_json, pipe, batched=True)
    validate(as_json, pipe, batched=False)
    with pytest.raises(ContractError, match=r"Number of outputs expected by the requests \(1\) does not match the "
                       r"number of outputs from DALI pipeline \(2\)\."):  # fmt: skip
        requested(1, 2)
    requested(2, 2)
    requested(0, 2)  # none asked: Triton asks for all
    masker = pipelines.build(mask.mask, batch_size=2, device_id=None, num_threads=1)
    with pytest.raises(ContractError, match='Missing config for "FRAME_SIZE" input'):
        validate({"input": [{"name": n, "dims": [-1]} for n in ("FRAMES", "CLASS_PROBS", "THRESHOLD")],
                  "output": [{}, {}]}, masker, batched=True)  # fmt: skip
    class_masker = pipelines.build(mask.mask, batch_size=1, device_id=None, with_frames=False)
    inputs = [{"name": "CLASS_PROBS", "dims": [-1, 1, 4, 4]}, {"name": "THRESHOLD", "dims": [1]}]
    with pytest.raises(ContractError, match="The number of outputs specified in the DALI pipeline"):
        validate({"input": inputs, "output": [{}, {}]}, class_masker, batched=True)


@pytest.mark.parametrize("gpus", [(0,), (0, 1), tuple(range(8)), ()], ids=["0", "0-1", "0-7", "all"])
def test_gpu_instances_are_placed_on_every_gpu(gpus):
    settings = Settings(device="gpu", gpus=gpus, decoder_instances=3, random_weights_seed=0)
    configs = models.configs(settings)
    for name in (*DALI_MODELS, models.SEGMENTER):
        (group,) = configs[name].instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == list(gpus)
    # The Python runner decodes a GPU's videos in one process (one CUDA context), a pipeline each; the native
    # backend runs an instance per video.
    assert configs[models.DECODER].instance_group[0].count == 1
    assert configs[models.DECODER].parameters["streams"].string_value == "3"
    native = models.configs(Settings(target="dali", device="gpu", gpus=gpus, decoder_instances=3))
    assert native[models.DECODER].instance_group[0].count == 3
    assert configs[models.CHECK].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # A pool per GPU: the ones named, or as many as the server sees (a pod of the chart's gpu.count).
    pools = [a for a in server_args(settings, gpu_count=2) if a.startswith("--cuda-memory-pool-byte-size")]
    assert [p.split("=")[1].split(":")[0] for p in pools] == [str(g) for g in (gpus or (0, 1))]


def test_a_gpu_server_tells_each_request_its_share_of_the_cuda_pool():
    """A decoder runs ahead of the segmenter by up to its whole request, in Triton's CUDA pool: the entries tell the
    client each request's share (pool / decoders) and the model's value size, so that it cuts segments to fit."""

    def told(settings: Settings) -> protocol.ServerInfo:
        config = models.configs(settings)[protocol.ENTRY]
        return protocol.ServerInfo.from_parameters({k: v.string_value for k, v in config.parameters.items()})

    gpu = Settings(**models.tuned("gpu"), device="gpu", random_weights_seed=0)
    info = told(gpu)
    assert info.video_memory_bytes == gpu.cuda_pool_bytes // gpu.decoder_instances == 1 << 30
    assert info.model_value_bytes == 2  # float16
    # 1080p with the frames: the frame (RGB), its NV12, the model's input, probabilities and mask: 9.8 MB a frame.
    assert info.frame_bytes(1080, 1920, frames=True) == 1080 * 1920 * 9 // 2 + 224 * 224 * (4 * 2 + 1)
    assert info.max_frames(1080, 1920, frames=True) == 109
    assert info.max_frames(1080, 1920, frames=False) == 2377
    cpu = Settings(random_weights_seed=0)
    assert told(cpu).max_frames(1080, 1920, frames=True) == cpu.max_video_frames  # the CPU: no such limit
    assert told(replace(gpu, video_memory_bytes=0)).max_frames(1080, 1920, frames=True) == gpu.max_video_frames


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="unknown class"):
        Settings(default_class="unicorn")
    with pytest.raises(ValueError, match="max_batch"):
        Settings(frames_per_chunk=64, max_batch=32)
    with pytest.raises(ValueError, match="instance count"):
        Settings(decoder_instances=0)


def test_build_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m export.weights"):
        build(Settings(), tmp_path / "repo", weights=tmp_path / "missing.pt")
