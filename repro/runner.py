"""Running the study over many images: work directory, per-batch atomic commits, resume, shards, outputs.

Layout of ``--out``:
    work/config.json                  what every batch below was computed with (a resumed run must match)
    work/<model>/blocks.json          the model's block table (taps, shapes)
    work/<model>/batch-<first>-<last>.csv / .json / .npz
                                      per-image records, timings, and the block statistics of one batch;
                                      the .npz is written last, atomically: a batch is done iff it exists
    blocks.csv images.csv summary.csv manifest.json fig5_1_<model>.png/.pdf fig5_2.png/.pdf
Memory does not grow with the number of images: each batch's statistics go to disk, and the tables are
made by merging the per-batch sufficient statistics (`repro.aggregate`), which also merges shards run on
other machines into the same ``work/``.
"""
import dataclasses
import functools
import datetime
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from repro import aggregate, plots
from repro.fileio import atomic_write_text
from repro.study import PERTURBATIONS

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


class RunConfigMismatch(ValueError):
    pass


def result_config(study_config, selection_rule, batch_size):
    """The settings that determine every number a batch produces (not the models or the image count:
    those may grow between resumed runs)."""
    config = dataclasses.asdict(study_config)
    config.pop("attack_chunk")
    config["metrics"] = list(config["metrics"])
    config["step_size_used"] = study_config.step_size
    config["selection"] = selection_rule
    config["batch"] = batch_size
    return config


