"""Synthetic checkpoints with the real names and shapes, made without TensorFlow.

The weights are `repro.checkpoints.synthetic_arrays` (as for the TensorFlow engine); the BatchNorm statistics
are calibrated by one PyTorch pass over seeded random images in which every BatchNorm first takes its input's
batch mean and (biased) variance as its ``mean/EMA`` and ``variance/EMA`` — what a training-mode pass with
momentum 0 does — so inference on those images gives standardised activations, as in a trained network.
For tests and dry runs; the numbers mean nothing.
"""
import numpy as np
import torch

from repro import checkpoints
from repro.engines.torch.models import BatchNorm, build, restore, tensorpack_name


def calibration_images(spec, count=4, seed=0):
    size = spec.arch.input_size
    return np.random.default_rng(seed).uniform(-1, 1, (count, 3, size, size)).astype(np.float32)


def synthetic_checkpoint(spec, seed=0, calibration_count=4, **gains):
    """Arrays (tensorpack name → float32) for ``spec``, BatchNorm statistics calibrated in PyTorch."""
    model = build(spec)
    arrays = checkpoints.synthetic_arrays(model.variables(), seed=seed, **gains)
    restore(model, checkpoints.Checkpoint(None, "synthetic", arrays))

    def calibrate(module, inputs):
        x = inputs[0]
        module.mean_EMA.copy_(x.mean(dim=(0, 2, 3)))
        module.variance_EMA.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    hooks = [module.register_forward_pre_hook(calibrate) for module in model.modules() if isinstance(module, BatchNorm)]
    with torch.no_grad():
        model(torch.from_numpy(calibration_images(spec, calibration_count, seed)))
    for hook in hooks:
        hook.remove()
    return {tensorpack_name(key): _tensorpack_value(key, value.numpy()) for key, value in model.state_dict().items()}


def _tensorpack_value(key, array):
    if key.endswith(".W") and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(array, dtype=np.float32)


def write_synthetic_checkpoint(spec, path, seed=0):
    return checkpoints.save_checkpoint(synthetic_checkpoint(spec, seed), path)
