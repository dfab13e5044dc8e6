"""Running the study: work directory, per-batch atomic commits with provenance, resume, shards, outputs.

Layout of ``--out``:
    work/config.json                  the run's settings (written once the inputs are checked; a resumed run
                                      with other settings is refused before any work)
    work/<model>/blocks.json          the model's block table (taps, shapes)
    work/<model>/batch-<first>-<last>.csv / .npz / .json
                                      per-image records, block statistics, and the batch's receipt
Every batch is committed atomically, its receipt (``.json``) last: a batch is done iff its receipt exists
and verifies. The receipt records what made the batch — the settings, the model and its checkpoint's
SHA-256, the images (id, path, label) — and the SHA-256 of its ``.csv`` and ``.npz``. So a resumed run, a
merge of shards and ``--aggregate-only`` count a batch only when it was computed exactly as this run asks
(anything else is refused, naming the file and the difference), and a damaged batch file is detected
(recomputed on resume, named when aggregating). The tables describe exactly the batches of the requested
selection (``batch_plan``): batches left over from a larger ``--images`` are not counted.
Memory does not grow with the number of images: each batch's statistics go to disk, and the tables are
made by merging the per-batch sufficient statistics (`repro.aggregate`).
"""
import collections
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from repro.fileio import atomic_write_text
from repro.protocol import PERTURBATIONS

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
RECEIPT_FORMAT = 3         # 3: each image's SHA-256 in the batch's identity


class RunConfigMismatch(ValueError):
    """Results in ``--out`` were computed differently from what this run asks; nothing is mixed."""


class DamagedBatch(ValueError):
    """A committed batch whose files are missing, unreadable or do not match their receipt."""


class ChangedImages(DamagedBatch):
    """A committed batch whose images' content changed since it was computed (same path and label): recomputed
    on resume like a damaged batch, refused where it cannot be recomputed."""


def result_config(study_config, selection_rule, batch_size, data_source=None, engine="tensorflow",
                  precision="float32"):
    """The settings that determine every number a batch produces, besides the model and the images
    (those are recorded per batch): the study's settings, the selection rule, the batch plan, the data
    source (`Selection.source`), and the engine and attack precision (engines agree to float round-off,
    not bit for bit, so their batches are not mixed)."""
    config = dataclasses.asdict(study_config)
    config.pop("attack_chunk")
    config["metrics"] = list(config["metrics"])
    config["step_size_used"] = study_config.step_size
    config["selection"] = selection_rule
    config["batch"] = batch_size
    config["data"] = data_source
    config["engine"] = engine
    config["precision"] = precision
    return json_form(config)


def model_identity(spec, checkpoint_sha256):
    """What a batch's numbers depend on about the model: the zoo entry, its architecture, the checkpoint (a library
    model: its source, library version, input convention and taps, `repro.external.ExternalSpec.identity`)."""
    if hasattr(spec, "identity"):
        return json_form(dict(spec.identity(), checkpoint_sha256=checkpoint_sha256))
    return json_form({"name": spec.name, "zoo": spec.zoo, "depth": spec.depth,
                      "architecture": dataclasses.asdict(spec.arch), "checkpoint_sha256": checkpoint_sha256})


def json_form(value):
    """``value`` as it reads back from JSON (tuples become lists), so that recorded and expected compare."""
    return json.loads(json.dumps(value))


def batch_plan(count, batch_size, shard=None):
    """The batches (first, last) of a selection of ``count`` images, ``batch_size`` at a time; with
    ``shard`` = (I, K) only every K-th from the I-th. Fixed by (count, batch size): the batches of a
    smaller selection are a prefix, except that a partial last batch differs."""
    batches = [(first, min(first + batch_size, count) - 1) for first in range(0, count, batch_size)]
    if shard:
        batches = [b for number, b in enumerate(batches) if number % shard[1] == shard[0]]
    return batches


def _file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _differences(recorded, expected, prefix=""):
    """``key: recorded → expected`` for every key whose values differ (nested dicts by dotted key);
    an expected value of None means "not known to this run" and is not compared."""
    changes = []
    for key in sorted(set(recorded) | set(expected), key=str):
        old, new = recorded.get(key), expected.get(key)
        if new is None and key in expected:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _differences(old, new, prefix + key + ".")
        elif old != new:
            changes.append("{}{}: {} → {}".format(prefix, key, _short(old), _short(new)))
    return changes


