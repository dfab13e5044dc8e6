"""`make demo`: the whole study on the miniature zoo this repository ships, on a fresh machine.

Runs `repro/evaluate.py` on the three miniature models (ResNet, ResNetDenoise, ResNeXtDenoiseAll of the
`mini` zoo) with the paper's protocol — 100-step targeted PGD, ε = 16, uniform random noise of the same
ε, every default metric — on the paper's 100 images (held-out test images), and writes the tables and figures to
results/demo/. Beyond the paper it taps the denoising blocks too (``--tap both``: denoising.csv) and computes the
whole-map amplification and linear CKA (``--metrics extended``); the paired contrasts come with every run. ``--images`` and ``--attack-iter`` make it smaller (the tests run it that way). On a
2-core machine it runs as two single-threaded workers (``evaluate.py --workers 2``, two local Ray actors):
the attack's many small ops use two threads poorly, two single-threaded processes well.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro import cli, evaluate, zoo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100,
                        help="held-out test images (default: the paper's 100; about 3–4 minutes on 2 cores)")
    parser.add_argument("--attack-iter", type=int, default=100)
    parser.add_argument("--out", default="results/demo")
    parser.add_argument("--visualize", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="workers (evaluate.py --workers, Ray actors); default: 2 where there are 2 cores")
    args, extra = parser.parse_known_args(argv)
    models = [name for name in zoo.model_names("mini") if cli.checkpoint_path(zoo.get_model(name, "mini")).is_file()]
    missing = sorted(set(zoo.model_names("mini")) - set(models))
    if missing:
        print("note: the miniature zoo ships no checkpoint for {} yet (train it with python scripts/train_mini.py "
              "--model NAME); running the study on {}".format(", ".join(missing), ", ".join(models) or "nothing"),
              file=sys.stderr)
    if not models:
        return 1
    status = cli.run_main(evaluate.main, [
        "--zoo", "mini", "--model", *models, "--images", str(args.images), "--attack-iter", str(args.attack_iter),
        "--batch", str(min(50, -(-args.images // args.workers))),          # one batch per worker and model
        "--out", args.out, "--visualize", str(args.visualize), "--workers", str(args.workers),
        "--tap", "both", "--metrics", "extended", *extra])
    if status == 0:
        print("\nDone. The study on one page: {0}/report.html (open it in a browser). Tables: {0}/blocks.csv, "
              "{0}/summary.csv, {0}/images.csv, {0}/contrasts.csv, {0}/denoising.csv; figures: {0}/fig5_1_<model>.png, "
              "{0}/fig5_2.png, {0}/contrasts.png, {0}/denoising.png, {0}/whole_map.png; feature maps: "
              "{0}/feature_maps_<model>.png; provenance: {0}/manifest.json".format(args.out))
    return status


if __name__ == "__main__":
    sys.exit(main())
