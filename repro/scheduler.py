"""Which batches of the study run where: in this process, on Ray actors (``--workers N`` on this machine, or
``--ray [ADDRESS]`` on a cluster), or as one shard of a fixed partition (``--shard I/K``, ``--shard slurm``).

One protocol for all of them. The driver — the process that owns ``--out`` — decides the pending batches
(`repro.runner.resume_state`) and commits every batch itself (`commit_outcome`); a `ModelWorker`, wherever
it runs, only computes: it builds one model once, checks it (`ModelWorker.sanity_check`), and turns a batch
(first, last) into a `BatchOutcome` of per-image records and sufficient statistics (small: no feature map
leaves it, except the few the figures ask for). So Ray workers need the data but no shared output folder,
and a batch is committed once, by one process, whichever worker computed it.
"""
import dataclasses
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from repro import engines, zoo

log = logging.getLogger("repro.scheduler")
BATCH_ATTEMPTS = 3                     # a batch whose worker dies is retried on a restarted worker this often


@dataclasses.dataclass
class RunPlan:
    """What a worker needs to rebuild the run in its own process (picklable)."""
    specs: list                        # zoo.ModelSpec of each model
    checkpoints: Dict[str, tuple]      # model → (path, SHA-256 the driver read)
    config: object                     # repro.protocol.StudyConfig
    engine: str = engines.DEFAULT_ENGINE
    precision: str = "float32"
    device: Optional[str] = None
    data: Optional[str] = None
    images: int = 100
    seed: int = 0
    visualize: int = 0                 # K channels per panel for the feature-map figure (batch 0), 0 = none
    save_adversarial: bool = False
    no_check: bool = False
    deterministic: bool = True         # deterministic GPU kernels (--nondeterministic: False)

    def spec(self, model):
        return next(spec for spec in self.specs if spec.name == model)

    def selection(self):
        from repro import runner
        return runner.image_selection(self.specs[0], self.data, self.images, self.seed)


@dataclasses.dataclass
class BatchOutcome:
    """One computed batch, ready to commit: records, statistics, info, and what the figures and
    ``--save-adv`` need from it."""
    records: object                    # pandas DataFrame, one row per image
    statistics: object                 # repro.aggregate.BlockStatistics
    info: dict                         # images, skipped, timings, device, worker
    panels: Optional[list] = None      # feature-map panels (batch 0 with --visualize)
    adversarial: Optional[dict] = None  # image ids, adversarial images, labels, targets (--save-adv)