def _short(value):
    text = json.dumps(value) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"             # a SHA-256
    return text if len(text) <= 80 else text[:77] + "…"


def identity_differences(recorded, expected):
    """What differs between a batch's recorded identity and the one this run expects, in words — the images'
    paths and labels included, their content not (`image_content_changes`)."""
    changes = _differences(recorded.get("settings") or {}, expected.get("settings") or {}, "")
    changes += _differences(recorded.get("model") or {}, expected.get("model") or {}, "model.")
    if expected.get("images") is not None:
        old = {row[0]: row[:3] for row in recorded.get("images") or []}
        new = {row[0]: row[:3] for row in expected["images"]}
        for image_id in sorted(set(old) | set(new)):
            if old.get(image_id) != new.get(image_id):
                describe = lambda row: "absent" if row is None else "{} (label {})".format(row[1], row[2])  # noqa: E731
                changes.append("image {}: {} → {}".format(image_id, describe(old.get(image_id)),
                                                           describe(new.get(image_id))))
                break
    return changes


def image_content_changes(recorded, expected):
    """The images whose content (SHA-256, the identity's fourth entry) differs between a batch's recorded
    identity and this run's, as ``path (sha256 old… → new…)``."""
    if expected.get("images") is None:
        return []
    old = {row[0]: row for row in recorded.get("images") or []}
    return ["{} (SHA-256 {} → {})".format(row[1], _short(old[row[0]][3]) if len(old[row[0]]) > 3 else "not recorded",
                                          _short(row[3]))
            for row in expected["images"] if row[0] in old and old[row[0]][3:4] != row[3:4]]



