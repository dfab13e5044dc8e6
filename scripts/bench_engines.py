#!/usr/bin/env python
"""Benchmark the engines side by side in one process: the study's PGD loop per image·step, the same loop on
torchvision's ResNet-152 (the stock reference, where torchvision is installed), and one whole study batch
split into attack / taps + metrics / aggregation.

    python scripts/bench_engines.py --model ResNet ResNetDenoise ResNeXtDenoiseAll --device cuda --images 100 \
        --steps 100 --precision float32 bf16                       # the paper's protocol on a GPU (gpu_check.sh)
    python scripts/bench_engines.py --model ResNet --images 2 --steps 3 --engines torch tensorflow  # this CPU

Per model, engine and precision: a warm-up (one PGD step and one tapped forward pass on the batch: allocation,
kernel choice), then one study batch of ``--images`` images × ``--steps`` steps, timed as the study times it
(`repro.protocol.StudyFlow`: attack, taps + metrics), and the aggregation of its statistics. The stock reference
runs the same loop on torchvision's resnet152 (random weights) for the same batch and steps. Checkpoints are
synthetic (`scripts/synthetic_checkpoint.py`, calibrated in PyTorch, so no TensorFlow is needed for ``--engines
torch``) unless ``--load`` is given; timings do not depend on the weights. ``--markdown FILE`` appends the table,
the command, the machine and the date to FILE (docs/performance.md).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from repro import checkpoints, engines, zoo  # noqa: E402
from repro.protocol import DEFAULT_METRICS, StudyConfig  # noqa: E402

from bench_common import append_markdown, study_inputs, synthetic_checkpoint_path  # noqa: E402


def synchronize(device):
    import torch
    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_engine(engine, spec, checkpoint, args, precision):
    """{per_image_step, attack, taps_metrics, aggregation} of one study batch after a warm-up."""
    from repro import aggregate
    config = StudyConfig(attack_iterations=args.steps, attack_chunk=args.steps, metrics=DEFAULT_METRICS)
    study = engines.study(engine, spec, checkpoint, config, precision=precision, device=args.device)
    images, clean, start, targets = study_inputs(spec, args.images)
    labels = np.arange(args.images) % spec.arch.num_classes
    try:
        study.attack_steps(clean, start, targets, 1)
        study.measure(clean[:2], np.zeros_like(clean[:2]), start[:2])
        if engine == "torch":
            synchronize(study.device)
        result = study.run_batch(images, labels, list(range(args.images)))
        began = time.perf_counter()
        statistics = aggregate.BlockStatistics().add_many(spec.name, result.values)
        aggregate.blocks_frame(statistics, [dict(model=spec.name, block_index=t.block_index, depth_from_end=t.depth_from_end,
                                                 group=t.group, block=t.block, tap=t.name, channels=t.channels,
                                                 height=t.height, width=t.width) for t in study.taps])
        timings = dict(result.timings, aggregation=time.perf_counter() - began)
    finally:
        study.close()
    return dict(timings, per_image_step=timings["attack"] / (args.images * args.steps))


def bench_torchvision(spec, args, precision):
    """The same PGD loop (input gradient of the summed cross-entropy, sign step, projection) on torchvision's
    resnet152 with random weights, after a one-step warm-up: the stock reference, in s per image·step. None where
    torchvision is not installed."""
    import torch

    from repro.engines.torch.external import ExternalModelError, import_torchvision
    try:
        torchvision = import_torchvision()      # also where its compiled operators do not load beside this torch
    except ExternalModelError:
        return None
    from repro.engines import loss_scale
    from repro.engines.torch.engine import IMAGE_SCALE, attack_precision, resolve_device, set_tf32
    device = resolve_device(args.device)
    set_tf32(False)
    model = torchvision.models.resnet152(weights=None).eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _, clean, start, targets = study_inputs(spec, args.images)
    clean, start = torch.from_numpy(clean).to(device), torch.from_numpy(start).to(device)
    targets = torch.from_numpy(targets).to(device)
    epsilon, step = 16 * IMAGE_SCALE, 1 * IMAGE_SCALE
    low, high = torch.clamp(clean - epsilon, -1, 1), torch.clamp(clean + epsilon, -1, 1)

    def attack(steps):
        adversarial = start
        for _ in range(steps):
            adversarial = adversarial.detach().requires_grad_(True)
            with attack_precision(precision, device):
                logits = model(adversarial)
                loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
                gradient, = torch.autograd.grad(loss * (loss_scale(precision) or 1.0), adversarial)
            adversarial = torch.minimum(torch.maximum(adversarial.detach() - step * gradient.sign(), low), high)
        synchronize(device)
    attack(1)
    began = time.perf_counter()
    attack(args.steps)
    return (time.perf_counter() - began) / (args.images * args.steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["ResNet"])
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--load", nargs="+", help="checkpoints, one per --model (default: synthetic)")
    parser.add_argument("--engines", nargs="+", choices=engines.ENGINES, default=["torch"])
    parser.add_argument("--device", default=None, help="torch engine's device (default: a GPU if any)")
    parser.add_argument("--precision", nargs="+", choices=engines.PRECISIONS, default=["float32"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    args = parser.parse_args(argv)

    rows, scratch = [], tempfile.TemporaryDirectory()
    for precision in args.precision:
        for index, name in enumerate(args.model):
            spec = zoo.get_model(name, args.zoo)
            if args.load:
                checkpoint = checkpoints.read_checkpoint(args.load[index])
            elif spec.bundled_dir:
                from repro import cli
                checkpoint = checkpoints.read_checkpoint(cli.checkpoint_path(spec))
            else:
                checkpoint = checkpoints.read_checkpoint(synthetic_checkpoint_path(spec, scratch.name))
            for engine in args.engines:
                if engines.load(engine).precision_unavailable(precision):
                    continue
                measured = bench_engine(engine, spec, checkpoint, args, precision)
                described = engines.describe(engine, precision, args.device)
                rows.append(dict(model=name, engine=engine, precision=precision, device=described["device"], **measured))
                print(rows[-1], flush=True)
        if "ResNet" in args.model and "torch" in args.engines:
            reference = bench_torchvision(zoo.get_model("ResNet", args.zoo), args, precision)
            rows.append(dict(model="torchvision resnet152", engine="torch", precision=precision,
                             device=rows[-1]["device"] if rows else "?", per_image_step=reference))
            print(rows[-1], flush=True)

    header = ("| model | engine | precision | device | PGD s per image·step | study batch: attack s | taps + metrics s | "
              "aggregation s | besides the attack |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        value = "n/a (torchvision not installed)" if row["per_image_step"] is None else "{:.4g}".format(row["per_image_step"])
        besides = "{:.1%}".format((row["taps_metrics"] + row["aggregation"]) / row["attack"]) if "attack" in row else ""
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            row["model"], row["engine"], row["precision"], row["device"], value,
            *("{:.3g}".format(row[k]) if k in row else "" for k in ("attack", "taps_metrics", "aggregation")), besides))
    notes = []
    for precision in args.precision:
        by_model = {r["model"]: r for r in rows if r["engine"] == "torch" and r["precision"] == precision}
        stock = by_model.get("torchvision resnet152", {}).get("per_image_step")
        if "ResNet" in by_model and stock:
            notes.append("{}: the study's ResNet-152 PGD loop / torchvision's resnet152: {:.2f}×".format(
                precision, by_model["ResNet"]["per_image_step"] / stock))
        studied = [r for name, r in by_model.items() if name != "torchvision resnet152"]
        if studied:
            notes.append("{}: the {} model(s) together: attack {:.1f} s, whole study batch {:.1f} s".format(
                precision, len(studied), sum(r["attack"] for r in studied),
                sum(r["attack"] + r["taps_metrics"] + r["aggregation"] for r in studied)))
    table = "\n".join(lines + [""] + notes)
    print(table)
    if args.markdown:
        append_markdown(args.markdown, ", ".join(args.engines), "bench_engines.py", argv,
                        "{} images × {} steps, precision {}, one batch after a warm-up".format(
                            args.images, args.steps, " and ".join(args.precision)), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
