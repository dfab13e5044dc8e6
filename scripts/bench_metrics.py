#!/usr/bin/env python
"""The in-graph metrics against their reference implementations, over all 50 ResNet-152 block outputs.

    python scripts/bench_metrics.py [--images 4] [--repeats 3] [--markdown docs/performance.md]

ResNet-152's 50 residual blocks have four output shapes (SPEC §1, §5): 3 × (256, 56, 56), 8 × (512, 28, 28),
36 × (1024, 14, 14), 3 × (2048, 7, 7) — 47,872 channel maps per image. The maps are random, post-ReLU-like
(≥ 0, many zeros, roughly 0 … 10), held in graph variables so that neither feeding nor constant folding is
timed. Measured for real, nothing extrapolated, except where a line says so:

- in the graph: each default metric alone, and all default metrics together (`repro.engines.tensorflow.metrics.metric_ops`, as
  the study computes them: shared differences, squares and sums), over the 50 blocks of ``--images`` images
  in one session run (as the study does), best of ``--repeats`` after a warm-up (which also compiles the XLA
  functions of `repro.engines.tensorflow.metrics`: the first run's time is printed separately), divided by the images;
- the references, one channel at a time over all 47,872 channels of one image, once: scikit-image's
  structural_similarity, mean_squared_error and peak_signal_noise_ratio, image-similarity-measures' sre, and
  NumPy for the rest (Frobenius norm, √MSE, the paper's SRE equation, cosine, relative L2).
  image-similarity-measures' uiq runs Python loops over its windows (about 0.1 s per 14×14 channel), so it
  is timed on ``--uiq-channels`` channels of each block shape and scaled to all channels (said in the output).

Deviations: the largest |in-graph − reference| over the channels (dB for SRE and PSNR), SSIM against
scikit-image on float64 copies of the maps (the graph computes in float64) and on the float32 maps.
Targets (issue "Performance of the TensorFlow engine"): SSIM ≥ 30× its loop with deviation ≤ 1e-5, every
other default metric ≥ 20×.
"""
import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from repro.engines.tensorflow import metrics  # noqa: E402
from repro.engines.tensorflow.tfcompat import tf  # noqa: E402
from repro.protocol import DEFAULT_METRICS, uiq_window_size  # noqa: E402

from bench_common import append_markdown, best_of  # noqa: E402

# (channels, side, number of blocks) of ResNet-152's block outputs.
RESNET152_BLOCK_SHAPES = ((256, 56, 3), (512, 28, 8), (1024, 14, 36), (2048, 7, 3))
DATA_RANGE = 2.0
TARGETS = {"ssim": 30.0}
DEFAULT_TARGET = 20.0


def post_relu_maps(rng, shape):
    """Clean and perturbed float32 maps, ≥ 0 with many zeros, roughly 0 … 10."""
    pre_activation = rng.normal(0.0, 2.5, shape).astype(np.float32)
    clean = np.maximum(pre_activation, 0.0)
    perturbed = np.maximum(pre_activation + rng.normal(0.0, 0.8, shape).astype(np.float32), 0.0)
    return clean, perturbed


def reference_functions():
    """metric → f(a, b) on one channel (2-D float32 arrays): the implementation the graph is checked against."""
    from image_similarity_measures import quality_metrics
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    def norm(a):
        return np.linalg.norm(a.astype(np.float64))

    return {
        "frobenius": lambda a, b: norm(a - b),
        "mse": mean_squared_error,
        "rmse": lambda a, b: np.sqrt(mean_squared_error(a, b)),
        "sre": lambda a, b: quality_metrics.sre(a[..., None], b[..., None]),
        "sre_eq": lambda a, b: 10 * np.log10(np.mean(a, dtype=np.float64) ** 2 / mean_squared_error(a, b)),
        "psnr": lambda a, b: peak_signal_noise_ratio(a, b, data_range=DATA_RANGE),
        "ssim": lambda a, b: structural_similarity(a, b, data_range=DATA_RANGE),
        "uiq": lambda a, b: quality_metrics.uiq(a[..., None], b[..., None],
                                                window_size=uiq_window_size(*a.shape, 8)),
        "cosine": lambda a, b: float(np.vdot(a.astype(np.float64), b)) / (norm(a) * norm(b)),
        "rel_l2": lambda a, b: norm(a - b) / norm(a),
    }


def time_graph(blocks, names, repeats):
    """Seconds per session run for each metric alone and for all of them together; the values."""
    graph = tf.Graph()
    with graph.as_default():
        pairs = [(tf.Variable(clean, trainable=False), tf.Variable(perturbed, trainable=False))
                 for clean, perturbed in blocks]
        alone = {name: [metrics.metric_ops(a, b, (name,), data_range=DATA_RANGE)[name] for a, b in pairs]
                 for name in names}
        together = [metrics.metric_ops(a, b, names, data_range=DATA_RANGE) for a, b in pairs]
        initialize = tf.global_variables_initializer()
    with tf.Session(graph=graph) as session:
        session.run(initialize)
        began = time.perf_counter()
        session.run(together)
        first = time.perf_counter() - began
        seconds = {name: best_of(lambda: session.run(alone[name]), repeats) for name in names}
        seconds["all"] = best_of(lambda: session.run(together), repeats)
        values = session.run(together)
    return seconds, values, first