class ModelWorker:
    """One model of the run in this process: built once, computing batches without committing them."""

    def __init__(self, plan, model, selection=None, worker="local"):
        self.plan, self.spec = plan, plan.spec(model)
        self.selection = selection if selection is not None else plan.selection()
        path, self.sha256 = plan.checkpoints[model]
        self.worker = worker
        began = time.perf_counter()
        self.study = engines.study(plan.engine, self.spec, path, plan.config, plan.precision, plan.device,
                                   plan.deterministic)
        self.build_seconds = time.perf_counter() - began
        if self.study.checkpoint.sha256 != self.sha256:
            self.study.close()
            from repro.cli import RunFailed
            raise RunFailed("{} changed on disk after the run started (SHA-256 {} → {}): nothing was computed from "
                            "it; re-run the command".format(path, self.sha256[:12], self.study.checkpoint.sha256[:12]))
        self.device = engines.describe(plan.engine, plan.precision, plan.device, plan.deterministic)["device"]

    def sanity_check(self):
        """Clean accuracy on the studied images beside the published one; stop on a clearly broken checkpoint.

        "Clearly broken": non-finite logits (always fatal), or the 95% Wilson upper bound of the measured
        accuracy below half the published accuracy (e.g. near chance where 62% is published) — a wrong or
        damaged checkpoint, or wrong preprocessing, whose feature maps would mean nothing. ``no_check``
        skips the accuracy stop, not the report.
        """
        from repro import cli
        from repro.aggregate import wilson_interval
        from repro.data import iterate_batches
        spec, selection = self.spec, self.selection
        published = zoo.published_numbers(spec)
        published = 100.0 - published[0].top1_error if 0 in published else None
        correct = total = 0
        for indices, images, _ in iterate_batches(selection.paths, 32, selection.loader):
            if len(indices):
                logits = self.study.clean_logits_of(images)
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
            message = ("{}: clean accuracy {:.1f}% (95% CI up to {:.1f}%) on {} images, far below the published "
                       "{:.1f}%: the checkpoint or the data looks broken (wrong file, wrong --model, damaged weights, "
                       "or labels not in sorted-wnid order)".format(spec.name, result["accuracy"], 100 * high, total,
                                                                   published))
            if not self.plan.no_check:
                raise cli.UsageError(message + "; pass --no-check to study it anyway")
            log.warning(message)
        return result

    def compute(self, first, last, on_steps=None):
        """The batch of images first … last → `BatchOutcome` (nothing is written). The images' SHA-256 (read
        before and after loading them: an image rewritten meanwhile stops the batch) go into its identity."""
        from repro import cli, runner
        from repro.data import iterate_batches
        selection, plan = self.selection, self.plan
        ids = list(range(first, last + 1))
        digests = [selection.digest(i) for i in ids]
        loaded = list(iterate_batches([selection.paths[i] for i in ids], len(ids), selection.loader))
        changed = [selection.paths[i] for i, digest in zip(ids, digests) if selection.digest(i) != digest]
        if changed:
            raise cli.RunFailed("{} changed while it was being read (batch {} of {}): nothing was committed from it; "
                                "re-run the same command".format(changed[0], runner.WorkDirectory.batch_stem(first, last),
                                                                 self.spec.name))
        indices, images, skipped = loaded[0] if loaded else ([], None, [])
        skipped = [(ids[i], path, error.reason) for i, path, error in skipped]
        image_ids = [ids[i] for i in indices]
        result, panels, adversarial = None, None, None
        feature_blocks = visualize_blocks(self.study.taps) if plan.visualize and first == 0 else ()
        parts = []
        if image_ids:
            result = self.run_in_parts(images, selection.labels[image_ids], image_ids, on_steps, feature_blocks, parts)
            broken = [image_id for image_id, finite in zip(image_ids, result.clean_finite) if not finite]
            if broken:
                raise cli.RunFailed(
                    "{}: the clean forward pass gives non-finite logits or feature maps for image(s) {} (e.g. {}): the "
                    "checkpoint or the input is broken; batch {} was not committed".format(
                        self.spec.name, broken[:5], selection.paths[broken[0]], runner.WorkDirectory.batch_stem(first, last)))
            if feature_blocks:
                panels = feature_panels(self.study.taps, result, plan.visualize, plan.engine)
            if plan.save_adversarial:
                adversarial = {"image_ids": list(result.image_ids), "images": result.adversarial.astype(np.float32),
                               "labels": np.asarray(result.labels), "targets": np.asarray(result.targets)}
        records = runner.batch_records(self.spec.name, result, selection.paths, skipped, plan.config.attack)
        info = {"images": len(image_ids), "skipped": len(skipped), "timings": result.timings if result else {},
                "device": self.device, "worker": self.worker, "image_sha256": digests,
                "checkpoint_dtypes": self.study.checkpoint.dtypes(), "deterministic": plan.deterministic,
                **({"split": parts} if len(parts) > 1 else {})}
        return BatchOutcome(records, runner.batch_statistics(self.spec.name, first, last, result), info, panels,
                            adversarial)

    def run_in_parts(self, images, labels, image_ids, on_steps, feature_blocks, parts):
        """``study.run_batch`` on the images, in halves (recursively, down to one image) where the device runs out
        of memory: each image's numbers do not depend on the images beside it (its draws are its own), so the
        result is that of a run with a smaller ``--batch``. ``parts`` receives the [first, last] image ids of each
        part computed. One image that does not fit is one line naming the model, the device and its memory."""
        from repro import cli
        try:
            result = self.study.run_batch(images, labels, image_ids, on_steps=on_steps, feature_blocks=feature_blocks)
            parts.append([int(image_ids[0]), int(image_ids[-1])])
            return result
        except Exception as error:                         # noqa: BLE001  (only out-of-memory errors are handled)
            memory = engines.out_of_memory(self.plan.engine, error, self.plan.device)
            if memory is None:
                raise
        if len(image_ids) == 1:
            raise cli.RunFailed("{}: one image does not fit in memory on {} ({} precision): the batches committed so "
                                "far are kept; use a device with more memory, --precision bf16, or fewer taps "
                                "(--metrics)".format(self.spec.name, memory, self.plan.precision)) from None
        half = len(image_ids) // 2
        log.warning("%s: images %d–%d do not fit in memory on %s; computing them in two halves (as with a smaller "
                    "--batch)", self.spec.name, image_ids[0], image_ids[-1], memory)
        first = self.run_in_parts(images[:half], labels[:half], image_ids[:half], on_steps, feature_blocks, parts)
        second = self.run_in_parts(images[half:], labels[half:], image_ids[half:], on_steps, (), parts)
        return merge_results(first, second)

    def close(self):
        self.study.close()