class WorkDirectory:
    """The run's ``work/`` folder: its settings, the batches committed in it and their receipts."""

    def __init__(self, out, config):
        self.out = Path(out)
        self.root = self.out / "work"
        self.config = config

    def check_settings(self):
        """Refuse when ``config.json`` records other settings than this run's (naming them)."""
        path = self.root / "config.json"
        if not path.exists():
            return
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RunConfigMismatch("{} is unreadable ({}): use another --out, or delete it to start over".format(
                path, error)) from None
        changes = _differences(existing, self.config)
        if changes:
            raise RunConfigMismatch(
                "{} holds results computed with different settings ({}); use another --out or delete "
                "it to start over".format(self.root, "; ".join(changes)))

    def claim(self):
        """Record this run's settings in ``config.json``, or refuse when the folder holds other ones.
        Call it once the inputs are checked, so that a failed start never locks the folder."""
        self.check_settings()
        path = self.root / "config.json"
        if not path.exists():
            atomic_write_text(path, json.dumps(self.config, indent=1, sort_keys=True))

    def model_dir(self, model):
        return self.root / model

    @staticmethod
    def batch_stem(first, last):
        return "batch-{:06d}-{:06d}".format(first, last)

    def batch_files(self, model, first, last):
        """(records .csv, statistics .npz, receipt .json) of one batch."""
        stem = self.model_dir(model) / self.batch_stem(first, last)
        return stem.with_suffix(".csv"), stem.with_suffix(".npz"), stem.with_suffix(".json")

    def commit_batch(self, model, first, last, records, statistics, info, identity):
        """Records and statistics first, the receipt last (atomic renames): the receipt marks the batch
        done and holds the SHA-256 of the other two files and the identity of what made them."""
        records_path, statistics_path, receipt_path = self.batch_files(model, first, last)
        receipt_path.unlink(missing_ok=True)          # a stale receipt must never vouch for new files
        atomic_write_text(records_path, records.to_csv(index=False))
        statistics.save(statistics_path)
        receipt = dict(info, format=RECEIPT_FORMAT, model=model, batch=[first, last], identity=identity,
                       files={"csv": _file_sha256(records_path), "npz": _file_sha256(statistics_path)},
                       committed=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        atomic_write_text(receipt_path, json.dumps(receipt, indent=1))

    def receipt(self, model, first, last):
        """The verified receipt of a committed batch, or None when the batch was never committed.
        Raises DamagedBatch when its files are unreadable or differ from what the receipt recorded."""
        records_path, statistics_path, receipt_path = self.batch_files(model, first, last)
        if not receipt_path.exists():
            return None
        try:
            receipt = json.loads(receipt_path.read_text())
        except (OSError, ValueError) as error:
            raise DamagedBatch("{}: unreadable receipt ({})".format(receipt_path, error)) from None
        if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
            raise RunConfigMismatch(
                "{} was written by an older version of this tool and does not record what computed it: use "
                "another --out, or delete {} to recompute".format(receipt_path, self.root))
        for path, kind in ((records_path, "csv"), (statistics_path, "npz")):
            try:
                digest = _file_sha256(path)
            except OSError as error:
                raise DamagedBatch("{}: {}".format(path, error.strerror or error)) from None
            if digest != receipt.get("files", {}).get(kind):
                raise DamagedBatch("{}: its SHA-256 differs from the one recorded in {} (damaged or "
                                   "modified)".format(path, receipt_path.name))
        return receipt

    def check_batch(self, model, first, last, expected):
        """The receipt of a committed batch whose identity is ``expected`` (or ``expected()``, computed only for a
        committed batch: it reads the images); None when not committed. A batch computed differently raises
        RunConfigMismatch naming the file and the difference; one whose images changed content, ChangedImages."""
        receipt = self.receipt(model, first, last)
        if receipt is None:
            return None
        expected = expected() if callable(expected) else expected
        changes = identity_differences(receipt["identity"], expected)
        if changes:
            raise RunConfigMismatch(
                "{} was computed differently from this run ({}): use another --out, or delete {} to "
                "recompute".format(self.batch_files(model, first, last)[2], "; ".join(changes), self.model_dir(model)))
        changed = image_content_changes(receipt["identity"], expected)
        if changed:
            raise ChangedImages("{}: {} image(s) changed since the batch was computed: {}{}".format(
                self.batch_files(model, first, last)[2], len(changed), ", ".join(changed[:3]),
                " …" if len(changed) > 3 else ""))
        return receipt

    def discard_batch(self, model, first, last):
        """Remove a batch's files, receipt first (so that it never vouches for a half-removed batch)."""
        for path in reversed(self.batch_files(model, first, last)):
            path.unlink(missing_ok=True)

    def save_block_table(self, model, table):
        atomic_write_text(self.model_dir(model) / "blocks.json", json.dumps(table, indent=1))

    def block_table(self, model):
        path = self.model_dir(model) / "blocks.json"
        if not path.exists():
            raise FileNotFoundError("no results for {} in {}: run it first".format(model, self.root))
        return json.loads(path.read_text())


def resume_state(work, model, plan, expected, recompute_damaged=True, discard=True):
    """Split ``plan`` (a model's batches) into (done: {batch: receipt}, pending: [batch]).

    ``expected(first, last)`` is the identity each batch must carry (called only for committed batches). A batch
    computed differently raises RunConfigMismatch. A damaged one, or one whose images changed, is recomputed
    (``recompute_damaged``: pending, its files discarded unless ``discard`` is False — a check before the folder
    is claimed changes nothing) or raises DamagedBatch naming the file (when this process cannot recompute it).
    """
    done, pending = {}, []
    for first, last in plan:
        try:
            receipt = work.check_batch(model, first, last, lambda: expected(first, last))
        except DamagedBatch as error:
            if not recompute_damaged:
                raise DamagedBatch("{}; re-run the study command (without --aggregate-only) to recompute "
                                   "it".format(error)) from None
            if discard:
                log.warning("%s; recomputing that batch", error)
                work.discard_batch(model, first, last)
            receipt = None
        if receipt is None:
            pending.append((first, last))
        else:
            done[(first, last)] = receipt
    return done, pending


def check_uniform(receipts, what):
    """All ``receipts`` (of one model) must share settings and model identity: names two that differ."""
    items = sorted(receipts.items())
    for (bounds, receipt) in items[1:]:
        changes = identity_differences(dict(receipt["identity"], images=None),
                                       dict(items[0][1]["identity"], images=None))
        if changes:
            raise RunConfigMismatch("{}: batches {} and {} were computed differently ({}); delete the "
                                    "folder and recompute".format(what, WorkDirectory.batch_stem(*items[0][0]),
                                                                  WorkDirectory.batch_stem(*bounds), "; ".join(changes)))


def batch_records(model, result, paths, skipped, attack="targeted"):
    """Per-image rows of one batch; unreadable images get a row with their error. ``attack_success`` as
    `repro.protocol.attack_succeeded` decides it; the untargeted attack has no target (−1)."""
    from repro.protocol import attack_succeeded
    rows = []
    for position, image_id in enumerate(result.image_ids if result else []):
        label, target = int(result.labels[position]), int(result.targets[position])
        adversarial = int(result.predictions["adversarial"][position])
        rows.append(dict(
            model=model, image=int(image_id), path=str(paths[image_id]), label=label,
            target=-1 if attack == "untargeted" else target,
            **{"pred_" + p: int(result.predictions[p][position]) for p in ("clean",) + PERTURBATIONS},
            attack_success=bool(attack_succeeded(attack, adversarial, label, target)), error=""))
    for image_id, path, error in skipped:
        rows.append(dict(model=model, image=int(image_id), path=str(path), label=-1, target=-1, pred_clean=-1,
                         pred_random=-1, pred_adversarial=-1, attack_success=False, error=str(error)))
    return pd.DataFrame(rows).sort_values("image") if rows else pd.DataFrame()


def batch_statistics(model, first, last, result):
    from repro import aggregate
    statistics = aggregate.BlockStatistics(sources=["{}:{}-{}".format(model, first, last)])
    if result is not None and len(result.image_ids):
        statistics.add_many(model, result.values, image_ids=result.image_ids)
    return statistics


MINI_TEST_PREFIX = "mini-test/"


@dataclasses.dataclass
class Selection:
    """The images a run studies, in selection order (image id = position), and where they come from."""
    paths: list
    labels: np.ndarray
    loader: object             # path → BGR uint8 image of the model's input size
    source: dict               # the data's identity, part of the run's settings
    content: object = None     # path → the SHA-256 of the image's content (None: unreadable)
    _digests: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __len__(self):
        return len(self.paths)

    def digest(self, index):
        """The SHA-256 of image ``index``'s content, cached per file state (size, modification and change times,
        inode): a file rewritten in place gets a new change time, so a changed image is read again."""
        path = self.paths[index]
        try:
            stat = os.stat(path)
            state = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        except (OSError, TypeError, ValueError):
            state = None                      # not a file (the miniature split's names): its content decides
        cached = self._digests.get(index)
        if cached is None or cached[0] != state or state is None:
            cached = self._digests[index] = (state, self.content(path) if self.content else None)
        return cached[1]

    def identity(self, first, last, digests=None):
        """[id, path, label, SHA-256] of images first … last: what a batch records about its images. ``digests``:
        those a worker read the images with (default: their content now)."""
        digests = digests if digests is not None else [self.digest(i) for i in range(first, last + 1)]
        return [[index, str(self.paths[index]), int(self.labels[index]), digest]
                for index, digest in zip(range(first, last + 1), digests)]


def image_selection(spec, data_dir, count, seed=0):
    """The `Selection` of ``count`` images for ``spec``'s zoo.

    ImageNet: validation images chosen by `repro.data.select_images` (seeded round-robin over classes)
    from the folder ``data_dir``, whose resolved path is the data's identity. Miniature zoo: the first
    ``count`` of its fixed, class-interleaved test split (`repro.minidata`), named ``mini-test/<index>``,
    identified by the SHA-256 of the split's pixels and labels.
    """
    from repro import data
    if spec.zoo == "mini":
        from repro import minidata
        images, labels = minidata.load_split("test")
        if count is None or count > len(images):
            if count is not None:
                log.warning("the miniature test split has %d images; using all of them", len(images))
            count = len(images)
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + np.asarray(labels, np.int64).tobytes())
        paths = ["{}{:05d}".format(MINI_TEST_PREFIX, index) for index in range(count)]
        pixels = lambda path: images[int(str(path)[len(MINI_TEST_PREFIX):])]  # noqa: E731
        return Selection(paths, np.asarray(labels[:count]), pixels, {"dataset": "mini test split",
                                                                     "sha256": digest.hexdigest()},
                         content=lambda path: hashlib.sha256(np.ascontiguousarray(pixels(path)).tobytes()).hexdigest())
    samples = data.imagenet_samples(data_dir)
    chosen = data.select_images(samples, len(samples) if count is None else count, seed=seed)
    loader = functools.partial(data.load_imagenet_val_image, crop=spec.arch.input_size)
    source = {"dataset": "imagenet val", "folder": str(data.find_imagenet_val(data_dir).resolve()),
              "images_in_folder": len(samples)}
    return Selection([path for path, _ in chosen], np.array([label for _, label in chosen]), loader, source,
                     content=file_sha256)


