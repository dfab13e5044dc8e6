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
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: the repository on the path, not repro/ itself (whose modules would shadow others by name).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import pandas as pd

from repro import cli, engines, protocol, zoo
from repro.fileio import atomic_write_text

log = logging.getLogger("repro.validation")
ORDER_SEED = 0
ORDER_RULE = "first --limit images: ImageNet select_images(seed=0) / the miniature test split in order"
EPSILON = 16.0          # pixels: the published numbers' ε (SPEC §1)


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


def results_table(spec, iterations, records, attack="targeted"):
    """Rows for one model: top-1 (and at 0 steps top-5) error, and the attack's success (published numbers: the
    targeted attack's only)."""
    published = zoo.published_numbers(spec).get(iterations)
    n = len(records)
    rows = [rate_row(spec.name, spec, iterations, "top1_error", int((records.top1 != records.label).sum()), n,
                     published.top1_error if published else None)]
    if iterations == 0:
        rows.append(rate_row(spec.name, spec, 0, "top5_error", int((~records.top5_hit).sum()), n, None))
    else:
        succeeded = protocol.attack_succeeded(attack, records.top1, records.label, records.target)
        rows.append(rate_row(spec.name, spec, iterations, "attack_success", int(np.sum(succeeded)), n,
                             published.attack_success if published and attack == "targeted" else None))
    return rows


def validation_identity(spec, checkpoint_sha256, selection, iterations, seed, engine=engines.DEFAULT_ENGINE,
                        precision="float32", attack="targeted"):
    """Everything that determines a validation record besides the image: the model and its checkpoint, the
    data, the image order, the attack (ε = 16, α by the step-size rule, the seed of the draws) and the
    engine with the attack's precision."""
    from repro import protocol, runner
    attack = {"iterations": iterations, "epsilon": EPSILON, "seed": seed, "engine": engine, "precision": precision,
              "step_size": protocol.step_size_rule(EPSILON, iterations) if iterations else None,
              "kind": attack if iterations else None}
    return runner.json_form({"model": runner.model_identity(spec, checkpoint_sha256), "data": selection.source,
                             "order": ORDER_RULE, "order_seed": ORDER_SEED, "attack": attack})


class Progress:
    """Per-image records of one validation, in a folder keyed by its identity (`validation_identity`).

    Records are per image (id, path, label, prediction …): a changed ``--batch`` or ``--limit`` reuses
    exactly the images already done and counts each image once; another checkpoint, data folder or attack
    gets another folder. A folder whose recorded identity or images disagree with this run is refused.
    """

    COLUMNS = ["image", "path", "label", "top1", "top5_hit", "target"]

    def __init__(self, root, identity):
        from repro import runner
        model = identity["model"]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(root) / "work" / "{}-{}-k{}-{}".format(
            model["zoo"], model["name"], identity["attack"]["iterations"], digest)
        self.identity = identity
        path = self.directory / "identity.json"
        if path.exists():
            recorded = json.loads(path.read_text())
            changes = runner.identity_differences({"settings": recorded}, {"settings": identity})
            if changes:
                raise runner.RunConfigMismatch("{} holds a validation of something else ({}): use another --out".format(
                    self.directory, "; ".join(changes)))

    def done(self, selection):
        """Records of the images of ``selection`` already validated, one per image, in image order."""
        from repro import runner
        parts = []
        for path in sorted(self.directory.glob("batch-*.csv")):
            try:
                frame = pd.read_csv(path)
                if list(frame.columns) != self.COLUMNS:
                    raise ValueError("columns {}".format(list(frame.columns)))
            except (ValueError, OSError) as error:          # pandas' parser errors are ValueErrors
                log.warning("%s is damaged (%s); its images will be validated again", path, error)
                path.unlink()
                continue
            parts.append(frame)
        if not parts:
            return pd.DataFrame(columns=self.COLUMNS)
        records = pd.concat(parts, ignore_index=True).drop_duplicates("image").sort_values("image")
        records = records[records.image < len(selection)].reset_index(drop=True)
        for row in records.itertuples():
            if row.path != str(selection.paths[row.image]) or row.label != selection.labels[row.image]:
                raise runner.RunConfigMismatch(
                    "{} holds image {} as {} (label {}), this run selects {} (label {}): the data changed; use "
                    "another --out".format(self.directory, row.image, row.path, row.label,
                                           selection.paths[row.image], selection.labels[row.image]))
        return records

    def commit(self, frame):
        identity_path = self.directory / "identity.json"
        if not identity_path.exists():
            atomic_write_text(identity_path, json.dumps(self.identity, indent=1, sort_keys=True))
        name = "batch-{:07d}-{:07d}.csv".format(int(frame.image.min()), int(frame.image.max()))
        atomic_write_text(self.directory / name, frame[self.COLUMNS].to_csv(index=False))