def merge_results(first, second):
    """One `repro.protocol.BatchResult` of two parts of a batch, in image order (feature maps: the first part's,
    which holds the batch's first image, the one the figure shows)."""
    from repro.protocol import BatchResult
    join = np.concatenate
    return BatchResult(
        image_ids=list(first.image_ids) + list(second.image_ids), labels=join([first.labels, second.labels]),
        targets=join([first.targets, second.targets]),
        predictions={key: join([first.predictions[key], second.predictions[key]]) for key in first.predictions},
        values={key: join([first.values[key], second.values[key]]) for key in first.values},
        adversarial=join([first.adversarial, second.adversarial]),
        clean_finite=join([first.clean_finite, second.clean_finite]),
        timings={key: first.timings.get(key, 0.0) + second.timings.get(key, 0.0)
                 for key in set(first.timings) | set(second.timings)},
        feature_maps=first.feature_maps)


def visualize_blocks(taps, count=4):
    """A few blocks spread over depth: the first, the last, and evenly between."""
    positions = np.unique(np.linspace(0, len(taps) - 1, min(count, len(taps))).round().astype(int))
    return tuple(taps[i].block_index for i in positions)


def feature_panels(taps, result, k, engine):
    """Fig. 2.1-like panels for image 0: per chosen block, the k channels where adversarial and random SSIM
    differ most (SSIM is computed for the panels even when not among --metrics)."""
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
                "clean": clean[0, channel], "random": random[0, channel], "adversarial": adversarial[0, channel],
                "image": result.image_ids[0]})
    return panels


def commit_outcome(work, model, first, last, outcome, identity, save_adv=None, paths=None, checkpoint=None,
                   visualize=0):
    """The driver's side of a batch: the feature-map figure (into the work folder: the run's outputs take it from
    there, `feature_map_figures`) and the adversarial images it carries, then the atomic commit. The receipt says
    what was made besides the tables, so that a resume with other ``--visualize``/``--save-adv`` can say so."""
    import json

    from repro import plots
    made = {}
    if outcome.panels:
        stem = work.model_dir(model) / (work.batch_stem(first, last) + "-feature_maps")
        plots.plot_feature_maps(outcome.panels, stem, title="{}: image {}".format(model, outcome.panels[0]["image"]))
        made["feature_maps"] = {"file": stem.name, "channels": visualize}
    if outcome.adversarial and save_adv:
        directory = Path(save_adv) / model
        directory.mkdir(parents=True, exist_ok=True)
        adversarial = outcome.adversarial
        for position, image_id in enumerate(adversarial["image_ids"]):
            np.save(directory / "{:06d}.npy".format(image_id), adversarial["images"][position])
            (directory / "{:06d}.json".format(image_id)).write_text(json.dumps({
                "image": image_id, "path": str(paths[image_id]), "label": int(adversarial["labels"][position]),
                "target": int(adversarial["targets"][position]), "space": "NCHW, x*2/255-1 of BGR pixels"}))
        made["adversarial_saved"] = str(Path(save_adv).resolve())
    work.commit_batch(model, first, last, outcome.records, outcome.statistics,
                      dict(outcome.info, checkpoint=checkpoint, **made), identity)


def feature_map_figures(work, model, receipts):
    """The feature-map figure of ``model`` among its committed batches (``receipts``: {(first, last): receipt}), as
    {output file name: file in the work folder}; empty when the batch that holds it was computed without
    ``--visualize``."""
    figures = {}
    for (first, last), receipt in sorted(receipts.items()):
        made = receipt.get("feature_maps")
        if made:
            for suffix in (".png", ".pdf"):
                source = work.model_dir(model) / (made["file"] + suffix)
                if source.is_file():
                    figures["feature_maps_{}{}".format(model, suffix)] = source
    return figures


