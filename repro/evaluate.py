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
import itertools
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: the repository on the path, not repro/ itself (whose modules would shadow others by name).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from repro import cli, engines, protocol, zoo
from repro.fileio import atomic_write_text

log = logging.getLogger("repro.evaluate")
SELECTION_RULE = "select_images(seeded class round-robin)"
MAX_VISUALIZE = 32
"""At most this many channels per block in the feature-map figure: 4 blocks × 32 channels × 3 maps is already a
tall figure, and thousands (K above a block's channels) took gigabytes before any batch was committed."""
VISUALIZED_BLOCKS = range(4)       # `repro.scheduler.visualize_blocks`: the first, the last and two between


def metric_list(text):
    if text in ("default", None):
        return protocol.DEFAULT_METRICS
    if text == "paper":
        return protocol.PAPER_METRICS
    if text == "extended":
        return protocol.EXTENDED_METRICS
    if text == "all":
        return protocol.METRIC_NAMES
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in protocol.METRIC_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError("unknown metric(s) {}: choose from {} (or default, paper, extended, all)".format(
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
    if text == "slurm":
        return slurm_shard(os.environ)
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes I/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError("--shard I/K needs 0 ≤ I < K")
    return index, count


def slurm_shard(environment):
    """(I, K) of a SLURM array task: I = SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN, K = SLURM_ARRAY_TASK_COUNT."""
    try:
        task, count = int(environment["SLURM_ARRAY_TASK_ID"]), int(environment["SLURM_ARRAY_TASK_COUNT"])
        first = int(environment.get("SLURM_ARRAY_TASK_MIN", 0))
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError("--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT: run it "
                                         "in a SLURM array job (scripts/slurm/evaluate.sbatch)") from None
    if not 0 <= task - first < count:
        raise argparse.ArgumentTypeError("--shard slurm: task {} is not in an array of {} from {}".format(
            task, count, first))
    return task - first, count


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True,
                        help="zoo model name(s): ResNet (ResNet-152), ResNetDenoise (ResNet-152 + 4 Gaussian "
                             "non-local blocks), ResNeXtDenoiseAll (ResNeXt-101 32×8d, non-local after every block); "
                             "or a library's model (PyTorch engine): torchvision:NAME, timm:NAME, robustbench:NAME, "
                             "with --weights or --pretrained")
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS), help="which model zoo")
    parser.add_argument("--depth", type=int, help="override the ResNet depth (50, 101, 152)")
    parser.add_argument("--load", "--weights", nargs="+", dest="load",
                        help="checkpoint(s), one per --model (default: the zoo's file under checkpoints/ or "
                             "$REPRO_CHECKPOINTS); for a library model its state dict (.pt, .pth, .safetensors, "
                             "read without running pickled code)")
    external_arguments(parser)
    parser.add_argument("--data", help="ImageNet validation folder (val/<wnid>/*.JPEG, or the folder of wnid "
                                       "subfolders itself); labels are indices of the wnids in sorted order. "
                                       "Not used with --zoo mini, which studies its own held-out test split")
    parser.add_argument("--images", type=int, default=100,
                        help="number of validation images (the paper used 100), chosen by a seeded round-robin "
                             "over classes so they span many classes")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (one commit per batch)")
    parser.add_argument("--attack-iter", type=int, nargs="+", default=100,
                        help="PGD steps (the paper: 100); several values sweep (see --attack)")
    parser.add_argument("--attack-epsilon", type=cli.finite_float, nargs="+", default=16.0,
                        help="L∞ bound ε in pixels out of 255 (the paper: 16), for PGD and the random noise; several "
                             "values sweep (see --attack)")
    parser.add_argument("--attack-step-size", type=cli.finite_float, default=1.0,
                        help="PGD step α in pixels; the rule α = max(step, ε/steps) of Xie et al. applies")
    parser.add_argument("--noise", choices=protocol.NOISES, default="uniform",
                        help="random perturbation: each pixel U(-ε, ε), or ±ε")
    parser.add_argument("--attack", choices=protocol.ATTACKS, nargs="+", default="targeted",
                        help="the attack, in the same ε-ball with the same step rule and draws: targeted (the paper's: "
                             "a random other class), untargeted (away from the true label), cw (targeted, the "
                             "Carlini–Wagner margin on the logits). Several values of --attack, --attack-epsilon, "
                             "--attack-iter sweep: every combination is its own run in --out/eps<ε>-k<steps>-<attack>/ "
                             "(resumable on its own), sweep.csv combines their blocks.csv with the setting as "
                             "columns, sweep.png draws metric × setting")
    parser.add_argument("--tap", choices=protocol.TAPS, default="block_output",
                        help="which tensor is a block's output: the residual block's ReLU, or (denoising "
                             "models) the output of the denoising block that follows it, or both in one run "
                             "(block_index then numbers the taps; denoising.csv: the change across each denoising "
                             "operation)")
    parser.add_argument("--metrics", type=metric_list, default="default",
                        help="comma-separated metric names, or 'default' (the paper's frobenius, mse, sre, ssim "
                             "+ sre_eq, psnr, rmse, uiq, cosine, rel_l2), 'paper', 'extended' (default + the whole-map "
                             "amplification and linear CKA), 'all' (+ slow fsim, issm)")
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
                                                    "do the rest into the same --out; tables merge them all); "
                                                    "'slurm': I and K from the SLURM array job's environment")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="compute on N Ray actors (a local Ray instance unless --ray names a cluster), each "
                             "with one GPU where there are GPUs, else cores/N threads; this process commits "
                             "every batch. Default: 1 (in this process); with --ray, one per GPU of the cluster")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="compute on Ray: no ADDRESS starts a local instance, 'auto' or 'ray://host:port' "
                             "joins a cluster (its nodes need the data and the package, not --out)")
    parser.add_argument("--aggregate-only", action="store_true",
                        help="only (re)build the tables and figures from the batches already in --out")
    parser.add_argument("--no-check", action="store_true",
                        help="study a checkpoint even when its clean accuracy on the studied images is far "
                             "below the published one")
    parser.add_argument("--attack-chunk", type=int, default=10, help="PGD steps per session run (progress)")
    engines.add_arguments(parser, engine_default=None)
    args = parser.parse_args(argv)
    check_external_arguments(parser, args)
    swept = {}
    for name, _ in SWEPT:
        values = getattr(args, name)
        swept[name] = values if isinstance(values, list) else [values]
        if len(set(swept[name])) < len(swept[name]):
            parser.error("--{} lists a value twice: {}".format(name.replace("_", "-"), " ".join(map(str, swept[name]))))
    if any(value < 0 for name in ("attack_iter", "attack_epsilon") for value in swept[name]):
        parser.error("--attack-iter, --attack-epsilon and --attack-step-size must not be negative")
    args.sweep = list(itertools.product(*(swept[name] for name, _ in SWEPT)))
    args.attack_epsilon, args.attack_iter, args.attack = args.sweep[0]
    if len(args.sweep) == 1:
        args.sweep = None
    for name in ("images", "batch", "attack_chunk", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error("--{} must be at least 1".format(name.replace("_", "-")))
    if args.attack_iter < 0 or args.attack_epsilon < 0 or args.attack_step_size < 0:
        parser.error("--attack-iter, --attack-epsilon and --attack-step-size must not be negative")
    if args.shard and (args.workers or args.ray):
        parser.error("--shard is a fixed partition over machines, --workers/--ray schedule batches themselves: "
                     "choose one")
    if args.load and len(args.load) != len(args.model):
        parser.error("--load takes one checkpoint per --model ({} given for {} models)".format(
            len(args.load), len(args.model)))
    if not 0 <= args.visualize <= MAX_VISUALIZE:
        parser.error("--visualize takes 0 to {} channels per block (the panels of {} blocks × K channels make one "
                     "figure), got {}".format(MAX_VISUALIZE, len(VISUALIZED_BLOCKS), args.visualize))
    return args


SWEPT = (("attack_epsilon", "epsilon"), ("attack_iter", "attack_iter"), ("attack", "attack"))
"""The options a sweep may vary (argparse's name, the column of sweep.csv), in the order of a setting."""
SWEEP_FILES = ("sweep.csv", "sweep_summary.csv")


def external_arguments(parser):
    """The options of library models (`repro.external`): weights, taps, input convention; shared with validate."""
    parser.add_argument("--pretrained", action="store_true",
                        help="library models: the library's own pretrained weights (downloaded by it on first use)")
    parser.add_argument("--taps", nargs="+", default=["auto"], metavar="NAME",
                        help="library models: the modules whose outputs are tapped — 'auto' (the residual or "
                             "transformer blocks of torchvision/timm ResNets, ConvNeXts, ViTs, Swins) or module names "
                             "and fnmatch patterns (layer*.?)")
    parser.add_argument("--list-taps", action="store_true",
                        help="print each library model's modules with a feature-map output (what --taps can name) "
                             "and exit")
    parser.add_argument("--input-size", type=int, help="library models: input size (default: the library's)")
    parser.add_argument("--mean", type=cli.finite_float, nargs=3, metavar=("R", "G", "B"),
                        help="library models: per-channel mean of the 0–1 RGB input (default: the library's)")
    parser.add_argument("--std", type=cli.finite_float, nargs=3, metavar=("R", "G", "B"),
                        help="library models: per-channel std of the 0–1 RGB input (default: the library's)")


def check_external_arguments(parser, args):
    """The engine follows the models (a library model needs PyTorch), and the library models' options need one."""
    from repro import external
    named = [name for name in args.model if external.is_external(name)]
    if args.engine is None:
        args.engine = "torch" if named else engines.DEFAULT_ENGINE
    if named and args.engine != "torch":
        parser.error("{} is a PyTorch model: it runs with --engine torch (the TensorFlow engine computes the zoo's "
                     "models)".format(named[0]))
    used = [option for option, value in (("--pretrained", args.pretrained), ("--taps", args.taps != ["auto"]),
                                         ("--list-taps", args.list_taps), ("--input-size", args.input_size),
                                         ("--mean", args.mean), ("--std", args.std)) if value]
    if used and not named:
        parser.error("{} applies to library models (torchvision:NAME, timm:NAME, robustbench:NAME) only".format(used[0]))
    if args.pretrained and args.load:
        parser.error("give --weights (one per --model) or --pretrained, not both")
    objects = [name for name in named if name.startswith("module:")]
    if objects and (getattr(args, "workers", None) or getattr(args, "ray", None)):
        parser.error("{} is a model object of this process: it runs without --workers and --ray".format(objects[0]))
    if named and args.tap != "block_output":
        parser.error("--tap {} needs denoising blocks, which {} does not have: library models are tapped at the "
                     "modules --taps names".format(args.tap, named[0]))


def model_specs(args):
    """The zoo record of each --model: a `repro.zoo.ModelSpec`, or for a library model its
    `repro.external.ExternalSpec` (built once to find its taps)."""
    from repro import external
    loads = args.load or [None] * len(args.model)
    specs = [external.spec_for(name, load, args.pretrained, args.taps, args.input_size, args.mean, args.std)
             if external.is_external(name) else zoo.get_model(name, args.zoo, args.depth)
             for name, load in zip(args.model, loads)]
    # The models of a run are fed the same images, loaded once for the first model's input.
    libraries = [spec for spec in specs if external.is_external_spec(spec)]
    if libraries and any(spec.zoo != "imagenet" for spec in specs):
        raise cli.UsageError("{} is an ImageNet model: it cannot share a run with --zoo {}".format(
            libraries[0].name, args.zoo))
    sizes = {spec.name: spec.arch.input_size for spec in specs}
    if len(set(sizes.values())) > 1:
        raise cli.UsageError("the models of one run share their images, but they take different sizes ({}): run them "
                             "separately, or give one --input-size".format(", ".join(
                                 "{} {}".format(name, size) for name, size in sizes.items())))
    return specs


def print_taps(args):
    """``--list-taps``: each library model's modules with a feature-map output."""
    from repro import external
    for name in args.model:
        if external.is_external(name):
            print("# {}: modules with a feature-map output (name, class, C×H×W); --taps takes names and patterns"
                  .format(name))
            print("\n".join(engines.load("torch").tap_lines(*external.split_name(name), args.input_size)))


def setting_folder(epsilon, iterations, attack):
    """The subfolder of a sweep's --out for one setting, e.g. ``eps16-k100-targeted``."""
    return "eps{:g}-k{}-{}".format(epsilon, iterations, attack)


def study_config(args):
    from repro.protocol import StudyConfig
    return StudyConfig(epsilon=args.attack_epsilon, attack_iterations=args.attack_iter,
                       attack_step_size=args.attack_step_size, noise=args.noise, tap=args.tap, attack=args.attack,
                       metrics=tuple(args.metrics), ssim_data_range=args.ssim_data_range, seed=args.seed,
                       attack_chunk=args.attack_chunk)


def batch_identity(work, spec, checkpoint_sha256, selection):
    """``(first, last[, digests]) →`` the identity a batch of this run carries: the run's settings, the model and
    its checkpoint (None: not known to this run, e.g. ``--aggregate-only``), the batch's images with their SHA-256
    (``digests``: those the worker read; default: the files' now; None: not known to this run)."""
    from repro import runner
    model = runner.model_identity(spec, checkpoint_sha256)
    return lambda first, last, digests=None: {
        "settings": work.config, "model": model,
        "images": selection.identity(first, last, digests) if selection else None}


def main(argv=None):
    """The command line: run the study (`study`) and show its summary."""
    tables = study(argv)
    if tables is not None and len(tables.summary):
        shown = ["model", "perturbation", "n_images", "top1_accuracy", "attack_success_rate"]
        log.info("\n%s", tables.summary[["setting"] * ("setting" in tables.summary) + shown].to_string(index=False))
    return 0


StudyTables = collections.namedtuple("StudyTables", "blocks images summary")


def study(argv=None):
    """Run the study as the command line ``argv`` asks; returns its tables (`StudyTables`: blocks, images,
    summary as DataFrames, also written to ``--out``; for a sweep, the settings' tables with the setting as
    columns)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cli.setup_logging()
    if args.list_taps:
        return print_taps(args)
    return run_sweep(args) if args.sweep else run_study(args)


def run_sweep(args):
    """Each setting of the sweep (`SWEPT`) as a run of its own in ``--out/<setting_folder>/`` (a finished one is
    reused, an interrupted one resumes: its receipts are its own), then sweep.csv and sweep_summary.csv — the
    settings' blocks.csv and summary.csv with the setting as columns — and the grid figure sweep.png/pdf,
    published together with a manifest (`repro.runner.publish_outputs`). Returns the combined `StudyTables`."""
    import copy

    from repro import runner
    out = Path(args.out)
    cli.check_writable_folder(args.out)
    if (out / "work").exists() or "sweep" not in _manifest_of(out, {"sweep": None}):
        raise cli.UsageError("--out {} holds a single run, not a sweep: sweep into another folder".format(out))
    started, parts = time.time(), []
    for number, setting in enumerate(args.sweep, 1):
        folder = setting_folder(*setting)
        log.info("sweep %d/%d: %s", number, len(args.sweep), folder)
        one = copy.copy(args)
        one.attack_epsilon, one.attack_iter, one.attack = setting
        one.sweep, one.out = None, str(out / folder)
        one.save_adv = str(Path(args.save_adv) / folder) if args.save_adv else None
        parts.append((setting, folder, run_study(one)))

    def combined(table):
        frames = []
        for setting, folder, tables in parts:
            frame = getattr(tables, table).copy()
            for (_, column), value in reversed(list(zip(SWEPT, setting))):
                frame.insert(0, column, value)
            frame.insert(0, "setting", folder)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    import pandas as pd
    blocks, images, summary = (combined(table) for table in StudyTables._fields)
    staging = runner.staging_folder(out)
    try:
        atomic_write_text(staging / "sweep.csv", blocks.to_csv(index=False))
        atomic_write_text(staging / "sweep_summary.csv", summary.to_csv(index=False))
        from repro import plots
        plots.plot_sweep_figure(blocks, staging / "sweep", runner.figure_metrics(args.metrics),
                                [folder for _, folder, _ in parts])
        manifest = {"command": " ".join(sys.argv), "sweep": [
            dict(zip([column for _, column in SWEPT], setting), folder=folder,
                 manifest_sha256=runner.file_sha256(out / folder / "manifest.json"))
            for setting, folder, _ in parts],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_seconds": round(time.time() - started, 2)}
        runner.publish_outputs(out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s: %d settings, sweep.csv, sweep_summary.csv, sweep.png/pdf", out, len(parts))
    return StudyTables(blocks, images, summary)


def _manifest_of(folder, default):
    """The manifest.json of ``folder`` as a dict; ``default`` where there is none."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return default
    return manifest if isinstance(manifest, dict) else default


def run_study(args):
    """One run of the study (one setting): claim --out, compute what is missing, publish the tables."""
    from collections import defaultdict

    from repro import checkpoints, data, external, report, runner, scheduler

    if "sweep" in _manifest_of(args.out, {}):
        raise cli.UsageError("--out {} holds a sweep: give the same options as it was run with, or another "
                             "folder".format(args.out))
    started = time.time()
    if args.attack_epsilon > protocol.LARGEST_SENSIBLE_EPSILON:
        log.warning("--attack-epsilon %g is above 255: ε is in pixel units out of 255 (the paper's 16 means "
                    "16/255), so every image's ε-ball holds every other image", args.attack_epsilon)
    specs = model_specs(args)
    checkpoint_paths = [cli.checkpoint_path(spec, load) for spec, load in
                        zip(specs, args.load or [None] * len(specs))]
    config = study_config(args)
    # On a Ray cluster (--ray ADDRESS) the workers, not this machine, need e.g. the GPU that fp16 needs.
    engines.check_precision(args.engine, args.precision, this_machine=args.ray in (None, "local"))
    engines.check_device(args.engine, args.device, this_machine=args.ray in (None, "local"))
    # Every input and output is checked before the folder is claimed: a failed start leaves --out as it was.
    cli.check_writable_folder(args.out)
    if args.save_adv:
        cli.check_writable_folder(args.save_adv, "--save-adv")
    if args.data and specs[0].zoo != "mini":
        for option, folder in (("--out", args.out), ("--save-adv", args.save_adv)):
            if folder:
                try:
                    data.check_outside_data(folder, args.data, option)
                except ValueError as error:
                    raise cli.UsageError(str(error)) from None
    hashes, selection = {}, None
    if not args.aggregate_only:
        for spec, path in zip(specs, checkpoint_paths):
            if external.is_external_spec(spec):
                hashes[spec.name] = engines.load("torch").weights_for(spec).sha256
                continue
            if not path.is_file():
                raise cli.UsageError(cli.missing_checkpoint_message(spec, path))
            hashes[spec.name] = checkpoints.load_for(spec, path).sha256
        if args.data is None and specs[0].zoo != "mini":
            raise cli.UsageError("--data is required: the ImageNet validation folder (val/<wnid>/*.JPEG)")
        selection = runner.image_selection(specs[0], args.data, args.images, args.seed)
        log.info("studying %d images with %s", len(selection), ", ".join(s.name for s in specs))
    elif specs[0].zoo == "mini" or args.data:
        # --aggregate-only reads no image, but where the data is at hand the batches' images are checked
        # against it: a table must not mix images that have changed since their batch was computed.
        selection = runner.image_selection(specs[0], args.data, args.images, args.seed)
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
                            recompute_damaged=not args.aggregate_only, discard=False)
    ray_session = None
    if not args.aggregate_only and (args.workers or args.ray):
        ray_session = scheduler.connect_ray(None if args.ray in (None, "local") else args.ray, args.workers)
    try:
        timings, checks = defaultdict(float), {}
        if not args.aggregate_only:
            work.claim()
            checks, measured = run_batches(args, specs, checkpoint_paths, hashes, config, work, selection, ray_session)
            timings.update(measured)
    finally:
        if ray_session is not None:
            ray_session.close()
    tabled = tabled_batches(work, specs, args, count, hashes, selection)
    began = time.perf_counter()
    staging = runner.staging_folder(args.out)
    try:
        tables = runner.write_tables(work, {name: list(done) for name, done in tabled.items()}, staging)
        blocks, images, summary = tables.blocks, tables.images, tables.summary
        runner.write_figures(blocks, [s.name for s in specs], staging, config.metrics, tables.contrasts,
                             tables.denoising)
        for spec in specs:
            for name, source in scheduler.feature_map_figures(work, spec.name, tabled[spec.name]).items():
                shutil.copyfile(source, staging / name)
        timings["aggregation_and_figures"] += time.perf_counter() - began
        studied = int((images["error"].isna() | (images["error"] == "")).sum()) if len(images) else 0
        manifest = {
            "command": " ".join(sys.argv), "config": work.config, "models": {
                spec.name: dict(models_in_tables(spec, tabled[spec.name]), clean_check=checks.get(spec.name))
                for spec in specs},
            "images_selected": count, "images_studied_total": studied, "data": args.data,
            "batches": {name: {"planned": len(runner.batch_plan(count, args.batch)), "in_tables": len(done)}
                        for name, done in tabled.items()},
            "engine": engines.describe(args.engine, args.precision, args.device, not args.nondeterministic),
            "shard": args.shard, "workers": args.workers, "ray": args.ray, "aggregate_only": args.aggregate_only,
            "computed_by": computed_by(tabled),
            "packages": runner.package_versions(), "git": runner.git_state(),
            "machine": runner.machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_seconds": round(time.time() - started, 2),
            "timings_seconds": {k: round(v, 3) for k, v in timings.items()}}
        # The report renders the staged set (its manifest without the file list, written aside for it) and is
        # published with it; a report that cannot be made does not hold back the tables, and is then one line.
        runner.write_manifest(staging, manifest)
        report_failure = None
        try:
            report.write_after_run(staging, title=Path(args.out).resolve().name)
        except cli.RunFailed as failure:
            report_failure = cli.RunFailed(str(failure).replace(str(staging), str(args.out)))
        outputs = runner.publish_outputs(args.out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)      # whatever stopped it, the previous outputs stay whole
    log.info("wrote %s (%d files: tables, figures, report.html, manifest.json)", args.out, len(outputs) + 1)
    if report_failure is not None:
        raise report_failure
    return StudyTables(blocks, images, summary)