def validate_model(spec, checkpoint, selection, iterations, batch, out, seed, engine=engines.DEFAULT_ENGINE,
                   precision="float32", device=None, deterministic=True, attack="targeted"):
    """Measure one model on ``selection``; returns one record per image (resuming from ``out``)."""
    from tqdm import tqdm

    from repro.data import iterate_batches
    from repro.robustness import RobustnessEvaluator

    progress = Progress(out, validation_identity(spec, checkpoint.sha256, selection, iterations, seed, engine,
                                                 precision, attack))
    records = progress.done(selection)
    missing = sorted(set(range(len(selection))) - set(records.image.astype(int)))
    if not missing:
        return records
    model = engines.classifier(engine, spec, checkpoint, device=device, deterministic=deterministic) \
        if iterations == 0 else RobustnessEvaluator(spec, checkpoint, engine=engine, precision=precision,
                                                    device=device, deterministic=deterministic, attack=attack)
    parts = [records] if len(records) else []
    paths, labels = selection.paths, selection.labels
    bar = tqdm(total=len(selection), initial=len(records), unit="img", desc="{} k={}".format(spec.name, iterations))
    errors = int((records.top1 != records.label).sum()) if len(records) else 0
    successes = int(np.sum(protocol.attack_succeeded(attack, records.top1, records.label, records.target))) \
        if len(records) else 0
    try:
        for start in range(0, len(missing), batch):
            ids = missing[start:start + batch]
            rows = []
            for indices, images, skipped in iterate_batches([paths[i] for i in ids], len(ids), selection.loader):
                for _, path, error in skipped:
                    raise cli.UsageError("cannot validate on an unreadable image ({}): {}".format(path, error.reason))
                chosen = [ids[i] for i in indices]
                if iterations == 0:
                    logits = model.predict_logits(images)
                    if not np.isfinite(logits).all():
                        raise cli.RunFailed("{}: non-finite logits on image(s) {}: the checkpoint does not work".format(
                            spec.name, [chosen[i] for i in np.flatnonzero(~np.isfinite(logits).all(1))][:5]))
                    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
                    top1, hit, target = top5[:, 0], (top5 == labels[chosen][:, None]).any(1), [-1] * len(chosen)
                else:
                    result = model.evaluate(images, labels[chosen], iterations, epsilon=EPSILON, seed=seed,
                                            batch=len(chosen), image_ids=chosen)
                    top1, hit = result["predictions"], [False] * len(chosen)
                    target = [-1] * len(chosen) if attack == "untargeted" else result["targets"]
                rows.append(pd.DataFrame({"image": chosen, "path": [str(paths[i]) for i in chosen],
                                          "label": labels[chosen], "top1": top1, "top5_hit": hit, "target": target}))
            frame = pd.concat(rows, ignore_index=True)
            progress.commit(frame)
            parts.append(frame)
            errors += int((frame.top1 != frame.label).sum())
            successes += int(np.sum(protocol.attack_succeeded(attack, frame.top1, frame.label, frame.target)))
            bar.update(len(ids))
            seen = bar.n
            bar.set_postfix_str("err {:.1f}%{}".format(100.0 * errors / seen, "" if iterations == 0 else
                                                      " succ {:.1f}%".format(100.0 * successes / seen)))
    finally:
        bar.close()
        if hasattr(model, "close"):
            model.close()
    return pd.concat(parts, ignore_index=True).sort_values("image").reset_index(drop=True)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", nargs="+", help="zoo model name(s), or library models (torchvision:NAME, timm:NAME, "
                                                  "robustbench:NAME; PyTorch engine) with --weights or --pretrained")
    which.add_argument("--all", action="store_true", help="every model of the zoo")
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--load", "--weights", nargs="+", dest="load",
                        help="checkpoint(s), one per model (default: the zoo's file); a library model's state dict")
    from repro.evaluate import external_arguments
    external_arguments(parser)
    parser.add_argument("--data", help="ImageNet validation folder (not used with --zoo mini)")
    parser.add_argument("--attack-iter", type=int, default=0, help="0 = clean error; k > 0 = k-step PGD, ε = 16")
    parser.add_argument("--attack", choices=protocol.ATTACKS, default="targeted",
                        help="the attack (the published numbers are the targeted attack's)")
    parser.add_argument("--limit", type=int, help="validate on the first N images of the fixed order (default: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's targets and random starts")
    parser.add_argument("--out", default="results/validate", help="tables (CSV, JSON) and resumable progress")
    engines.add_arguments(parser, engine_default=None)
    args = parser.parse_args(argv)
    from repro.evaluate import check_external_arguments
    args.model, args.tap = args.model or [], "block_output"
    check_external_arguments(parser, args)
    if args.attack_iter < 0 or args.batch < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--attack-iter must be ≥ 0, --batch and --limit ≥ 1")
    return args