def resume_notes(model, receipts, visualize, save_adv):
    """What a resume cannot give for batches committed earlier with other ``--visualize``/``--save-adv`` (they are
    not recomputed for figures or files): one line each, to be logged."""
    notes = []
    if visualize and receipts and min(receipts)[0] == 0:
        made = receipts[min(receipts)].get("feature_maps")
        if not made or made.get("channels") != visualize:
            notes.append("{}: --visualize {} does not apply to its first batch, committed by an earlier run {}: its "
                         "feature-map figure {}; delete its work folder's batch-000000-* files (or use a new --out) to "
                         "recompute it".format(model, visualize, "without --visualize" if not made else
                                               "with --visualize {}".format(made.get("channels")),
                                               "is not drawn" if not made else "stays as it was"))
    if save_adv:
        wanted = str(Path(save_adv).resolve())
        missing = [bounds for bounds, receipt in sorted(receipts.items()) if receipt.get("adversarial_saved") != wanted]
        if missing:
            notes.append("{}: --save-adv does not apply to {} batch(es) committed by an earlier run without it (first: "
                         "images {}–{}): their adversarial images are not in {}; delete those batches (or use a new "
                         "--out) to recompute them".format(model, len(missing), missing[0][0], missing[0][1], save_adv))
    return notes


def run_local(plan, pending, commit, selection, progress=None):
    """Every pending batch in this process, model after model; returns each model's clean check and the
    summed timings. ``pending``: {model: [(first, last)]}; ``commit(model, first, last, outcome)``."""
    from tqdm import tqdm
    checks, timings = {}, defaultdict(float)
    for spec in plan.specs:
        batches = pending.get(spec.name, [])
        worker = ModelWorker(plan, spec.name, selection)
        timings["graph_build_and_restore"] += worker.build_seconds
        steps = tqdm(total=plan.config.attack_iterations, unit="step", desc="  PGD", position=1, leave=False)
        try:
            checks[spec.name] = worker.sanity_check()
            for first, last in batches:
                steps.reset()
                outcome = worker.compute(first, last, on_steps=steps.update)
                for key, seconds in outcome.info["timings"].items():
                    timings[key] += seconds
                commit(spec.name, first, last, outcome)
                if progress:
                    progress(last - first + 1)
        finally:
            steps.close()
            worker.close()
    return checks, dict(timings)


# --- Ray ----------------------------------------------------------------------------------------------------

def ray_module():
    try:
        import ray
    except ImportError:
        from repro.engines import EngineUnavailable
        raise EngineUnavailable("--workers and --ray need Ray (requirements.txt: pip install ray), which could not "
                                "be imported") from None
    return ray


class StudyActor:
    """A Ray actor: one worker slot. It rebuilds the run's selection once and each model when first asked
    (keeping one model at a time), and computes batches for the driver."""

    def __init__(self, plan, slot):
        import socket
        self.plan, self.slot, self.models = plan, slot, {}
        self.selection = plan.selection()
        self.name = "slot {} (pid {} on {})".format(slot, os.getpid(), socket.gethostname())

    def _worker(self, model):
        if model not in self.models:
            for other in list(self.models):
                self.models.pop(other).close()
            self.models[model] = ModelWorker(self.plan, model, self.selection, worker=self.name)
        return self.models[model]

    def sanity_check(self, model):
        worker = self._worker(model)
        return worker.sanity_check(), worker.build_seconds

    def compute(self, model, first, last):
        return self._worker(model).compute(first, last)


RAY_CONNECT_SECONDS = 60
"""How long joining a Ray cluster (``--ray ADDRESS``) may take before the run gives up ($REPRO_RAY_TIMEOUT)."""


@dataclasses.dataclass
class RaySession:
    """A connection to Ray made before ``--out`` is claimed (`connect_ray`): the cluster answered and can place
    ``actors`` workers with ``resources`` each."""
    ray: object
    actors: int
    resources: dict
    threads: int
    startup_seconds: float
    started_here: bool

    def close(self):
        if self.started_here:
            self.ray.shutdown()


