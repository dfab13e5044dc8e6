"""Classify images with a zoo model: top-5 classes per image, optionally the raw logits.

    python repro/predict.py --model ResNeXtDenoiseAll --load X101-DenoiseAll.npz \
        --input PATH [PATH ...] --output predictions.csv [--save-logits logits.npy] [--batch N]

Images are read as BGR and naively resized to the model's input size with bicubic interpolation, as the
original ``--eval-directory`` did (SPEC §2); an image already of that size is used as is. An unreadable
image is reported and skipped: the CSV and the logits hold one row per classified image, in input order,
and the skipped ones are listed on stderr and in ``<output>.skipped.csv``.
"""
import argparse
import functools
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: the repository on the path, not repro/ itself (whose modules would shadow others by name).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import pandas as pd

from repro import cli, engines, zoo
from repro.fileio import atomic_write_all

log = logging.getLogger("repro.predict")
TOP_K = 5


def class_names(spec):
    if spec.arch.num_classes == 1000:
        from repro.classes import load_class_index
        return [name for _, name in load_class_index()]
    return [str(index) for index in range(spec.arch.num_classes)]


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def check_finite_logits(spec, logits, names):
    """Refuse non-finite logits (NaN, ±inf) in one line naming the images: a checkpoint whose weights are finite
    can still overflow (a damaged or mismatched one), and its classes and probabilities would mean nothing."""
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        bad = [str(name) for name, ok in zip(names, finite) if not ok]
        raise cli.RunFailed("{}: the checkpoint gives non-finite logits (NaN or inf) for {} of {} image(s) ({}{}): it "
                            "is damaged or does not fit the model; nothing was written".format(
                                spec.name, len(bad), len(finite), ", ".join(bad[:3]), ", …" if len(bad) > 3 else ""))
    return logits


def predict(spec, checkpoint, paths, batch_size=8, engine=engines.DEFAULT_ENGINE, device=None, deterministic=True):
    """Returns (table of top-5 predictions, logits N×classes, skipped [(path, reason)])."""
    from repro.data import iterate_batches, load_image_naive

    classifier = engines.classifier(engine, spec, checkpoint, device=device, deterministic=deterministic)
    names = class_names(spec)
    load = functools.partial(load_image_naive, size=spec.arch.input_size)
    rows, logits, skipped = [], [], []
    from tqdm import tqdm
    progress = tqdm(total=len(paths), unit="img", desc="predict {}".format(spec.name))
    try:
        for indices, images, bad in iterate_batches(paths, batch_size, load):
            skipped.extend((str(path), error.reason) for _, path, error in bad)
            if len(images):
                batch_logits = check_finite_logits(spec, classifier.predict_logits(images, batch_size),
                                                   [paths[index] for index in indices])
                logits.append(batch_logits)
                probabilities = softmax(batch_logits.astype(np.float64))
                for index, probs in zip(indices, probabilities):
                    row = {"path": str(paths[index])}
                    for rank, label in enumerate(np.argsort(-probs, kind="stable")[:TOP_K], start=1):
                        row["class_{}".format(rank)] = int(label)
                        row["name_{}".format(rank)] = names[label]
                        row["prob_{}".format(rank)] = float(probs[label])
                    rows.append(row)
            progress.update(len(indices) + len(bad))
    finally:
        progress.close()          # before any error line, which must start a line of its own
        classifier.close()
    all_logits = np.concatenate(logits) if logits else np.zeros((0, spec.arch.num_classes), np.float32)
    columns = ["path"] + ["{}_{}".format(kind, rank) for rank in range(1, TOP_K + 1) for kind in ("class", "name", "prob")]
    return pd.DataFrame(rows, columns=columns), all_logits.astype(np.float32), skipped


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zoo model name, e.g. ResNeXtDenoiseAll")
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--depth", type=int, help="override the ResNet depth (50, 101, 152)")
    parser.add_argument("--load", help="checkpoint .npz (default: the zoo's file under checkpoints/)")
    parser.add_argument("--input", nargs="+", required=True, help="image files or directories")
    parser.add_argument("--output", default="predictions.csv", help="CSV of top-5 predictions")
    parser.add_argument("--save-logits", help="also write the logits as float32 N×classes .npy")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    engines.add_arguments(parser, precision=False)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    spec = zoo.get_model(args.model, args.zoo, args.depth)
    path = cli.checkpoint_path(spec, args.load)
    if not path.is_file():
        raise cli.UsageError(cli.missing_checkpoint_message(spec, path))
    if args.batch < 1:
        raise cli.UsageError("--batch must be at least 1")
    engines.check_device(args.engine, args.device)
    output = Path(args.output)
    skipped_path = output.with_suffix(".skipped.csv")
    # Where the results go is checked before any work, and they are written all or none at the end.
    cli.check_writable_file(output, "--output")
    cli.check_writable_file(skipped_path, "--output")
    if args.save_logits:
        cli.check_writable_file(args.save_logits, "--save-logits")
    from repro.checkpoints import load_for
    from repro.data import list_image_files
    paths = list_image_files(args.input)
    if not paths:
        raise cli.UsageError("no image files found in {}".format(" ".join(args.input)))
    checkpoint = load_for(spec, path)
    table, logits, skipped = predict(spec, checkpoint, paths, args.batch, args.engine, args.device,
                                     not args.nondeterministic)
    writers = {output: lambda stream: stream.write(table.to_csv(index=False))}
    if args.save_logits:
        writers[Path(args.save_logits)] = lambda stream: np.save(stream, logits)
    if skipped:
        writers[skipped_path] = lambda stream: stream.write(
            pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(index=False))
    atomic_write_all(writers)
    log.info("classified %d image(s) → %s", len(table), output)
    if skipped:
        # Each was already logged as it was met; one summary line names where they are listed.
        print("skipped {} unreadable image(s) ({}{}), listed in {}".format(
            len(skipped), ", ".join(Path(p).name for p, _ in skipped[:3]), ", …" if len(skipped) > 3 else "",
            skipped_path), file=sys.stderr)
    return 0 if len(table) else 1


def console_main():
    """The ``repro-predict`` command."""
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    console_main()
