"""torchvision's fcn_resnet101 as the segmenter runs it: 21 VOC classes, no auxiliary head, softmax on top."""

from pathlib import Path

import torch
from torchvision.models.segmentation import fcn_resnet101


class Segmenter(torch.nn.Module):
    """(N, 3, h, w) normalised frames -> (N, 21, h, w) class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.fcn = fcn_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fcn(x)["out"], dim=1)


def seeded(seed: int) -> Segmenter:
    """Random weights that are the same for the same seed (tests and offline demos only).

    Untrained, the 101 layers blow activations up until the softmax saturates (one class gets 1.0 everywhere).
    BatchNorm statistics calibrated on seeded noise, and a classifier scaled down, keep the probabilities spread
    over the classes for video frames, so thresholds and class choices change the output as with trained weights.
    """
    torch.manual_seed(seed)
    model = Segmenter()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 64))
        classifier = model.fcn.classifier[-1]
        classifier.weight.mul_(1 / 30)
        classifier.bias.mul_(1 / 30)
    return model.eval()


def save(model: Segmenter, path: Path, source: str) -> None:
    torch.save({"source": source, "state_dict": model.fcn.state_dict()}, path)


def load(path: Path) -> tuple[Segmenter, str]:
    """The model and a line saying where its weights came from."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = Segmenter()
    model.fcn.load_state_dict(saved["state_dict"])
    return model.eval(), saved["source"]