def worker_resources(cluster, count):
    """Per actor: one GPU where the Ray cluster has GPUs (Ray sets CUDA_VISIBLE_DEVICES), else a share of its
    CPUs; the thread count the engines use follows the CPU share ($REPRO_THREADS)."""
    cpus = max(1, int(cluster.get("CPU", 1)) // count)
    if cluster.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}, cpus
    return {"num_cpus": cpus}, cpus


def placeable_workers(cluster):
    """How many workers Ray can place on a cluster with these resources: one per GPU where there are GPUs, else
    one per CPU (each needs at least one)."""
    gpus = int(cluster.get("GPU", 0))
    return gpus if gpus >= 1 else int(cluster.get("CPU", 0))


def _probe(address, seconds=5.0):
    """Refuse at once a ``host:port`` (or ``ray://host:port``) that does not accept TCP connections: Ray itself
    would retry such an address for ever."""
    import socket
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None                                      # e.g. 'auto': Ray answers for itself at once
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        from repro.cli import RunFailed
        raise RunFailed("--ray {}: nothing answers there ({}): start the cluster (ray start --head) or check the "
                        "address; nothing was computed".format(address, error.strerror or type(error).__name__)) from None


def connect_ray(address=None, workers=None):
    """Join Ray — a local instance (``address`` None) or a cluster (``auto``, ``host:port``, ``ray://host:port``) —
    and check that it can place the workers, before anything is claimed or computed. An address that does not
    answer, a connection that takes longer than $REPRO_RAY_TIMEOUT seconds (default `RAY_CONNECT_SECONDS`), and
    more ``workers`` than the cluster can place (their actors would wait for ever) are one line each."""
    import threading

    from repro.cli import RunFailed
    ray = ray_module()
    began = time.perf_counter()
    started_here = not ray.is_initialized()
    handlers = _signal_handlers()
    if started_here:
        options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address is None:
            ray.init(num_cpus=os.cpu_count(), **options)
        else:
            _probe(address)
            limit = float(os.environ.get("REPRO_RAY_TIMEOUT", RAY_CONNECT_SECONDS))
            outcome = {}

            def join():
                try:
                    ray.init(address=address, **options)
                    outcome["joined"] = True
                except Exception as error:           # noqa: BLE001  (reported below, in the main thread)
                    outcome["error"] = error
            thread = threading.Thread(target=join, daemon=True, name="ray-connect")
            thread.start()
            thread.join(limit)
            if thread.is_alive():
                raise RunFailed("--ray {}: no Ray cluster answered within {:g} s (set REPRO_RAY_TIMEOUT to wait longer); "
                                "nothing was computed".format(address, limit))
            if "error" in outcome:
                raise RunFailed("--ray {}: {}; nothing was computed".format(
                    address, str(outcome["error"]).splitlines()[0] or type(outcome["error"]).__name__))
    startup = time.perf_counter() - began
    _restore_signal_handlers(handlers)
    try:
        cluster = ray.cluster_resources()
        if workers is None:                      # --ray without --workers: one actor per GPU of the cluster
            workers = max(1, int(cluster.get("GPU", 0)))
        placeable = placeable_workers(cluster)
        if workers > placeable:
            raise RunFailed("--workers {}: Ray can place at most {} worker(s) here ({} CPU(s), {} GPU(s); each worker "
                            "needs {}): use --workers {} or fewer".format(
                                workers, placeable, int(cluster.get("CPU", 0)), int(cluster.get("GPU", 0)),
                                "one GPU" if cluster.get("GPU", 0) >= 1 else "one CPU", max(placeable, 1)))
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    resources, threads = worker_resources(cluster, workers)
    return RaySession(ray, workers, resources, threads, startup, started_here)