def file_sha256(path):
    """The SHA-256 of a file's bytes, or None when it cannot be read (the batch reports it as unreadable)."""
    try:
        return _file_sha256(path)
    except OSError:
        return None


# --- outputs ---------------------------------------------------------------------------------------

def package_versions():
    from importlib import metadata
    names = ("tensorflow", "tf-keras", "tensorpack", "torch", "numpy", "scikit-image", "image-similarity-measures",
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


Tables = collections.namedtuple("Tables", "blocks images summary contrasts denoising")


def write_tables(work, batches, out):
    """Merge the batches ``{model: [(first, last), …]}`` (committed, verified) into blocks.csv, images.csv,
    summary.csv, contrasts.csv and (runs with ``--tap both`` on a denoising model) denoising.csv — exactly those
    batches, so the tables describe the requested selection and nothing else. → `Tables`."""
    from repro import aggregate
    out = Path(out)
    statistics, tables, records = aggregate.BlockStatistics(), [], []
    for model, bounds in batches.items():
        files = [work.batch_files(model, first, last) for first, last in sorted(bounds)]
        statistics.merge(aggregate.load_statistics(npz for _, npz, _ in files))
        tables.extend(work.block_table(model))
        records.extend(pd.read_csv(csv) for csv, _, _ in files)
    blocks = aggregate.blocks_frame(statistics, tables)
    contrasts = aggregate.contrasts_frame(statistics, tables)
    denoising = aggregate.denoising_frame(statistics, tables)
    images = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    classified = images[images["error"].isna() | (images["error"] == "")] if len(images) else images
    attack = work.config.get("attack", "targeted")
    summary = aggregate.summary_frame(classified.drop(columns=["path", "error"]), attack) if len(classified) \
        else pd.DataFrame()
    atomic_write_text(out / "blocks.csv", blocks.to_csv(index=False))
    atomic_write_text(out / "images.csv", images.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "contrasts.csv", contrasts.to_csv(index=False))
    if len(denoising):
        atomic_write_text(out / "denoising.csv", denoising.to_csv(index=False))
    return Tables(blocks, images, summary, contrasts, denoising)


def figure_metrics(metrics):
    """The metrics the figures show: the paper's four where they were computed, else the first four
    computed (a run of ``--metrics mse`` gets a figure of MSE, not three empty panels)."""
    from repro.protocol import PAPER_METRICS
    chosen = [metric for metric in PAPER_METRICS if metric in metrics]
    return tuple(chosen or list(metrics)[:4])


def block_output_rows(blocks):
    """The rows of the residual blocks' outputs, numbered as a ``--tap block_output`` run numbers them: a
    ``--tap both`` table without the denoising taps between them (the paper's figures show blocks, not taps).
    Tables with one tap per block (``block_output``, ``denoised``) are returned as they are."""
    from repro.taps import is_denoising
    parts = []
    for _, rows in blocks.groupby("model", sort=False):
        residual = ~rows["tap"].map(is_denoising)
        if residual.all() or not residual.any():
            parts.append(rows)
            continue
        rows = rows[residual].copy()
        order = {index: rank for rank, index in enumerate(sorted(rows["block_index"].unique()))}
        rows["block_index"] = rows["block_index"].map(order) + 1
        rows["depth_from_end"] = len(order) - rows["block_index"]
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else blocks


WHOLE_MAP_FIGURE = "whole_map"
"""The figure of the per-image whole-map measures (amplification, CKA) where a run computed them."""


def write_figures(blocks, models, out, metrics, contrasts=None, denoising=None):
    from repro import plots
    from repro.protocol import PER_IMAGE_METRICS
    out = Path(out)
    written = []
    computed, metrics = metrics, figure_metrics(metrics)
    blocks = block_output_rows(blocks)
    for model in models:
        written += plots.plot_model_figure(blocks, model, out / "fig5_1_{}".format(model), metrics=metrics)
    written += plots.plot_models_figure(blocks, out / "fig5_2", metrics=metrics, models=models)
    whole_map = [metric for metric in PER_IMAGE_METRICS if metric in computed]
    if whole_map:
        written += plots.plot_models_figure(blocks, out / WHOLE_MAP_FIGURE, metrics=whole_map, models=models,
                                            show_ci=True)
    if contrasts is not None and len(contrasts):
        written += plots.plot_contrasts_figure(block_output_rows(contrasts), out / "contrasts", metrics)
    if denoising is not None and len(denoising):
        written += plots.plot_denoising_figure(denoising, out / "denoising", metrics)
    return written


def write_manifest(out, manifest):
    manifest = dict(manifest, written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=1, default=str))


