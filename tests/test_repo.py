"""Both server targets are well-formed: configs parse with Triton's own protobuf, DALI pipelines serialize."""

import runpy
import sys

import pytest
from google.protobuf import text_format
from nvidia.dali import pipeline_def
from tritonclient.grpc import model_config_pb2 as mc

from repo import models
from repo.build import build
from repo.models import Settings

TARGETS = [("python", "cpu"), ("python", "gpu"), ("dali", "cpu"), ("dali", "gpu")]


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("target,device", TARGETS)
def test_every_config_parses_and_describes_the_chain(tmp_path, target, device):
    settings = Settings(target=target, device=device, random_weights_seed=0)
    repository = build(settings, tmp_path / "repo")
    configs = {d.name: parse(d / "config.pbtxt") for d in repository.iterdir()}
    assert set(configs) == {models.ENTRY, models.DECODER, models.SEGMENTER, models.MASKER, models.CLASS_MASKER}
    assert all(name == config.name for name, config in configs.items())
    assert configs[models.ENTRY].model_transaction_policy.decoupled
    assert configs[models.DECODER].model_transaction_policy.decoupled
    for name in (models.DECODER, models.MASKER, models.CLASS_MASKER):
        assert configs[name].backend == target
        model_file = "dali.py" if target == "dali" else "model.py"
        assert (repository / name / "1" / model_file).is_file()
    for name in (models.ENTRY, models.SEGMENTER):
        assert configs[name].backend == "python"
        assert (repository / name / "1" / "model.py").is_file()
    # What flows from one model to the next has the same name, type and shape on both sides.
    decoder_out = {o.name: o for o in configs[models.DECODER].output}
    segmenter_in = configs[models.SEGMENTER].input[0]
    assert segmenter_in.data_type == decoder_out[segmenter_in.name].data_type
    assert list(segmenter_in.dims) == list(decoder_out[segmenter_in.name].dims)[2:]
    segmenter_out = {o.name: o for o in configs[models.SEGMENTER].output}
    for masker in (models.MASKER, models.CLASS_MASKER):
        masker_in = {i.name: i for i in configs[masker].input}
        for probs in (models.PROBS, models.CLASS_PROBS):  # every class, or the one the entry model asks for
            assert masker_in["PROBS"].data_type == segmenter_out[probs].data_type
            assert masker_in["PROBS"].dims[0] == -1 and masker_in["PROBS"].dims[1:] == segmenter_out[probs].dims[1:]
    # What the entry model returns is what the maskers make.
    entry_out = {o.name for o in configs[models.ENTRY].output}
    assert {o.name for o in configs[models.MASKER].output} <= entry_out
    assert {o.name for o in configs[models.CLASS_MASKER].output} == {models.MASK}
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    assert configs[models.SEGMENTER].instance_group[0].kind == kind


@pytest.mark.parametrize("name", [models.DECODER, models.MASKER, models.CLASS_MASKER])
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


@pytest.mark.parametrize("name", [models.DECODER, models.MASKER, models.CLASS_MASKER])
def test_python_runner_parameters_build_the_same_pipeline(name):
    settings = Settings(random_weights_seed=0)
    call = models.pipeline_calls(settings)[name]
    config = models.configs(settings)[name]
    assert config.parameters["pipeline_module"].string_value == call.module
    graph = getattr(__import__(call.module, fromlist=[call.graph]), call.graph)
    pipe = pipeline_def(graph, batch_size=call.batch_size, num_threads=1, device_id=None)(**call.kwargs)
    assert len(pipe.serialize()) > 100
    assert [o.name for o in pipe._graph_outputs] == [o.name for o in config.output]


@pytest.mark.parametrize("gpus", [(0,), (0, 1), tuple(range(8))])
def test_gpu_instances_are_placed_on_every_gpu(gpus):
    settings = Settings(device="gpu", gpus=gpus, decoder_instances=3, random_weights_seed=0)
    configs = models.configs(settings)
    for name in (models.DECODER, models.SEGMENTER, models.MASKER, models.CLASS_MASKER):
        (group,) = configs[name].instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == list(gpus)
    assert configs[models.DECODER].instance_group[0].count == 3  # per GPU
    assert configs[models.ENTRY].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="chunks_per_response"):
        Settings(target="dali", chunks_per_response=2)
    with pytest.raises(ValueError, match="unknown class"):
        Settings(default_class="unicorn")
    with pytest.raises(ValueError, match="max_batch"):
        Settings(frames_per_chunk=64, chunks_per_response=2, max_batch=64)


def test_build_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m export.weights"):
        build(Settings(), tmp_path / "repo", weights=tmp_path / "missing.pt")