def _signal_handlers():
    """The Python handlers of SIGINT and SIGTERM (main thread only; elsewhere none can be set)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers):
    """``ray.init`` installs its own SIGTERM handlers — a Python one calling ``sys.exit(15)`` and a native one
    printing a stack dump — over the run's (SIGTERM as an interrupt under `repro.cli.run_main`): the run's are
    installed again, which also replaces the native one."""
    import signal
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)


def run_ray(session, plan, pending, commit, progress=None):
    """The pending batches on the Ray actors of ``session`` (`connect_ray`). Each model is checked once (on one
    actor) before its batches are handed out; batches go to whichever actor is free; the driver commits each
    result as it arrives. A batch whose actor dies is retried on the restarted actor (up to BATCH_ATTEMPTS); an
    error in the computation itself (a broken checkpoint, an unreadable input) stops the run with that error."""
    ray, actors = session.ray, session.actors
    log.info("Ray: %d actor(s) with %s each (%s threads); start-up %.1f s", actors, session.resources,
             session.threads, session.startup_seconds)
    remote = ray.remote(max_restarts=BATCH_ATTEMPTS, max_task_retries=BATCH_ATTEMPTS, **session.resources)(StudyActor)
    # The actors import repro as the driver does: from an installed package, or from this checkout.
    code = str(Path(__file__).resolve().parent.parent)
    runtime = {"env_vars": {"REPRO_THREADS": str(session.threads), "PYTHONPATH": os.pathsep.join(
        part for part in (code, os.environ.get("PYTHONPATH")) if part)}}
    handles = [remote.options(runtime_env=runtime).remote(plan, slot) for slot in range(actors)]
    checks, timings = {}, defaultdict(float)
    timings["ray_startup"] = session.startup_seconds
    queue = [(spec.name, first, last) for spec in plan.specs for first, last in pending.get(spec.name, [])]
    # Each model is checked once, by the first actor that gets one of its batches, just before that batch
    # (an actor runs its calls in order); a free actor takes its next batch by `next_batch`.
    check_futures, holding, running, free = {}, {}, {}, list(handles)
    for spec in plan.specs:
        if not pending.get(spec.name):            # nothing to compute, but the check is still reported
            check_futures[spec.name] = handles[0].sanity_check.remote(spec.name)

    def settle_check(model):
        if model not in checks:
            checks[model], build_seconds = _get(ray, check_futures[model], "the clean-accuracy check of " + model)
            timings["graph_build_and_restore"] += build_seconds
    while queue or running:
        while queue and free:
            handle = free.pop(0)
            item = next_batch(queue, holding.get(handle),
                              {model for other, model in holding.items() if other is not handle})
            queue.remove(item)
            if item[0] not in check_futures:
                check_futures[item[0]] = handle.sanity_check.remote(item[0])
            holding[handle] = item[0]
            running[handle.compute.remote(*item)] = (item, handle)
        done, _ = ray.wait(list(running), num_returns=1)
        item, handle = running.pop(done[0])
        settle_check(item[0])
        outcome = _get(ray, done[0], "batch {}-{} of {}".format(item[1], item[2], item[0]))
        for key, seconds in outcome.info["timings"].items():
            timings[key] += seconds
        commit(*item, outcome)
        if progress:
            progress(item[2] - item[1] + 1)
        free.append(handle)
    for model in check_futures:
        settle_check(model)
    return checks, dict(timings)


def next_batch(queue, own, held_elsewhere):
    """The batch (model, first, last) a free actor takes from ``queue``: one of the model it holds (``own``); else
    one of a model no other actor holds (``held_elsewhere``); else the first. Each model is then built, restored
    and its metric functions compiled on as few actors as possible — on a 2-core machine those are about 9 s per
    miniature model and actor (make demo: 3 models on 2 actors); which actor computes a batch changes no number."""
    for wanted in (lambda model: model == own, lambda model: model not in held_elsewhere):
        item = next((item for item in queue if wanted(item[0])), None)
        if item is not None:
            return item
    return queue[0]


def _get(ray, future, what):
    """The result of a Ray call; the computation's own error is raised as itself (one line at the command
    line), a worker that kept dying as RunFailed naming the batch."""
    from repro.cli import RunFailed
    try:
        return ray.get(future)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise RunFailed("{} failed on a Ray worker: {}".format(what, str(error).splitlines()[-1])) from None
    except ray.exceptions.RayError as error:
        last = [line for line in str(error).splitlines() if line.strip()]
        raise RunFailed("{} failed: its Ray worker died {} times ({}); batches committed so far are kept, re-run "
                        "the same command to resume".format(what, BATCH_ATTEMPTS + 1,
                                                            last[0] if last else type(error).__name__)) from None
