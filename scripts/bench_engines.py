#!/usr/bin/env python
"""Benchmark the engines side by side in one process: the study's PGD loop per image·step, the same loop on
torchvision's ResNet-152 (the stock reference, where torchvision is installed), and one whole study batch
split into attack / taps + metrics / aggregation.

    python scripts/bench_engines.py --model ResNet --device cuda --images 100 --steps 100     # a GPU
    python scripts/bench_engines.py --model ResNet --images 2 --steps 3 --engines torch tensorflow  # this CPU

Checkpoints are synthetic (`scripts/synthetic_checkpoint.py`, calibrated in PyTorch, so no TensorFlow is
needed for ``--engines torch``) unless ``--load`` is given; timings do not depend on the weights. Each
figure is the best of ``--repeats`` runs after one warm-up run. ``--markdown FILE`` appends the table, the
command, the machine and the date to FILE (docs/performance.md).
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

from bench_common import append_markdown, best_of, study_inputs  # noqa: E402


def synchronize(device):
    import torch
    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_engine(engine, spec, checkpoint, args):
    """(seconds per image·step of the PGD loop, {attack, taps_metrics, aggregation} of one study batch)."""
    from repro import aggregate
    config = StudyConfig(attack_iterations=args.steps, attack_chunk=args.steps, metrics=DEFAULT_METRICS)
    study = engines.study(engine, spec, checkpoint, config, precision=args.precision, device=args.device)
    images, clean, start, targets = study_inputs(spec, args.images)
    try:
        def attack():
            study.attack_steps(clean, start, targets, args.steps)
            if engine == "torch":
                synchronize(study.device)
        per_image_step = best_of(attack, args.repeats) / (args.images * args.steps)
        result = study.run_batch(images, np.arange(args.images) % spec.arch.num_classes, list(range(args.images)))
        began = time.perf_counter()
        statistics = aggregate.BlockStatistics().add_many(spec.name, result.values)
        aggregate.blocks_frame(statistics, [dict(model=spec.name, block_index=t.block_index, depth_from_end=t.depth_from_end,
                                                 group=t.group, block=t.block, tap=t.name, channels=t.channels,
                                                 height=t.height, width=t.width) for t in study.taps])
        split = dict(result.timings, aggregation=time.perf_counter() - began)
    finally:
        study.close()
    return per_image_step, split


def bench_torchvision(spec, args):
    """The same PGD loop (input gradient of the summed cross-entropy, sign step, projection) on torchvision's
    resnet152 with random weights: the stock reference. None where torchvision is not installed."""
    try:
        import torch
        import torchvision
    except ImportError:
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

    def attack():
        adversarial = start
        for _ in range(args.steps):
            adversarial = adversarial.detach().requires_grad_(True)
            with attack_precision(args.precision, device):
                logits = model(adversarial)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            gradient, = torch.autograd.grad(loss * (loss_scale(args.precision) or 1.0), adversarial)
            adversarial = torch.minimum(torch.maximum(adversarial.detach() - step * gradient.sign(), low), high)
        synchronize(device)
    return best_of(attack, args.repeats) / (args.images * args.steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["ResNet"])
    parser.add_argument("--zoo", default=zoo.DEFAULT_ZOO, choices=sorted(zoo.ZOOS))
    parser.add_argument("--load", nargs="+", help="checkpoints, one per --model (default: synthetic)")
    parser.add_argument("--engines", nargs="+", choices=engines.ENGINES, default=["torch"])
    parser.add_argument("--device", default=None, help="torch engine's device (default: a GPU if any)")
    parser.add_argument("--precision", choices=engines.PRECISIONS, default="float32")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    args = parser.parse_args(argv)

    rows, scratch = [], tempfile.TemporaryDirectory()
    for index, name in enumerate(args.model):
        spec = zoo.get_model(name, args.zoo)
        if args.load:
            checkpoint = checkpoints.read_checkpoint(args.load[index])
        elif spec.bundled_dir:
            from repro import cli
            checkpoint = checkpoints.read_checkpoint(cli.checkpoint_path(spec))
        else:
            from repro.engines.torch.synthetic import write_synthetic_checkpoint
            checkpoint = checkpoints.read_checkpoint(write_synthetic_checkpoint(spec, Path(scratch.name) / "c.npz"))
        for engine in args.engines:
            per_step, split = bench_engine(engine, spec, checkpoint, args)
            described = engines.describe(engine, args.precision, args.device)
            rows.append(dict(model=name, engine=engine, device=described["device"], per_image_step=per_step,
                             **split))
            print(rows[-1], flush=True)
        if name == "ResNet" and args.zoo == "imagenet" and "torch" in args.engines:
            reference = bench_torchvision(spec, args)
            rows.append(dict(model="torchvision resnet152", engine="torch", device=rows[-1]["device"],
                             per_image_step=reference))
            print(rows[-1], flush=True)

    header = "| model | engine | device | PGD s per image·step | study batch: attack s | taps + metrics s | aggregation s |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        value = "n/a (torchvision not installed)" if row["per_image_step"] is None else "{:.4g}".format(row["per_image_step"])
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            row["model"], row["engine"], row["device"], value, *("{:.3g}".format(row[k]) if k in row else ""
                                                                 for k in ("attack", "taps_metrics", "aggregation"))))
    torch_rows = {r["model"]: r for r in rows if r["engine"] == "torch"}
    ratio = None
    if "ResNet" in torch_rows and torch_rows.get("torchvision resnet152", {}).get("per_image_step"):
        ratio = torch_rows["ResNet"]["per_image_step"] / torch_rows["torchvision resnet152"]["per_image_step"]
        lines.append("\nStudy's ResNet-152 PGD loop / torchvision's: {:.2f}×".format(ratio))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        append_markdown(args.markdown, ", ".join(args.engines), "bench_engines.py", argv,
                        "{} images × {} steps, precision {}, best of {} after a warm-up".format(
                            args.images, args.steps, args.precision, args.repeats), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
