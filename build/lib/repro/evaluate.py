"""The study: perturb each image (random noise and targeted PGD), tap every residual block, measure.

    python repro/evaluate.py --model ResNeXtDenoiseAll --data /path/to/ILSVRC2012 [--images 100] [--out DIR]

For every model, image and residual block, the clean image's feature maps are the reference and the
randomly perturbed and adversarial images' maps the reconstructions; each channel is one 2-D image and
each metric is averaged over channels, then images (Pineci et al. 2021, §5). Writes to ``--out``:
blocks.csv (model × perturbation × metric × block: mean, std, 95% CI, counts), images.csv (label,
target, predictions, attack success), summary.csv (accuracy and attack success with Wilson intervals),
manifest.json, Fig. 5.1 per model and Fig. 5.2 across models (PNG and PDF).
Every batch is committed atomically to ``--out``/work; re-running the same command resumes.
"""
import argparse
import collections
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # The repository instead of repro/ itself, whose torch/ would otherwise shadow PyTorch.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

from repro import cli, engines, protocol, zoo
from repro.fileio import atomic_write_text

log = logging.getLogger("repro.evaluate")
SELECTION_RULE = "select_images(seeded class round-robin)"


def metric_list(text):
    if text in ("default", None):
        return protocol.DEFAULT_METRICS
    if text == "paper":
        return protocol.PAPER_METRICS
    if text == "all":
        return protocol.METRIC_NAMES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in protocol.METRIC_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError("unknown metric(s) {}: choose from {} (or default, paper, all)".format(
            ", ".join(unknown) or repr(text), ", ".join(protocol.METRIC_NAMES)))
    return names


def data_range(text):
    if text == "reference":
        return text
    value = cli.finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive, or 'reference'")
    return value


