#!/usr/bin/env python
"""Write a synthetic checkpoint (random weights, calibrated BatchNorm statistics, the released checkpoints'
names and shapes) for a zoo model: for dry runs, tests and benchmarks where the real files are not at hand.

    python scripts/synthetic_checkpoint.py --model ResNet --out checkpoints/synthetic/R152.npz [--engine torch]

``--engine torch`` needs only PyTorch (no TensorFlow): it runs where only PyTorch is installed.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro import cli, engines, zoo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--depth", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--engine", choices=engines.ENGINES, default=engines.DEFAULT_ENGINE,
                        help="which engine calibrates the BatchNorm statistics")
    args = parser.parse_args(argv)
    cli.setup_logging()
    spec = zoo.get_model(args.model, args.zoo, args.depth)
    cli.check_writable_file(args.out, "--out")
    if args.engine == "torch":
        from repro.engines.torch.synthetic import write_synthetic_checkpoint
    else:
        from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
    path = write_synthetic_checkpoint(spec, args.out, seed=args.seed)
    from repro.checkpoints import sha256_of
    print("{}  {}".format(sha256_of(path), path))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
