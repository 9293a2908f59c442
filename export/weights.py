"""Write the segmenter's weights file.

    python -m export.weights                      # torchvision's COCO_WITH_VOC_LABELS_V1 weights (downloads them)
    python -m export.weights --from FILE.pth      # the same weights, from a file downloaded before
    python -m export.weights --random-seed 0      # seeded random weights: tests and offline demos only
    python -m export.weights --fallback-random-seed 0   # torchvision's if they can be downloaded, else seeded random

The file goes to `export/fcn_resnet101.pt` unless `--out` says otherwise; `python -m repo.build` puts it into the
segmenter's model directory.
"""

import argparse
from pathlib import Path

import torch
from torchvision.models.segmentation import FCN_ResNet101_Weights

from export import WEIGHTS_FILE, fcn

DEFAULT_OUT = Path(__file__).parent / WEIGHTS_FILE


def pretrained_state_dict(from_file: Path | None) -> dict[str, torch.Tensor]:
    weights = FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1
    if from_file is None:
        state = weights.get_state_dict(progress=True)
    else:
        state = torch.load(from_file, map_location="cpu", weights_only=True)
    # The auxiliary head only helps training; the segmenter is built without it.
    return {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_file", type=Path, help="torchvision's fcn_resnet101 .pth file")
    source.add_argument("--random-seed", type=int, help="write seeded RANDOM weights (segments are meaningless)")
    source.add_argument(
        "--fallback-random-seed",
        type=int,
        metavar="SEED",
        help="download torchvision's weights; without internet write seeded RANDOM weights instead",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    state = None
    if args.fallback_random_seed is not None:
        try:
            state = pretrained_state_dict(None)
        except OSError as e:
            print(
                f"!!! could not download torchvision's weights ({e}): writing seeded RANDOM weights instead; "
                "the segments will be meaningless. Run `python -m export.weights` with internet for real ones."
            )
            args.random_seed = args.fallback_random_seed
    if args.random_seed is not None:
        model = fcn.seeded(args.random_seed)
        source_line = f"RANDOM weights, seed {args.random_seed} (not trained: for tests and offline demos)"
    else:
        model = fcn.Segmenter()
        model.fcn.load_state_dict(state if state is not None else pretrained_state_dict(args.from_file))
        origin = args.from_file or FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1.url
        source_line = f"torchvision FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1 from {origin}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fcn.save(model, args.out, source_line)
    print(f"wrote {args.out}: {source_line}")


if __name__ == "__main__":
    main()
