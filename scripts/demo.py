"""`make demo`: the study on the embedded default zoo.

The embedded miniature zoo arrives with a later issue; until then this says so and shows how to run
the study with the released ImageNet checkpoints.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro import zoo  # noqa: E402


def main():
    names = zoo.model_names("imagenet")
    print("The embedded miniature zoo that runs the study on a fresh machine is not part of this version yet.")
    print("To run the study on the released ImageNet checkpoints (they cannot be shipped here):")
    print("  python scripts/download_checkpoints.py --model {}".format(" ".join(names)))
    print("  python repro/predict.py --model ResNeXtDenoiseAll --input PATH/TO/IMAGES --output predictions.csv")
    print("  python repro/evaluate.py --model {} --data /path/to/ILSVRC2012/val".format(" ".join(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
