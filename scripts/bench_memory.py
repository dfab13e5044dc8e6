#!/usr/bin/env python
"""Peak memory of the study's tapped forward pass (every block measured) against a plain forward pass of the same
batch, per model: the taps must not hold the network's maps (target: at most 1.5× the plain pass's peak).

    python scripts/bench_memory.py --device cuda --images 100                      # a GPU: max_memory_allocated
    python scripts/bench_memory.py --zoo mini imagenet --images 2 --engines torch tensorflow   # this CPU: RSS

One "batch" is the study's: N clean images, their random and adversarial versions (3N through the network). On a
GPU the figures are PyTorch's allocator peaks above the memory held before the pass (weights, inputs); on the CPU
each pass runs in a process of its own and the figure is its peak resident set above its size just before the
pass (``ru_maxrss``; TensorFlow's allocator and PyTorch's both show there). Checkpoints are synthetic for the
ImageNet zoo (the numbers do not depend on the weights). ``--markdown FILE`` appends the table to FILE.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import append_markdown, study_inputs, synthetic_checkpoint_path  # noqa: E402

TARGET = 1.5


def checkpoint_for(spec, scratch):
    from repro import cli
    return str(cli.checkpoint_path(spec) if spec.bundled_dir else synthetic_checkpoint_path(spec, scratch))


def measure_once(engine, name, zoo_name, checkpoint, images, device, mode):
    """One pass ('plain' or 'tapped') in this process: bytes above the memory held just before it."""
    import resource

    from repro import engines, zoo
    from repro.protocol import DEFAULT_METRICS, StudyConfig
    spec = zoo.get_model(name, zoo_name)
    study = engines.study(engine, spec, checkpoint, StudyConfig(attack_iterations=0, metrics=DEFAULT_METRICS),
                          device=device)
    _, clean, start, _ = study_inputs(spec, images)
    noise = (start - clean) / (16 * 2 / 255)
    cuda = engine == "torch" and study.device.type == "cuda"
    if cuda:
        import torch
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _resident_bytes()
    if mode == "plain":
        study.clean_logits(np.concatenate([clean, np.clip(clean + noise, -1, 1), start]))
    else:
        study.measure(clean, noise, start)
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _resident_bytes():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(engine, spec, checkpoint, images, device):
    """(plain, tapped) peaks in bytes, each pass in a fresh process on the CPU (ru_maxrss is a process's lifetime
    peak), in this one on a GPU (the allocator's peak is reset between passes)."""
    if device and device.startswith("cuda"):
        return tuple(measure_once(engine, spec.name, spec.zoo, checkpoint, images, device, mode)
                     for mode in ("plain", "tapped"))
    peaks = []
    for mode in ("plain", "tapped"):
        code = ("import sys; sys.path.insert(0, {!r}); sys.path.insert(0, {!r}); import bench_memory, json; "
                "print(json.dumps(bench_memory.measure_once({!r}, {!r}, {!r}, {!r}, {}, {!r}, {!r})))").format(
                    str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent), engine,
                    spec.name, spec.zoo, checkpoint, images, device, mode)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
        if result.returncode:
            raise RuntimeError("{} {} {}: {}".format(engine, spec.name, mode, result.stderr[-2000:]))
        peaks.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return tuple(peaks)


def main(argv=None):
    from repro import zoo
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", nargs="+", default=["mini", "imagenet"], choices=sorted(zoo.ZOOS))
    parser.add_argument("--model", nargs="+", default=["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
    parser.add_argument("--engines", nargs="+", default=["torch"], choices=["torch", "tensorflow"])
    parser.add_argument("--device", default=None, help="torch engine: cpu or cuda (default: a GPU if any)")
    parser.add_argument("--images", type=int, default=2, help="N: the pass holds 3N images")
    parser.add_argument("--markdown", help="append the results to this Markdown file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio is above the target")
    args = parser.parse_args(argv)
    args.zoo = list(dict.fromkeys(args.zoo))
    if args.device is None:
        try:
            import torch
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            args.device = "cpu"
    rows, scratch = [], tempfile.TemporaryDirectory()
    for zoo_name in args.zoo:
        for name in args.model:
            spec = zoo.get_model(name, zoo_name)
            for engine in args.engines:
                device = args.device if engine == "torch" else None
                plain, tapped = measure(engine, spec, checkpoint_for(spec, scratch.name), args.images, device)
                rows.append(dict(model="{} ({})".format(name, zoo_name), engine=engine,
                                 device=device or "cpu", plain=plain, tapped=tapped, ratio=tapped / max(plain, 1)))
                print(json.dumps(rows[-1]), flush=True)
    lines = ["| model | engine | device | plain forward of 3N, MB | tapped forward + metrics, MB | ratio (target ≤ {}) |"
             .format(TARGET), "|---|---|---|---|---|---|"]
    lines += ["| {model} | {engine} | {device} | {:.1f} | {:.1f} | {ratio:.2f} |".format(
        row["plain"] / 1e6, row["tapped"] / 1e6, **row) for row in rows]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        append_markdown(args.markdown, "peak memory of the tapped forward pass", "bench_memory.py", argv,
                        "N = {} (3N images per pass)".format(args.images), table)
    return 1 if args.check and any(row["ratio"] > TARGET for row in rows) else 0


import numpy as np  # noqa: E402  (after main's imports are resolved, for measure_once in child processes)

if __name__ == "__main__":
    sys.exit(main())
