"""The segmenter's weights: how the model is built (`fcn`) and the command that writes its weights file (`weights`)."""

WEIGHTS_FILE = "fcn_resnet101.pt"