# --- a run's outputs are replaced together ------------------------------------------------------------

STAGING = ".incoming"
"""Where a run writes its tables and figures before they replace the previous ones (inside ``--out``, so that
moving them is a rename on the same file system)."""

OUTPUT_PATTERNS = ("blocks.csv", "images.csv", "summary.csv", "contrasts.csv", "denoising.csv", "report.html",
                   "fig5_1_*.png", "fig5_1_*.pdf", "fig5_2.png", "fig5_2.pdf", "feature_maps_*.png", "feature_maps_*.pdf",
                   "contrasts.png", "contrasts.pdf", "denoising.png", "denoising.pdf", "sweep.csv", "sweep_summary.csv",
                   "sweep.png", "sweep.pdf", "whole_map.png", "whole_map.pdf")
"""The files of ``--out`` that belong to a run's output set (besides those its manifest lists)."""


def staging_folder(out):
    """An empty folder for the next output set (what a killed run left there is discarded)."""
    import shutil
    staging = Path(out) / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM wait until the block is done, then take effect as they would have: what the block does
    to the output folder is never half done by an interrupt. (Their Python handlers are swapped for ones that only
    take note: blocking the signals in the main thread would not do, since another thread may receive them.)
    Outside the main thread, where no handler can be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda signum, frame: received.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