def main(argv=None):
    """The command line: validate (`validation_table`), print the table; exit status 1 on any FAIL."""
    table = validation_table(argv)
    if table is None:                       # --list-taps
        return 0
    shown = table[["model", "attack_iter", "quantity", "n", "measured", "ci95_low", "ci95_high", "published", "verdict"]]
    print(shown.to_string(index=False, float_format=lambda v: "{:.2f}".format(v)))
    failed = (table.verdict == "FAIL").sum()
    print("{} check(s) FAILED".format(failed) if failed else "all checks passed (or n/a)")
    return 1 if failed else 0


def validation_table(argv=None):
    """Validate as the command line ``argv`` asks; returns the table (one row per model and quantity), also
    written to ``--out``."""
    from repro import checkpoints, external, runner

    args = parse_args(argv)
    cli.setup_logging()
    from repro.evaluate import model_specs, print_taps
    if args.list_taps:
        return print_taps(args)
    names = zoo.model_names(args.zoo) if args.all else args.model
    if args.load and len(args.load) != len(names):
        raise cli.UsageError("--load takes one checkpoint per model ({} for {})".format(len(args.load), len(names)))
    args.model, args.depth = names, None
    specs = model_specs(args)
    paths_ = [cli.checkpoint_path(spec, load) for spec, load in zip(specs, args.load or [None] * len(specs))]
    for spec, path in zip(specs, paths_):
        if not path.is_file() and not external.is_external_spec(spec):
            raise cli.UsageError(cli.missing_checkpoint_message(spec, path))
    if args.data is None and args.zoo != "mini":
        raise cli.UsageError("--data is required: the ImageNet validation folder (val/<wnid>/*.JPEG)")
    cli.check_writable_folder(args.out)
    engines.check_precision(args.engine, args.precision)
    engines.check_device(args.engine, args.device)
    loaded = [engines.load("torch").weights_for(spec) if external.is_external_spec(spec)
              else checkpoints.load_for(spec, path) for spec, path in zip(specs, paths_)]
    selection = runner.image_selection(specs[0], args.data, args.limit, ORDER_SEED)
    began = time.time()
    rows = []
    for spec, checkpoint in zip(specs, loaded):
        records = validate_model(spec, checkpoint, selection, args.attack_iter, args.batch, args.out, args.seed,
                                 args.engine, args.precision, args.device, not args.nondeterministic, args.attack)
        rows.extend(results_table(spec, args.attack_iter, records, args.attack))
    table = pd.DataFrame(rows)
    out = Path(args.out)
    stem = "validate-{}-k{}{}".format(args.zoo, args.attack_iter, "" if args.attack == "targeted" or not args.attack_iter
                                      else "-" + args.attack)
    atomic_write_text(out / (stem + ".csv"), table.to_csv(index=False))
    atomic_write_text(out / (stem + ".json"), json.dumps({
        "command": " ".join(sys.argv), "zoo": args.zoo, "attack_iter": args.attack_iter, "images": len(selection),
        "order": ORDER_RULE, "data": selection.source, "seed": args.seed, "epsilon": EPSILON, "rows": rows,
        "engine": engines.describe(args.engine, args.precision, args.device, not args.nondeterministic),
        "wall_seconds": round(time.time() - began, 1),
        "checkpoints": {s.name: {"path": str(p), "sha256": c.sha256} for s, p, c in zip(specs, paths_, loaded)},
        "packages": runner.package_versions(), "git": runner.git_state()},
        indent=1, default=float))
    return table


def console_main():
    """The ``repro-validate`` command."""
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    console_main()
