"""Benchmark one study batch on a full-size model with a synthetic checkpoint: where does the time go?

    python scripts/bench_study.py --model ResNet --images 2 --attack-iter 2

Prints, measured in one process side by side: graph build + restore, one PGD step, the forward pass alone
(predictions only), and the forward pass with every tap and metric (one session run per batch), so the
metrics' share can be read off; plus the ratio to a 100-step attack.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from repro import zoo  # noqa: E402
from repro.data import to_model_space  # noqa: E402
from repro.engines.tensorflow import metrics  # noqa: E402
from repro.engines.tensorflow.study_graph import StudyGraph  # noqa: E402
from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint  # noqa: E402
from repro.protocol import StudyConfig  # noqa: E402

from bench_common import best_of  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ResNet")
    parser.add_argument("--zoo", default="imagenet")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--attack-iter", type=int, default=2)
    parser.add_argument("--metrics", default=",".join(metrics.DEFAULT_METRICS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = zoo.get_model(args.model, args.zoo)
    with tempfile.TemporaryDirectory() as directory:
        began = time.perf_counter()
        checkpoint = write_synthetic_checkpoint(spec, Path(directory) / "synthetic.npz")
        synthetic = time.perf_counter() - began
        began = time.perf_counter()
        graph = StudyGraph(spec, checkpoint, StudyConfig(attack_iterations=args.attack_iter,
                                                         metrics=tuple(args.metrics.split(","))))
        build = time.perf_counter() - began
    size = spec.arch.input_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3)).astype(np.uint8)
    clean = to_model_space(images)
    noise = np.zeros_like(clean)
    feed = {graph.clean: clean, graph.random_noise: noise, graph.adversarial: clean}
    session = graph.session
    forward = best_of(lambda: session.run(graph.predictions, feed), args.repeats)
    forward_metrics = best_of(lambda: session.run([graph.predictions, graph.metric_values], feed), args.repeats)
    targets = np.zeros(args.images, np.int64)
    attack = best_of(lambda: session.run(graph.attack, {graph.clean: clean, graph.adversarial: clean,
                                                        graph.target: targets, graph.steps: args.attack_iter}),
                     args.repeats)
    per_step = attack / max(args.attack_iter, 1)
    metric_share = forward_metrics - forward
    print("model {} ({} zoo), {} images, {} blocks, metrics: {}".format(
        spec.name, spec.zoo, args.images, len(graph.taps), args.metrics))
    print("synthetic checkpoint      {:8.2f} s".format(synthetic))
    print("graph build + restore     {:8.2f} s".format(build))
    print("forward ×3 (clean, random, adversarial), predictions only   {:8.2f} s".format(forward))
    print("forward ×3 + taps + metrics (one session run)               {:8.2f} s".format(forward_metrics))
    print("  → metrics alone ≈ {:.2f} s = {:.2f} s per image".format(metric_share, metric_share / args.images))
    print("PGD: {:.2f} s per step for the batch ({:.2f} s per image and step)".format(per_step, per_step / args.images))
    print("100-step attack ≈ {:.0f} s; metrics are {:.1%} of attack + metrics".format(
        100 * per_step, metric_share / (100 * per_step + forward_metrics)))


if __name__ == "__main__":
    main()