def _previous_outputs(out):
    """The files of the output set now in ``out``: those its manifest lists, and any matching `OUTPUT_PATTERNS`."""
    out = Path(out)
    names = {path.name for pattern in OUTPUT_PATTERNS for path in out.glob(pattern) if path.is_file()}
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        names |= set(manifest.get("outputs") or {}) | {Path(f).name for f in manifest.get("figures") or []}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return {name for name in names if name != "manifest.json" and "/" not in name}


def publish_outputs(out, staging, manifest):
    """Replace the output set in ``out`` (tables, figures, manifest) by the files in ``staging`` and ``manifest``,
    together: the old manifest goes first, files of the old set that the new one lacks (e.g. the figures of a
    model no longer asked for) are removed, the new files are renamed into place, and the new manifest, listing
    every file with its SHA-256 (``outputs``), is written last — with SIGINT/SIGTERM held back meanwhile. So a
    reader sees either a complete set or no manifest (`verify_outputs` says which)."""
    import shutil
    out, staging = Path(out), Path(staging)
    names = sorted(path.name for path in staging.iterdir() if path.is_file() and path.name != "manifest.json")
    manifest = dict(manifest, outputs={name: _file_sha256(staging / name) for name in names},
                    figures=[str(out / name) for name in names if name.endswith((".png", ".pdf"))])
    with deferred_signals():
        (out / "manifest.json").unlink(missing_ok=True)
        for name in sorted(_previous_outputs(out) - set(names)):
            (out / name).unlink(missing_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
        write_manifest(out, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def verify_outputs(out):
    """What is wrong with the output set in ``out``, as a list of lines; empty when it is complete: its
    manifest.json exists and every file it lists is there with the SHA-256 it records."""
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except FileNotFoundError:
        return ["{}: no manifest.json (no finished run, or one interrupted while writing its outputs): re-run the "
                "same command".format(out)]
    except (OSError, ValueError) as error:
        return ["{}: manifest.json is unreadable ({})".format(out, error)]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        return ["{}: manifest.json lists no outputs (written by an older version): re-run the same command".format(out)]
    problems = []
    for name, digest in sorted(manifest["outputs"].items()):
        try:
            if _file_sha256(out / name) != digest:
                problems.append("{}: differs from the one the manifest records".format(out / name))
        except OSError:
            problems.append("{}: missing".format(out / name))
    return problems


def machine():
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