def shard(text):
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes I/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError("--shard I/K needs 0 ≤ I < K")
    return index, count


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True,
                        help="zoo model name(s): ResNet (ResNet-152), ResNetDenoise (ResNet-152 + 4 Gaussian "
                             "non-local blocks), ResNeXtDenoiseAll (ResNeXt-101 32×8d, non-local after every block)")
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS), help="which model zoo")
    parser.add_argument("--depth", type=int, help="override the ResNet depth (50, 101, 152)")
    parser.add_argument("--load", nargs="+",
                        help="checkpoint(s), one per --model (default: the zoo's file under checkpoints/ or "
                             "$REPRO_CHECKPOINTS)")
    parser.add_argument("--data", help="ImageNet validation folder (val/<wnid>/*.JPEG, or the folder of wnid "
                                       "subfolders itself); labels are indices of the wnids in sorted order. "
                                       "Not used with --zoo mini, which studies its own held-out test split")
    parser.add_argument("--images", type=int, default=100,
                        help="number of validation images (the paper used 100), chosen by a seeded round-robin "
                             "over classes so they span many classes")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (one commit per batch)")
    parser.add_argument("--attack-iter", type=int, default=100, help="PGD steps (the paper: 100)")
    parser.add_argument("--attack-epsilon", type=cli.finite_float, default=16.0,
                        help="L∞ bound ε in pixels out of 255 (the paper: 16), for PGD and the random noise")
    parser.add_argument("--attack-step-size", type=cli.finite_float, default=1.0,
                        help="PGD step α in pixels; the rule α = max(step, ε/steps) of Xie et al. applies")
    parser.add_argument("--noise", choices=protocol.NOISES, default="uniform",
                        help="random perturbation: each pixel U(-ε, ε), or ±ε")
    parser.add_argument("--tap", choices=protocol.TAPS, default="block_output",
                        help="which tensor is a block's output: the residual block's ReLU, or (denoising "
                             "models) the output of the denoising block that follows it")
    parser.add_argument("--metrics", type=metric_list, default="default",
                        help="comma-separated metric names, or 'default' (the paper's frobenius, mse, sre, ssim "
                             "+ sre_eq, psnr, rmse, uiq, cosine, rel_l2), 'paper', 'all' (+ slow fsim, issm)")
    parser.add_argument("--ssim-data-range", type=data_range, default=2.0,
                        help="SSIM/PSNR data range: a number (2.0 = what the paper's skimage used for float "
                             "maps) or 'reference' (each clean map's max − min)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image selection, targets and noise")
    parser.add_argument("--out", default="results", help="output folder; re-running resumes in it")
    parser.add_argument("--save-adv", help="also write each adversarial image (float32 .npy, model space "
                                           "NCHW [-1, 1]) with its target, to this folder")
    parser.add_argument("--visualize", type=int, default=0, metavar="K",
                        help="save clean/random/adversarial feature maps of the K channels per block where "
                             "adversarial and random SSIM differ most, for a few blocks across depth")
    parser.add_argument("--shard", type=shard, help="I/K: compute only batches I, I+K, I+2K, … (other machines "
                                                    "do the rest into the same --out; tables merge them all)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the study as N local processes (shards I/N of the batches, each with "
                             "cores/N threads), then merge; on CPUs the attack's small ops scale poorly over "
                             "threads, so 2 processes on 2 cores finish sooner than 1 process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # a child of --workers
    parser.add_argument("--aggregate-only", action="store_true",
                        help="only (re)build the tables and figures from the batches already in --out")
    parser.add_argument("--no-check", action="store_true",
                        help="study a checkpoint even when its clean accuracy on the studied images is far "
                             "below the published one")
    parser.add_argument("--attack-chunk", type=int, default=10, help="PGD steps per session run (progress)")
    engines.add_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("images", "batch", "attack_chunk", "workers"):
        if getattr(args, name) < 1:
            parser.error("--{} must be at least 1".format(name.replace("_", "-")))
    if args.attack_iter < 0 or args.attack_epsilon < 0 or args.attack_step_size < 0:
        parser.error("--attack-iter, --attack-epsilon and --attack-step-size must not be negative")
    if args.workers > 1 and args.shard and not args.worker:
        parser.error("--workers splits the run into shards itself: do not combine it with --shard")
    if args.load and len(args.load) != len(args.model):
        parser.error("--load takes one checkpoint per --model ({} given for {} models)".format(
            len(args.load), len(args.model)))
    return args


def study_config(args):
    from repro.protocol import StudyConfig
    return StudyConfig(epsilon=args.attack_epsilon, attack_iterations=args.attack_iter,
                       attack_step_size=args.attack_step_size, noise=args.noise, tap=args.tap,
                       metrics=tuple(args.metrics), ssim_data_range=args.ssim_data_range, seed=args.seed,
                       attack_chunk=args.attack_chunk)


def run_model(spec, checkpoint_path, checkpoint_sha256, args, config, work, selection, timings):
    """All pending batches of one model (of this shard); returns its clean-accuracy check."""
    from tqdm import tqdm

    from repro import runner
    from repro.data import iterate_batches
    from repro.taps import block_table

    paths, labels = selection.paths, selection.labels
    batches = runner.batch_plan(len(selection), args.batch, args.shard)
    identity = batch_identity(work, spec, checkpoint_sha256, selection)
    done, pending = runner.resume_state(work, spec.name, batches, identity)
    began = time.perf_counter()
    graph = engines.study(args.engine, spec, checkpoint_path, config, args.precision, args.device)
    timings["graph_build_and_restore"] += time.perf_counter() - began
    if graph.checkpoint.sha256 != checkpoint_sha256:
        graph.close()
        raise cli.RunFailed("{} changed on disk after the run started (SHA-256 {} → {}): nothing was computed "
                            "from it; re-run the command".format(checkpoint_path, checkpoint_sha256[:12],
                                                                 graph.checkpoint.sha256[:12]))
    work.save_block_table(spec.name, block_table(spec.name, graph.taps))
    check = sanity_check(spec, graph, selection, args)
    device = engines.describe(args.engine, args.precision, args.device)["device"]
    log.info("%s: %d of %d batches already done, %d to run (%d PGD steps, α = %.2f px, ε = %g px)",
             spec.name, len(done), len(batches), len(pending), config.attack_iterations, config.step_size,
             config.epsilon)
    images_bar = tqdm(total=sum(last - first + 1 for first, last in batches),
                      initial=sum(last - first + 1 for first, last in done), unit="img", desc=spec.name,
                      position=0, disable=args.worker)
    steps_bar = tqdm(total=config.attack_iterations, unit="step", desc="  PGD", position=1, leave=False,
                     disable=args.worker)
    try:
        for first, last in pending:
            ids = list(range(first, last + 1))
            loaded = list(iterate_batches([paths[i] for i in ids], len(ids), selection.loader))
            indices, images, skipped = loaded[0] if loaded else ([], None, [])
            skipped = [(ids[i], path, error.reason) for i, path, error in skipped]
            image_ids = [ids[i] for i in indices]
            result = None
            feature_blocks = visualize_blocks(graph.taps) if args.visualize and first == 0 else ()
            if image_ids:
                steps_bar.reset()
                on_steps = steps_bar.update
                if args.worker:
                    on_steps = worker_progress(work.worker_file(args.shard, ".progress"), len(image_ids),
                                               config.attack_iterations)
                result = graph.run_batch(images, labels[image_ids], image_ids, on_steps=on_steps,
                                         feature_blocks=feature_blocks)
                broken = [image_id for image_id, finite in zip(image_ids, result.clean_finite) if not finite]
                if broken:
                    raise cli.RunFailed(
                        "{}: the clean forward pass gives non-finite logits or feature maps for image(s) {} "
                        "(e.g. {}): the checkpoint or the input is broken; batch {} was not committed".format(
                            spec.name, broken[:5], paths[broken[0]], work.batch_stem(first, last)))
                for key, seconds in result.timings.items():
                    timings[key] += seconds
                if args.save_adv:
                    save_adversarial(Path(args.save_adv) / spec.name, result, paths)
                if feature_blocks:
                    save_feature_panels(Path(args.out), spec.name, graph.taps, result, args.visualize, args.engine)
            records = runner.batch_records(spec.name, result, paths, skipped)
            info = {"images": len(image_ids), "skipped": len(skipped), "timings": result.timings if result else {},
                    "checkpoint": str(checkpoint_path), "shard": args.shard, "device": device}
            if args.worker:       # from now on the batch's images count as committed, not in progress
                atomic_write_text(work.worker_file(args.shard, ".progress"), "0")
            work.commit_batch(spec.name, first, last, records, runner.batch_statistics(spec.name, first, last, result),
                              info, identity(first, last))
            images_bar.update(len(ids))
    finally:
        steps_bar.close()
        images_bar.close()
        graph.close()
    return check


def batch_identity(work, spec, checkpoint_sha256, selection):
    """``(first, last) →`` the identity a batch of this run carries: the run's settings, the model and its
    checkpoint (None: not known to this run, e.g. ``--aggregate-only``), the batch's images (None: idem)."""
    from repro import runner
    model = runner.model_identity(spec, checkpoint_sha256)
    return lambda first, last: {"settings": work.config, "model": model,
                                "images": selection.identity(first, last) if selection else None}


def published_clean_accuracy(spec):
    """Published clean top-1 accuracy in percent (ImageNet: Xie et al.; mini: the model card), or None."""
    published = zoo.published_numbers(spec)
    return 100.0 - published[0].top1_error if 0 in published else None


def sanity_check(spec, graph, selection, args):
    """Clean accuracy on the studied images beside the published one; stop on a clearly broken checkpoint.

    "Clearly broken": non-finite logits (always fatal), or the 95% Wilson upper bound of the measured
    accuracy below half the published accuracy (e.g. near chance where 62% is published) — a wrong or
    damaged checkpoint, or wrong preprocessing, whose feature maps would mean nothing. ``--no-check``
    skips the accuracy stop, not the report.
    """
    from repro.aggregate import wilson_interval
    from repro.data import iterate_batches
    published = published_clean_accuracy(spec)
    correct = total = 0
    for indices, images, _ in iterate_batches(selection.paths, 32, selection.loader):
        if len(indices):
            logits = graph.clean_logits_of(images)
            finite = np.isfinite(logits).all(axis=1)
            if not finite.all():
                first = indices[int(np.argmin(finite))]
                raise cli.RunFailed("{}: the clean forward pass gives non-finite logits for {} of {} image(s) "
                                    "(e.g. {}): the checkpoint is damaged or does not fit the model".format(
                                        spec.name, int((~finite).sum()), len(indices), selection.paths[first]))
            correct += int((logits.argmax(axis=1) == selection.labels[indices]).sum())
            total += len(indices)
    low, high = wilson_interval(correct, total)
    result = {"images": total, "correct": correct, "accuracy": 100.0 * correct / total if total else None,
              "ci95": [100.0 * low, 100.0 * high], "published_accuracy": published}
    log.info("%s: clean top-1 accuracy on the %d studied images %.1f%% (95%% CI %.1f–%.1f)%s", spec.name, total,
             result["accuracy"] or 0.0, 100 * low, 100 * high,
             "; published {:.1f}% on the full set".format(published) if published is not None else "")
    if published is not None and total and 100.0 * high < published / 2:
        message = ("{}: clean accuracy {:.1f}% (95% CI up to {:.1f}%) on {} images, far below the published {:.1f}%: "
                   "the checkpoint or the data looks broken (wrong file, wrong --model, damaged weights, or labels "
                   "not in sorted-wnid order)".format(spec.name, result["accuracy"], 100 * high, total, published))
        if not args.no_check:
            raise cli.UsageError(message + "; pass --no-check to study it anyway")
        log.warning(message)
    return result


def visualize_blocks(taps, count=4):
    """A few blocks spread over depth: the first, the last, and evenly between."""
    positions = np.unique(np.linspace(0, len(taps) - 1, min(count, len(taps))).round().astype(int))
    return tuple(taps[i].block_index for i in positions)


def save_feature_panels(out, model, taps, result, k, engine=engines.DEFAULT_ENGINE):
    """Fig. 2.1-like panels for image 0: per chosen block, the k channels where adversarial and random
    SSIM differ most (SSIM is computed for the panels even when not among --metrics)."""
    from repro import plots
    panels = []
    by_index = {t.block_index: t for t in taps}
    for block_index, maps in sorted(result.feature_maps.items()):
        clean, random, adversarial = maps[:, :1]
        ssim_random = engines.per_channel(engine, "ssim", clean, random)[0]
        ssim_adversarial = engines.per_channel(engine, "ssim", clean, adversarial)[0]
        gap = np.nan_to_num(ssim_random - ssim_adversarial, nan=-np.inf)
        for channel in np.argsort(-gap, kind="stable")[:k]:
            panels.append({"label": "{} ch {}: SSIM adv {:.2f} vs rand {:.2f}".format(
                by_index[block_index].name.rsplit("/", 1)[0], channel, ssim_adversarial[channel], ssim_random[channel]),
                "clean": clean[0, channel], "random": random[0, channel], "adversarial": adversarial[0, channel]})
    plots.plot_feature_maps(panels, Path(out) / "feature_maps_{}".format(model),
                            title="{}: image {}".format(model, result.image_ids[0]))


def save_adversarial(directory, result, paths):
    directory.mkdir(parents=True, exist_ok=True)
    for position, image_id in enumerate(result.image_ids):
        np.save(directory / "{:06d}.npy".format(image_id), result.adversarial[position].astype(np.float32))
        (directory / "{:06d}.json".format(image_id)).write_text(json.dumps({
            "image": image_id, "path": str(paths[image_id]), "label": int(result.labels[position]),
            "target": int(result.targets[position]), "space": "NCHW, x*2/255-1 of BGR pixels"}))


def worker_progress(path, images, steps):
    """For a child of ``--workers``: a PGD-step callback that writes to ``path`` how many images' worth
    of the current batch's attack is done (``images`` × steps done / ``steps``) for the parent's bar."""
    done = [0]

    def on_steps(count):
        done[0] += count
        atomic_write_text(path, "{:.3f}".format(images * done[0] / max(1, steps)))
    return on_steps


def run_workers(argv, args, specs, work, images):
    """``--workers N``: the same command as N child processes on shards I/N, each with its share of the
    cores, a combined progress bar read from the committed batches, and each child's log in
    ``--out``/work/logs. Returns what the children measured (clean checks, timings).

    A failed child stops nothing already committed: its error is reported in one line with its log, and
    re-running the command resumes. Children run ``repro/evaluate.py`` with ``--shard I/N --worker``.
    """
    import os
    import subprocess

    from tqdm import tqdm

    from repro import runner

    count = args.workers
    threads = max(1, (os.cpu_count() or 1) // count)
    environment = dict(os.environ, REPRO_THREADS=str(threads))
    logs = work.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stale in (work.root / "workers").glob("*.progress"):
        stale.unlink()
    script = str(Path(__file__).resolve())
    children = []
    log.info("running %d worker processes with %d thread(s) each; their logs: %s", count, threads, logs)
    for index in range(count):
        log_path = logs / "worker-{}-of-{}.log".format(index, count)
        stream = open(log_path, "w")
        command = [sys.executable, script, *argv, "--shard", "{}/{}".format(index, count), "--worker"]
        children.append((subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=environment),
                         stream, log_path))
    plan = set(runner.batch_plan(images, args.batch))
    bar = tqdm(total=images * len(specs), unit="img", desc="{} models, {} workers".format(len(specs), count))

    shards = [(index, count) for index in range(count)]

    def images_done():
        """Committed images plus the attacked fraction of each worker's current batch."""
        done = float(sum(last - first + 1 for spec in specs for first, last in work.committed_batches(spec.name)
                         if (first, last) in plan))
        for shard in shards:
            try:
                done += float(work.worker_file(shard, ".progress").read_text() or 0)
            except (OSError, ValueError):
                pass
        return round(done, 1)

    def refresh():
        bar.n = max(bar.n, min(images_done(), bar.total))   # never backwards (a commit races a progress write)
        bar.refresh()
    try:
        while any(child.poll() is None for child, _, _ in children):
            refresh()
            time.sleep(1.0)
        refresh()
    except BaseException:
        for child, _, _ in children:
            child.terminate()
        raise
    finally:
        bar.close()
        for child, stream, _ in children:
            child.wait()
            stream.close()
    for index, (child, _, log_path) in enumerate(children):
        if child.returncode != 0:
            lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            raise cli.RunFailed("worker {}/{} failed (exit {}): {} — full log: {}; finished batches are kept, "
                               "re-run the same command to resume".format(
                                   index, count, child.returncode, lines[-1] if lines else "no output", log_path))
    reports = [json.loads(work.worker_file(shard, ".json").read_text()) for shard in shards]
    measured = {"checks": {}, "timings": {}}
    for report in reports:
        measured["checks"].update(report["checks"])
        for key, seconds in report["timings"].items():
            measured["timings"][key] = measured["timings"].get(key, 0.0) + seconds
    return measured


def main(argv=None):
    """The command line: run the study (`study`) and show its summary."""
    tables = study(argv)
    if tables is not None and len(tables.summary):
        log.info("\n%s", tables.summary[["model", "perturbation", "n_images", "top1_accuracy", "attack_success_rate"]]
                 .to_string(index=False))
    return 0


StudyTables = collections.namedtuple("StudyTables", "blocks images summary")


def study(argv=None):
    """Run the study as the command line ``argv`` asks; returns its tables (`StudyTables`: blocks, images,
    summary as DataFrames, also written to ``--out``), or None in a ``--workers`` child."""
    from collections import defaultdict

    from repro import checkpoints, runner

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cli.setup_logging()
    started = time.time()
    if args.attack_epsilon > protocol.LARGEST_SENSIBLE_EPSILON:
        log.warning("--attack-epsilon %g is above 255: ε is in pixel units out of 255 (the paper's 16 means "
                    "16/255), so every image's ε-ball holds every other image", args.attack_epsilon)
    specs = [zoo.get_model(name, args.zoo, args.depth) for name in args.model]
    checkpoint_paths = [cli.checkpoint_path(spec, load) for spec, load in
                        zip(specs, args.load or [None] * len(specs))]
    config = study_config(args)
    engines.check_precision(args.engine, args.precision)
    cli.check_writable_folder(args.out)
    hashes, selection = {}, None
    if not args.aggregate_only:
        # Every input is checked before the folder is claimed: a failed start leaves --out as it was.
        for spec, path in zip(specs, checkpoint_paths):
            if not path.is_file():
                raise cli.UsageError(cli.missing_checkpoint_message(spec, path))
            hashes[spec.name] = checkpoints.load_for(spec, path).sha256
        if args.data is None and specs[0].zoo != "mini":
            raise cli.UsageError("--data is required: the ImageNet validation folder (val/<wnid>/*.JPEG)")
        selection = runner.image_selection(specs[0], args.data, args.images, args.seed)
        log.info("studying %d images with %s", len(selection), ", ".join(s.name for s in specs))
    work = runner.WorkDirectory(args.out, runner.result_config(config, SELECTION_RULE, args.batch,
                                                               selection.source if selection else None,
                                                               args.engine, args.precision))
    if args.aggregate_only:
        work.config["data"] = stored_data_source(work, specs, args)
    work.check_settings()
    # Refuse batches computed differently before any work or claim (each model's own run checks again).
    count = len(selection) if selection else args.images
    for spec in specs:
        runner.resume_state(work, spec.name, runner.batch_plan(count, args.batch, args.shard),
                            batch_identity(work, spec, hashes.get(spec.name), selection),
                            recompute_damaged=not args.aggregate_only)
    if not args.aggregate_only:
        work.claim()
    timings = defaultdict(float)
    checks = {}
    if not args.aggregate_only:
        if args.workers > 1 and not args.worker:
            measured = run_workers(argv, args, specs, work, count)
            checks = measured["checks"]
            timings.update(measured["timings"])
        else:
            for spec, path in zip(specs, checkpoint_paths):
                checks[spec.name] = run_model(spec, path, hashes[spec.name], args, config, work, selection, timings)
    if args.worker:
        # A child of --workers: report to the parent, which writes the tables once all shards are done.
        atomic_write_text(work.worker_file(args.shard, ".json"), json.dumps(
            {"checks": checks, "timings": dict(timings)}, indent=1))
        return None
    tabled = tabled_batches(work, specs, args, count, hashes, selection)
    began = time.perf_counter()
    blocks, images, summary = runner.write_tables(work, {name: list(done) for name, done in tabled.items()}, args.out)
    figures = runner.write_figures(blocks, [s.name for s in specs], args.out, config.metrics)
    timings["aggregation_and_figures"] += time.perf_counter() - began
    studied = int((images["error"].isna() | (images["error"] == "")).sum()) if len(images) else 0
    runner.write_manifest(args.out, {
        "command": " ".join(sys.argv), "config": work.config, "models": {
            spec.name: dict(models_in_tables(spec, tabled[spec.name]), clean_check=checks.get(spec.name))
            for spec in specs},
        "images_selected": count, "images_studied_total": studied, "data": args.data,
        "batches": {name: {"planned": len(runner.batch_plan(count, args.batch)), "in_tables": len(done)}
                    for name, done in tabled.items()},
        "engine": engines.describe(args.engine, args.precision, args.device),
        "shard": args.shard, "workers": args.workers, "aggregate_only": args.aggregate_only,
        "packages": runner.package_versions(), "git": runner.git_state(),
        "machine": runner.machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 2), "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "figures": [str(f) for f in figures]})
    log.info("wrote %s (blocks.csv, images.csv, summary.csv, manifest.json, %d figure files)", args.out, len(figures))
    return StudyTables(blocks, images, summary)


def stored_data_source(work, specs, args):
    """``--aggregate-only`` reads no images: the data's identity is the one the run recorded (the
    miniature zoo's is recomputed and compared; ImageNet's folder is compared when ``--data`` is given)."""
    from repro import runner
    path = work.root / "config.json"
    recorded = json.loads(path.read_text()).get("data") if path.exists() else None
    if specs[0].zoo == "mini" or args.data:
        current = runner.image_selection(specs[0], args.data, 1, args.seed).source
        if recorded is not None and {k: v for k, v in recorded.items() if k != "images_in_folder"} != \
                {k: v for k, v in current.items() if k != "images_in_folder"}:
            raise runner.RunConfigMismatch("{} holds results computed on other data ({} → {}); use the --data of "
                                           "the run".format(work.root, recorded, current))
    return recorded


def tabled_batches(work, specs, args, count, hashes, selection):
    """{model: {batch: receipt}}: the batches the tables are made of — this run's selection (all shards).

    After a whole run (or its workers) every batch must be there. ``--aggregate-only`` refuses missing
    or damaged batches, naming them. A ``--shard`` run tables what is committed so far (other shards may
    still be running) and says how much that is; the manifest records it."""
    from repro import runner
    plan = runner.batch_plan(count, args.batch)
    tabled = {}
    for spec in specs:
        identity = batch_identity(work, spec, hashes.get(spec.name), selection)
        done, missing = runner.resume_state(work, spec.name, plan, identity, recompute_damaged=False) \
            if args.aggregate_only or not args.shard else _shard_view(work, spec, plan, identity)
        runner.check_uniform(done, "{}/{}".format(work.root, spec.name))
        if missing and not args.shard:
            raise cli.RunFailed(
                "{}: {} of {} batches of the selection ({} images, --batch {}) are not computed (first: {}); run the "
                "study{} before aggregating, or pass the --images of the run".format(
                    spec.name, len(missing), len(plan), count, args.batch,
                    work.batch_files(spec.name, *missing[0])[2].with_suffix(""), " (all its shards)" if args.aggregate_only else ""))
        if missing:
            log.info("%s: the tables hold %d of %d batches so far (the other shards write the rest)", spec.name,
                     len(done), len(plan))
        tabled[spec.name] = done
    return tabled


def _shard_view(work, spec, plan, identity):
    """Batches of all shards that are committed and verify; another shard's damaged batch is left out
    with a warning (that shard recomputes it when it runs again)."""
    from repro import runner
    done, missing = {}, []
    for bounds in plan:
        try:
            receipt = work.check_batch(spec.name, *bounds, identity(*bounds))
        except runner.DamagedBatch as error:
            log.warning("%s; left out of the tables until its shard recomputes it", error)
            receipt = None
        if receipt is None:
            missing.append(bounds)
        else:
            done[bounds] = receipt
    return done, missing


def models_in_tables(spec, receipts):
    """The manifest's record of a model: taken from the receipts of the batches in the tables, so that it
    names the checkpoint(s) the numbers were computed from, whichever run computed them."""
    hashes = sorted({r["identity"]["model"]["checkpoint_sha256"] for r in receipts.values()})
    paths = sorted({r.get("checkpoint") for r in receipts.values() if r.get("checkpoint")})
    return {"zoo": spec.zoo, "depth": spec.depth, "checkpoint": paths[0] if len(paths) == 1 else paths,
            "sha256": hashes[0] if len(hashes) == 1 else hashes}


def console_main():
    """The ``repro-evaluate`` command."""
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    console_main()