def run_batches(args, specs, checkpoint_paths, hashes, config, work, selection, ray_session=None):
    """Compute this run's pending batches (of its shard) where the options say — in this process, or on the Ray
    actors of ``ray_session`` (`repro.scheduler`) — committing each here as it arrives. Returns (clean checks,
    timings)."""
    from tqdm import tqdm

    from repro import runner, scheduler
    from repro.taps import block_table, taps_for
    plan = scheduler.RunPlan(
        specs=specs, checkpoints={s.name: (str(p), hashes[s.name]) for s, p in zip(specs, checkpoint_paths)},
        config=config, engine=args.engine, precision=args.precision, device=args.device, data=args.data,
        images=args.images, seed=args.seed, visualize=args.visualize, save_adversarial=bool(args.save_adv),
        no_check=args.no_check, deterministic=not args.nondeterministic)
    pending, identities, total, done = {}, {}, 0, 0
    for spec in specs:
        work.save_block_table(spec.name, block_table(spec.name, taps_for(spec, config.tap)))
        batches = runner.batch_plan(len(selection), args.batch, args.shard)
        identities[spec.name] = batch_identity(work, spec, hashes[spec.name], selection)
        committed, pending[spec.name] = runner.resume_state(work, spec.name, batches, identities[spec.name])
        total += sum(last - first + 1 for first, last in batches)
        done += sum(last - first + 1 for first, last in committed)
        log.info("%s: %d of %d batches already done, %d to run (%d PGD steps, α = %.2f px, ε = %g px)", spec.name,
                 len(committed), len(batches), len(pending[spec.name]), config.attack_iterations, config.step_size,
                 config.epsilon)
        for note in scheduler.resume_notes(spec.name, committed, args.visualize, args.save_adv):
            log.warning(note)
    paths = dict(zip((s.name for s in specs), checkpoint_paths))

    def commit(model, first, last, outcome):
        identity = identities[model](first, last, outcome.info["image_sha256"])
        scheduler.commit_outcome(work, model, first, last, outcome, identity, args.save_adv, selection.paths,
                                 str(paths[model]), args.visualize)
    bar = tqdm(total=total, initial=done, unit="img", desc=", ".join(s.name for s in specs), position=0)
    try:
        if ray_session is not None:
            return scheduler.run_ray(ray_session, plan, pending, commit, progress=bar.update)
        return scheduler.run_local(plan, pending, commit, selection, progress=bar.update)
    finally:
        bar.close()


def computed_by(tabled):
    """Which worker computed which tabled batch on which device (from the receipts)."""
    return {model: {"{}-{}".format(*bounds): "{} on {}".format(receipt.get("worker", "?"), receipt.get("device", "?"))
                    for bounds, receipt in sorted(receipts.items())} for model, receipts in tabled.items()}


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
            receipt = work.check_batch(spec.name, *bounds, lambda: identity(*bounds))
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
    dtypes = [r["checkpoint_dtypes"] for r in receipts.values() if r.get("checkpoint_dtypes")]
    record = {"zoo": spec.zoo, "depth": spec.depth, "checkpoint": paths[0] if len(paths) == 1 else paths,
              "sha256": hashes[0] if len(hashes) == 1 else hashes,
              "weights_dtypes": dtypes[0] if dtypes and all(d == dtypes[0] for d in dtypes) else dtypes}
    if hasattr(spec, "identity"):           # a library model: where it comes from, its input, how it is tapped
        record.update(library_model={key: value for key, value in spec.identity().items() if key != "name"},
                      tap_family=spec.family)
    return record


def console_main():
    """The ``repro-evaluate`` command."""
    sys.exit(cli.run_main(main))


if __name__ == "__main__":
    console_main()
