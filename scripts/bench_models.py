"""Time to build each ImageNet zoo graph and to run one forward pass of two images (synthetic weights).

    python scripts/bench_models.py [--model ResNet ResNetDenoise ResNeXtDenoiseAll] [--images 2]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from repro import zoo  # noqa: E402
from repro.engines.tensorflow.classifier_graph import Classifier, model_variables  # noqa: E402
from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=zoo.model_names("imagenet"))
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("{:<20} {:>12} {:>16} {:>22}".format("model", "build graph", "build+restore", "forward {} images (best of {})".format(
        args.images, args.repeats)))
    for name in args.model:
        spec = zoo.get_model(name)
        began = time.perf_counter()
        model_variables(spec)
        build = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as directory:
            path = write_synthetic_checkpoint(spec, Path(directory) / "synthetic.npz")
            began = time.perf_counter()
            classifier = Classifier(spec, path)
            restore = time.perf_counter() - began
        images = np.random.default_rng(0).integers(0, 256, (args.images, 224, 224, 3)).astype(np.uint8)
        classifier.predict_logits(images)
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            classifier.predict_logits(images)
            times.append(time.perf_counter() - began)
        classifier.close()
        print("{:<20} {:>10.1f} s {:>14.1f} s {:>20.2f} s".format(name, build, restore, min(times)), flush=True)


if __name__ == "__main__":
    main()