def time_references(blocks, names, uiq_channels):
    """Seconds per image of each reference loop over all channels of image 0, its values, and which
    references were scaled up from a subset."""
    functions = reference_functions()
    seconds, values, scaled = {}, {}, set()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name in names:
            values[name], seconds[name] = [], 0.0
            for clean, perturbed in blocks:
                channels = clean.shape[1]
                count = min(uiq_channels, channels) if name == "uiq" else channels
                began = time.perf_counter()
                block_values = [functions[name](clean[0, c], perturbed[0, c]) for c in range(count)]
                seconds[name] += (time.perf_counter() - began) * channels / count
                values[name].append(np.array(block_values, dtype=np.float64))
                if count < channels:
                    scaled.add(name)
    return seconds, values, scaled


def largest_deviation(graph_values, reference_values):
    deviation = 0.0
    for ours, theirs in zip(graph_values, reference_values):
        ours = ours[:len(theirs)]
        both = np.isfinite(ours) & np.isfinite(theirs)
        if not np.array_equal(np.isfinite(ours), np.isfinite(theirs)) or not np.array_equal(ours[~both], theirs[~both]):
            return float("inf")                          # a non-finite value where the reference has another
        if both.any():
            deviation = max(deviation, float(np.abs(ours[both] - theirs[both]).max()))
    return deviation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="images per in-graph run (the study's --batch default)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), choices=DEFAULT_METRICS)
    parser.add_argument("--uiq-channels", type=int, default=16, help="channels per block for the UIQ reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    blocks = [post_relu_maps(rng, (args.images, channels, side, side))
              for channels, side, count in RESNET152_BLOCK_SHAPES for _ in range(count)]
    names = tuple(args.metrics)
    print("ResNet-152's 50 block outputs, {} images per in-graph run, {} CPU cores".format(
        args.images, os.cpu_count()), flush=True)
    graph_seconds, graph_values, first_run = time_graph(blocks, names, args.repeats)
    print("first in-graph run of all {} metrics, compiling included: {:.2f} s".format(len(names), first_run))
    reference_seconds, reference_values, scaled = time_references(blocks, names, args.uiq_channels)

    lines = ["| metric | reference | reference s per image | in-graph s per image | speed-up | target | "
             "largest deviation |", "|---|---|---|---|---|---|---|"]
    sources = {"ssim": "skimage structural_similarity", "mse": "skimage mean_squared_error",
               "psnr": "skimage peak_signal_noise_ratio", "sre": "image-similarity-measures sre",
               "uiq": "image-similarity-measures uiq", "rmse": "√ skimage mean_squared_error"}
    met = True
    for name in names:
        ours = graph_seconds[name] / args.images
        speed_up = reference_seconds[name] / ours
        target = TARGETS.get(name, DEFAULT_TARGET)
        met &= speed_up >= target
        deviation = largest_deviation([values[name][0] for values in graph_values], reference_values[name])
        if name == "ssim":
            from skimage.metrics import structural_similarity
            in_float64 = [np.array([structural_similarity(clean[0, c].astype(np.float64),
                                                          perturbed[0, c].astype(np.float64), data_range=DATA_RANGE)
                                    for c in range(clean.shape[1])]) for clean, perturbed in blocks]
            deviation = "{:.1e} (float64 copies), {:.1e} (the float32 maps)".format(
                largest_deviation([values[name][0] for values in graph_values], in_float64), deviation)
        else:
            deviation = "{:.1e}".format(deviation)
        lines.append("| {} | {}{} | {:.3f} | {:.4f} | {:.1f}× | {:.0f}× | {} |".format(
            name, sources.get(name, "NumPy per channel"), " (scaled from {} channels per block)".format(
                args.uiq_channels) if name in scaled else "", reference_seconds[name], ours, speed_up, target,
            deviation))
    lines.append("| all {} together | the loops above, one after another | {:.3f} | {:.4f} | {:.1f}× |  |  |".format(
        len(names), sum(reference_seconds.values()), graph_seconds["all"] / args.images,
        sum(reference_seconds.values()) / (graph_seconds["all"] / args.images)))
    table = "\n".join(lines)
    print(table)
    print("targets met" if met else "TARGETS NOT MET")
    if args.markdown:
        append_markdown(args.markdown, "metrics", "bench_metrics.py", argv,
                        "all 50 ResNet-152 block outputs, {} images per in-graph run, best of {} after a warm-up "
                        "(the first run, compiling included, took {:.2f} s); references over all 47,872 channels of "
                        "one image".format(args.images, args.repeats, first_run),
                        table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