class WorkDirectory:
    """The run's ``work/`` folder: claims it for one configuration, finds finished batches."""

    def __init__(self, out, config):
        self.out = Path(out)
        self.root = self.out / "work"
        self.config = config
        path = self.root / "config.json"
        if path.exists():
            existing = json.loads(path.read_text())
            if existing != config:
                changed = sorted(k for k in set(existing) | set(config) if existing.get(k) != config.get(k))
                raise RunConfigMismatch(
                    "{} holds results computed with different settings ({}); use another --out or delete "
                    "it to start over".format(self.root, ", ".join(changed)))
        else:
            atomic_write_text(path, json.dumps(config, indent=1, sort_keys=True))

    def model_dir(self, model):
        return self.root / model

    @staticmethod
    def batch_stem(first, last):
        return "batch-{:06d}-{:06d}".format(first, last)

    def is_done(self, model, first, last):
        return (self.model_dir(model) / (self.batch_stem(first, last) + ".npz")).exists()

    def commit_batch(self, model, first, last, records, statistics, info):
        """Records and info first, statistics last (atomic rename): the .npz marks the batch done."""
        directory, stem = self.model_dir(model), self.batch_stem(first, last)
        atomic_write_text(directory / (stem + ".csv"), records.to_csv(index=False))
        atomic_write_text(directory / (stem + ".json"), json.dumps(info, indent=1))
        statistics.save(directory / (stem + ".npz"))

    def finished_batches(self, model):
        return sorted(self.model_dir(model).glob("batch-*.npz"))

    def finished_images(self, model):
        """How many image slots the finished batches of ``model`` cover (from their names)."""
        bounds = (path.stem.split("-")[1:3] for path in self.finished_batches(model))
        return sum(int(last) - int(first) + 1 for first, last in bounds)

    def worker_file(self, shard, suffix):
        """A ``--workers`` child's file for shard (I, K): ``.json`` its report, ``.progress`` its
        current batch's attacked fraction."""
        return self.root / "workers" / "shard-{}-of-{}{}".format(shard[0], shard[1], suffix)

    def save_block_table(self, model, table):
        atomic_write_text(self.model_dir(model) / "blocks.json", json.dumps(table, indent=1))

    def block_table(self, model):
        path = self.model_dir(model) / "blocks.json"
        if not path.exists():
            raise FileNotFoundError("no results for {} in {}: run it first".format(model, self.root))
        return json.loads(path.read_text())

    def records(self, model):
        frames = [pd.read_csv(p.with_suffix(".csv")) for p in self.finished_batches(model)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def infos(self, model):
        return [json.loads(p.with_suffix(".json").read_text()) for p in self.finished_batches(model)]


def batch_records(model, result, paths, skipped):
    """Per-image rows of one batch; unreadable images get a row with their error."""
    rows = []
    for position, image_id in enumerate(result.image_ids if result else []):
        rows.append(dict(
            model=model, image=int(image_id), path=str(paths[image_id]), label=int(result.labels[position]),
            target=int(result.targets[position]),
            **{"pred_" + p: int(result.predictions[p][position]) for p in ("clean",) + PERTURBATIONS},
            attack_success=bool(result.predictions["adversarial"][position] == result.targets[position]),
            error=""))
    for image_id, path, error in skipped:
        rows.append(dict(model=model, image=int(image_id), path=str(path), label=-1, target=-1, pred_clean=-1,
                         pred_random=-1, pred_adversarial=-1, attack_success=False, error=str(error)))
    return pd.DataFrame(rows).sort_values("image") if rows else pd.DataFrame()


def batch_statistics(model, first, last, result):
    statistics = aggregate.BlockStatistics(sources=["{}:{}-{}".format(model, first, last)])
    if result is not None and len(result.image_ids):
        statistics.add_many(model, result.values)
    return statistics


MINI_TEST_PREFIX = "mini-test/"


def image_selection(spec, data_dir, count, seed=0):
    """(paths, labels, loader) of the images studied, in selection order (image id = position).

    ImageNet: ``count`` validation images chosen by `repro.data.select_images` (seeded round-robin
    over classes). Miniature zoo: the first ``count`` of its fixed, class-interleaved test split
    (`repro.minidata`), named ``mini-test/<index>``.
    """
    from repro import data
    if spec.zoo == "mini":
        from repro import minidata
        images, labels = minidata.load_split("test")
        if count is None or count > len(images):
            if count is not None:
                log.warning("the miniature test split has %d images; using all of them", len(images))
            count = len(images)
        paths = ["{}{:05d}".format(MINI_TEST_PREFIX, index) for index in range(count)]
        return paths, labels[:count], lambda path: images[int(str(path)[len(MINI_TEST_PREFIX):])]
    samples = data.imagenet_samples(data_dir)
    chosen = data.select_images(samples, len(samples) if count is None else count, seed=seed)
    loader = functools.partial(data.load_imagenet_val_image, crop=spec.arch.input_size)
    return [path for path, _ in chosen], np.array([label for _, label in chosen]), loader


# --- outputs ---------------------------------------------------------------------------------------

def package_versions():
    from importlib import metadata
    names = ("tensorflow", "tf-keras", "tensorpack", "numpy", "scikit-image", "image-similarity-measures",
             "opencv-python-headless", "pandas", "matplotlib", "scipy")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = sys.version.split()[0]
    return versions


def git_state(paths=()):
    """The repository's commit and whether tracked files differ from it; with ``paths``, only those
    files and folders count, and the changed ones are listed (``uncommitted_changes``)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, **({"uncommitted_changes": None} if paths else {})}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), **({"uncommitted_changes": changed} if paths else {})}


def write_tables(work, models, out):
    """Merge every finished batch of ``models`` into blocks.csv, images.csv, summary.csv."""
    out = Path(out)
    statistics, tables, records = aggregate.BlockStatistics(), [], []
    for model in models:
        statistics.merge(aggregate.load_statistics(work.finished_batches(model)))
        tables.extend(work.block_table(model))
        records.append(work.records(model))
    blocks = aggregate.blocks_frame(statistics, tables)
    images = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    classified = images[images["error"].isna() | (images["error"] == "")] if len(images) else images
    summary = aggregate.summary_frame(classified.drop(columns=["path", "error"])) if len(classified) else pd.DataFrame()
    atomic_write_text(out / "blocks.csv", blocks.to_csv(index=False))
    atomic_write_text(out / "images.csv", images.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    return blocks, images, summary


def write_figures(blocks, models, out, metrics=plots.DEFAULT_METRICS):
    out = Path(out)
    written = []
    for model in models:
        written += plots.plot_model_figure(blocks, model, out / "fig5_1_{}".format(model), metrics=metrics)
    written += plots.plot_models_figure(blocks, out / "fig5_2", metrics=metrics, models=models)
    return written


def write_manifest(out, manifest):
    manifest = dict(manifest, written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=1, default=str))


def machine():
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


def config_digest(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
