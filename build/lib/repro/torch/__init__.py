"""The PyTorch engine: the zoo's networks as ``nn.Module``s that load the released tensorpack checkpoints
strictly, and the study (targeted PGD, taps, per-channel metrics) on any device.

It answers the same interface as the TensorFlow engine (`repro.engines`), so a run differs only in which
graph computes a batch. It imports neither TensorFlow nor tensorpack: with the repository on the path it
runs where only PyTorch is installed.

    from repro.torch import load_model
    model = load_model("ResNeXtDenoiseAll", "checkpoints/X101-DenoiseAll.npz", input="rgb01")
"""
from repro.torch.models import load_model  # noqa: F401
