"""Validate checkpoints against the published numbers: clean error, and error and targeted success under PGD.

    python repro/validate.py --model ResNet --data /path/to/ILSVRC2012 [--attack-iter 0|10|100|1000] [--limit N]
    python repro/validate.py --zoo mini --all --attack-iter 10

The images are the first ``--limit`` of a fixed order (all by default): ImageNet validation images in
the seeded class round-robin order of `repro.data.select_images` (seed 0; any prefix spans many classes),
or the miniature zoo's class-interleaved test split. The attack is the study's (`repro.robustness`, SPEC
§3). Each measured rate gets a 95% Wilson interval; the verdict is PASS when the published value lies
in that interval widened by the published ±0.3 fluctuation, FAIL otherwise (exit status 1 on any FAIL).
Per-image results are committed per batch under ``--out``; re-running the same command continues.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from repro import cli, zoo
from repro.fileio import atomic_write_text

log = logging.getLogger("repro.validate")
ORDER_SEED = 0


def verdict(measured_low, measured_high, published, tolerance):
    """PASS when ``published`` ∈ [low − tolerance, high + tolerance] (all in percent)."""
    if published is None or published != published:
        return "n/a"
    slack = tolerance + 1e-9          # a published value exactly on the widened bound passes
    return "PASS" if measured_low - slack <= published <= measured_high + slack else "FAIL"


def rate_row(model, spec, iterations, quantity, count, n, published):
    from repro.aggregate import wilson_interval
    low, high = wilson_interval(count, n)
    tolerance = spec.published_fluctuation
    return {"model": model, "zoo": spec.zoo, "attack_iter": iterations, "quantity": quantity, "n": n,
            "count": count, "measured": 100.0 * count / n if n else float("nan"), "ci95_low": 100.0 * low,
            "ci95_high": 100.0 * high, "published": published, "tolerance": tolerance,
            "verdict": verdict(100.0 * low, 100.0 * high, published, tolerance)}


def results_table(spec, iterations, records):
    """Rows for one model: top-1 (and at 0 steps top-5) error, and targeted success under attack."""
    published = zoo.published_numbers(spec).get(iterations)
    n = len(records)
    rows = [rate_row(spec.name, spec, iterations, "top1_error", int((records.top1 != records.label).sum()), n,
                     published.top1_error if published else None)]
    if iterations == 0:
        rows.append(rate_row(spec.name, spec, 0, "top5_error", int((~records.top5_hit).sum()), n, None))
    else:
        rows.append(rate_row(spec.name, spec, iterations, "attack_success",
                             int((records.top1 == records.target).sum()), n,
                             published.attack_success if published else None))
    return rows


class Progress:
    """Per-image records of one (model, iterations, order) validation, committed per batch."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def done(self):
        files = sorted(self.directory.glob("batch-*.csv"))
        return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame(
            columns=["image", "path", "label", "top1", "top5_hit", "target"])

    def commit(self, first, frame):
        atomic_write_text(self.directory / "batch-{:07d}.csv".format(first), frame.to_csv(index=False))


