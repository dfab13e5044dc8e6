"""Time the in-graph metrics against a per-channel loop over skimage's SSIM, per ResNet-152 image.

ResNet-152's 50 residual blocks have four output shapes (SPEC §1, §5):
3 × (256, 56, 56), 8 × (512, 28, 28), 36 × (1024, 14, 14), 3 × (2048, 7, 7): 47,872 channel maps.
One block of each shape is timed (random post-ReLU-like maps held in graph variables, so neither
feeding nor constant folding is measured) and the time is multiplied by the number of blocks of
that shape: an extrapolation to the 50 blocks, not a measurement of them. skimage's
structural_similarity is timed on a subset of channels of each shape and extrapolated to all
channels the same way. Both run in this process, on the same data, one after the other; each
time is the best of --repeats runs after a warm-up, so load from other processes inflates both
sides as little as possible. TensorFlow uses all cores; skimage one.

Usage: .venv/bin/python scripts/bench_metrics.py [--images 2] [--skimage-channels 64] [--repeats 3]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from skimage.metrics import structural_similarity  # noqa: E402

from repro import metrics  # noqa: E402
from repro.tfcompat import tf  # noqa: E402

# (channels, side, number of blocks) of ResNet-152's block outputs.
RESNET152_BLOCK_SHAPES = ((256, 56, 3), (512, 28, 8), (1024, 14, 36), (2048, 7, 3))
DATA_RANGE = 2.0


def post_relu_maps(rng, shape):
    """Clean and perturbed float32 maps, ≥ 0 with many zeros, roughly 0 … 10."""
    pre_activation = rng.normal(0.0, 2.5, shape).astype(np.float32)
    clean = np.maximum(pre_activation, 0.0)
    perturbed = np.maximum(pre_activation + rng.normal(0.0, 0.8, shape).astype(np.float32), 0.0)
    return clean, perturbed


def best_time(run, repeats):
    """The fastest of `repeats` runs after one warm-up run (the others include interference)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def time_in_graph(clean, perturbed, repeats):
    """Seconds for SSIM alone and for all default metrics of one block, and the SSIM values."""
    graph = tf.Graph()
    with graph.as_default():
        clean_maps = tf.Variable(clean, trainable=False)
        perturbed_maps = tf.Variable(perturbed, trainable=False)
        ssim = metrics.ssim_per_channel(clean_maps, perturbed_maps, data_range=DATA_RANGE)
        all_default = metrics.metric_ops(clean_maps, perturbed_maps, metrics.DEFAULT_METRICS,
                                         data_range=DATA_RANGE)
        initialize = tf.global_variables_initializer()
    with tf.Session(graph=graph) as session:
        session.run(initialize)
        ssim_seconds = best_time(lambda: session.run(ssim), repeats)
        all_seconds = best_time(lambda: session.run(all_default), repeats)
        ssim_values = session.run(ssim)
    return ssim_seconds, all_seconds, ssim_values


def time_skimage(clean, perturbed, channels, repeats):
    """Seconds per channel of skimage's SSIM on the float32 maps, and its values (float32, float64)."""
    def loop():
        return [structural_similarity(clean[0, c], perturbed[0, c], data_range=DATA_RANGE) for c in range(channels)]

    seconds_per_channel = best_time(loop, repeats) / channels
    values32 = loop()
    values64 = [structural_similarity(clean[0, c].astype(np.float64), perturbed[0, c].astype(np.float64),
                                      data_range=DATA_RANGE) for c in range(channels)]
    return seconds_per_channel, np.array(values32), np.array(values64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="batch size N of the in-graph run")
    parser.add_argument("--skimage-channels", type=int, default=64, help="channels per shape for skimage")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    total = {"ssim": 0.0, "all": 0.0, "skimage": 0.0}
    deviation32 = deviation64 = 0.0
    print(f"N = {args.images} images per in-graph run, {os.cpu_count()} CPU cores, "
          f"skimage on {args.skimage_channels} channels per shape; seconds per image")
    print(f"{'block shape':>18} {'blocks':>6} {'SSIM graph':>11} {'all default':>12} {'skimage SSIM':>13}")
    for channels, side, blocks in RESNET152_BLOCK_SHAPES:
        clean, perturbed = post_relu_maps(rng, (args.images, channels, side, side))
        ssim_seconds, all_seconds, ssim_values = time_in_graph(clean, perturbed, args.repeats)
        subset = min(args.skimage_channels, channels)
        skimage_per_channel, skimage32, skimage64 = time_skimage(clean, perturbed, subset, args.repeats)
        deviation32 = max(deviation32, np.abs(ssim_values[0, :subset] - skimage32).max())
        deviation64 = max(deviation64, np.abs(ssim_values[0, :subset] - skimage64).max())
        per_image = {"ssim": ssim_seconds / args.images, "all": all_seconds / args.images,
                     "skimage": skimage_per_channel * channels}
        for key in total:
            total[key] += blocks * per_image[key]
        print(f"{str((channels, side, side)):>18} {blocks:>6} {blocks * per_image['ssim']:>11.3f} "
              f"{blocks * per_image['all']:>12.3f} {blocks * per_image['skimage']:>13.3f}")
    print(f"{'ResNet-152 (50)':>18} {'':>6} {total['ssim']:>11.3f} {total['all']:>12.3f} {total['skimage']:>13.3f}"
          "   (extrapolated from one block per shape)")
    print(f"skimage loop / in-graph SSIM: {total['skimage'] / total['ssim']:.1f}x;  "
          f"skimage loop / all {len(metrics.DEFAULT_METRICS)} default metrics: {total['skimage'] / total['all']:.1f}x")
    print(f"largest |in-graph SSIM - skimage SSIM|: {deviation64:.2e} (skimage on float64 copies), "
          f"{deviation32:.2e} (skimage on the float32 maps, computed in float32)")


if __name__ == "__main__":
    main()
