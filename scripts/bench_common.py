"""What the benchmark scripts share: timing, the study's inputs, and the dated entry in docs/performance.md."""
import datetime
import os
import platform
import sys
import time

import numpy as np


def best_of(function, repeats):
    """The fastest of ``repeats`` runs of ``function`` after one warm-up run (allocation, autotuning, caches,
    compilation); the slower runs include interference from other processes."""
    function()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def study_inputs(spec, count, seed=0, epsilon_pixels=16.0):
    """A batch as the study feeds it: random BGR images, the clean NCHW input in [-1, 1], PGD's random start
    within ε and the random targets, drawn as `repro.protocol` draws them (timings do not depend on them)."""
    from repro.data import to_model_space
    from repro.protocol import perturbation_draws, random_targets
    size = spec.arch.input_size
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.uint8)
    clean = to_model_space(images)
    draws = perturbation_draws(seed, range(count), clean.shape[1:], spec.arch.num_classes)
    targets = random_targets(np.arange(count) % spec.arch.num_classes, draws["target_offset"], spec.arch.num_classes)
    return images, clean, clean + draws["start"] * np.float32(epsilon_pixels * 2 / 255), targets


def append_markdown(path, title, script, argv, description, table):
    """Append a dated entry — title, the command, what it ran, this machine — and its table to ``path``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(sys.argv[1:] if argv is None else argv)
    with open(path, "a") as stream:
        stream.write("\n### {} — {}\n\n`python scripts/{} {}`; {}; {} ({} CPUs)\n\n{}\n".format(
            stamp, title, script, command, description, platform.platform(), os.cpu_count(), table))


def synthetic_checkpoint_path(spec, scratch):
    """A synthetic checkpoint of ``spec`` made in PyTorch (no TensorFlow needed), in $REPRO_SYNTHETIC_DIR when set
    (so that the steps of scripts/gpu_check.sh make each one once), else in ``scratch``; reused when present."""
    from pathlib import Path
    folder = Path(os.environ.get("REPRO_SYNTHETIC_DIR") or scratch)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "{}-{}-synthetic.npz".format(spec.zoo, spec.name)
    if not path.exists():
        from repro.engines.torch.synthetic import write_synthetic_checkpoint
        write_synthetic_checkpoint(spec, path)
    return path