def validate_model(spec, checkpoint, paths, labels, loader, iterations, batch, out, seed):
    """Measure one model; returns the per-image records (resuming from ``out``)."""
    from tqdm import tqdm

    from repro.classifier import Classifier
    from repro.data import iterate_batches
    from repro.robustness import RobustnessEvaluator

    progress = Progress(Path(out) / "work" / "{}-{}-k{}-seed{}".format(spec.zoo, spec.name, iterations, seed))
    records = progress.done()
    done = set(records.image.astype(int)) if len(records) else set()
    pending = [first for first in range(0, len(paths), batch)
               if not set(range(first, min(first + batch, len(paths)))) <= done]
    if not pending:
        return records
    model = Classifier(spec, checkpoint) if iterations == 0 else RobustnessEvaluator(spec, checkpoint)
    parts = [records] if len(records) else []
    bar = tqdm(total=len(paths), initial=len(done), unit="img", desc="{} k={}".format(spec.name, iterations))
    errors = int((records.top1 != records.label).sum()) if len(records) else 0
    successes = int((records.top1 == records.target).sum()) if len(records) else 0
    try:
        for first in pending:
            ids = list(range(first, min(first + batch, len(paths))))
            rows = []
            for indices, images, skipped in iterate_batches([paths[i] for i in ids], len(ids), loader):
                for _, path, error in skipped:
                    raise cli.UsageError("cannot validate on an unreadable image ({}): {}".format(path, error.reason))
                chosen = [ids[i] for i in indices]
                if iterations == 0:
                    logits = model.predict_logits(images)
                    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
                    top1, hit, target = top5[:, 0], (top5 == labels[chosen][:, None]).any(1), [-1] * len(chosen)
                else:
                    result = model.evaluate(images, labels[chosen], iterations, seed=seed, batch=len(chosen),
                                            image_ids=chosen)
                    top1, hit, target = result["predictions"], [False] * len(chosen), result["targets"]
                rows.append(pd.DataFrame({"image": chosen, "path": [str(paths[i]) for i in chosen],
                                          "label": labels[chosen], "top1": top1, "top5_hit": hit, "target": target}))
            frame = pd.concat(rows, ignore_index=True)
            progress.commit(first, frame)
            parts.append(frame)
            errors += int((frame.top1 != frame.label).sum())
            successes += int((frame.top1 == frame.target).sum())
            bar.update(len(ids))
            seen = bar.n
            bar.set_postfix_str("err {:.1f}%{}".format(100.0 * errors / seen, "" if iterations == 0 else
                                                      " succ {:.1f}%".format(100.0 * successes / seen)))
    finally:
        bar.close()
        if hasattr(model, "close"):
            model.close()
    return pd.concat(parts, ignore_index=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", nargs="+", help="zoo model name(s)")
    which.add_argument("--all", action="store_true", help="every model of the zoo")
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--load", nargs="+", help="checkpoint(s), one per model (default: the zoo's file)")
    parser.add_argument("--data", help="ImageNet validation folder (not used with --zoo mini)")
    parser.add_argument("--attack-iter", type=int, default=0, help="0 = clean error; k > 0 = k-step targeted PGD, ε = 16")
    parser.add_argument("--limit", type=int, help="validate on the first N images of the fixed order (default: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's targets and random starts")
    parser.add_argument("--out", default="results/validate", help="tables (CSV, JSON) and resumable progress")
    args = parser.parse_args(argv)
    if args.attack_iter < 0 or args.batch < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--attack-iter must be ≥ 0, --batch and --limit ≥ 1")
    return args


def main(argv=None):
    from repro import runner

    args = parse_args(argv)
    cli.setup_logging()
    names = zoo.model_names(args.zoo) if args.all else args.model
    if args.load and len(args.load) != len(names):
        raise cli.UsageError("--load takes one checkpoint per model ({} for {})".format(len(args.load), len(names)))
    specs = [zoo.get_model(name, args.zoo) for name in names]
    paths_ = [cli.checkpoint_path(spec, load) for spec, load in zip(specs, args.load or [None] * len(specs))]
    for spec, path in zip(specs, paths_):
        if not path.is_file():
            raise cli.UsageError(cli.missing_checkpoint_message(spec, path))
    if args.data is None and args.zoo != "mini":
        raise cli.UsageError("--data is required: the ImageNet validation folder (val/<wnid>/*.JPEG)")
    paths, labels, loader = runner.image_selection(specs[0], args.data, args.limit, ORDER_SEED)
    began = time.time()
    rows = []
    for spec, checkpoint in zip(specs, paths_):
        records = validate_model(spec, checkpoint, paths, labels, loader, args.attack_iter, args.batch, args.out,
                                 args.seed)
        rows.extend(results_table(spec, args.attack_iter, records))
    table = pd.DataFrame(rows)
    out = Path(args.out)
    stem = "validate-{}-k{}".format(args.zoo, args.attack_iter)
    atomic_write_text(out / (stem + ".csv"), table.to_csv(index=False))
    atomic_write_text(out / (stem + ".json"), json.dumps({
        "command": " ".join(sys.argv), "zoo": args.zoo, "attack_iter": args.attack_iter, "images": len(paths),
        "order": "mini test split" if args.zoo == "mini" else "select_images(seed={})".format(ORDER_SEED),
        "seed": args.seed, "rows": rows, "wall_seconds": round(time.time() - began, 1),
        "checkpoints": {s.name: str(p) for s, p in zip(specs, paths_)}, "packages": runner.package_versions()},
        indent=1, default=float))
    shown = table[["model", "attack_iter", "quantity", "n", "measured", "ci95_low", "ci95_high", "published", "verdict"]]
    print(shown.to_string(index=False, float_format=lambda v: "{:.2f}".format(v)))
    failed = (table.verdict == "FAIL").sum()
    print("{} check(s) FAILED".format(failed) if failed else "all checks passed (or n/a)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
