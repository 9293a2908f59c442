"""The weights command: torchvision's weights from a file, or seeded random weights only when asked, said which."""

import torch
from torchvision.models.segmentation import fcn_resnet101

from export import fcn
from export.weights import main


def test_random_weights_are_seeded_and_labelled(tmp_path, capsys):
    main(["--random-seed", "3", "--out", str(tmp_path / "a.pt")])
    main(["--random-seed", "3", "--out", str(tmp_path / "b.pt")])
    assert "RANDOM weights, seed 3" in capsys.readouterr().out
    a, source = fcn.load(tmp_path / "a.pt")
    b, _ = fcn.load(tmp_path / "b.pt")
    assert source.startswith("RANDOM")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_torchvision_weights_from_a_file_drop_the_auxiliary_head(tmp_path, capsys):
    torch.manual_seed(1)
    torchvision_model = fcn_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(torchvision_model.state_dict(), tmp_path / "fcn_resnet101_coco.pth")
    main(["--from", str(tmp_path / "fcn_resnet101_coco.pth"), "--out", str(tmp_path / "w.pt")])
    assert "COCO_WITH_VOC_LABELS_V1" in capsys.readouterr().out
    model, source = fcn.load(tmp_path / "w.pt")
    assert "fcn_resnet101_coco.pth" in source
    weight = "classifier.4.weight"
    assert torch.equal(model.fcn.state_dict()[weight], torchvision_model.state_dict()[weight])
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = torch.softmax(torchvision_model.eval()(x)["out"], 1)
        assert torch.allclose(model(x), expected, atol=1e-6)
