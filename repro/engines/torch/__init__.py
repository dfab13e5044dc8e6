"""The PyTorch engine: the zoo's networks as ``nn.Module``s that load the released tensorpack checkpoints
strictly, and the study (targeted PGD, taps, per-channel metrics) on any device.

Its face is the interface `repro.engines` documents, plus ``load_model`` (the engine's own model object: an
``nn.Module``). It imports neither TensorFlow nor tensorpack: it runs where only PyTorch is installed.
The pieces behind it:
- ``models``: `ZooNet` (the three architectures, tensorpack's variable names), strict restore, ``load_model``;
- ``engine``: the study, the classifier and the evaluation attack on a restored network, precision and devices;
- ``metrics``: the per-channel metrics as torch ops (float64 on the device);
- ``external``: torchvision, timm and RobustBench networks (`repro.external`): strict state-dict loading, taps by
  module name, the model's input convention inside the graph;
- ``synthetic``: synthetic checkpoints with the real names and shapes, BatchNorm statistics calibrated in PyTorch.

    from repro.engines.torch import load_model
    model = load_model("ResNeXtDenoiseAll", "checkpoints/X101-DenoiseAll.npz", input="rgb01")
"""
from repro.engines.torch.engine import (PRECISIONS, attack_model, classifier, describe, device_unavailable,  # noqa: F401
                                        out_of_memory, per_channel, precision_unavailable, study)
from repro.engines.torch.external import external_spec, tap_lines, weights_for  # noqa: F401
from repro.engines.torch.models import load_model  # noqa: F401

__all__ = ["PRECISIONS", "attack_model", "classifier", "describe", "device_unavailable", "external_spec", "load_model",
           "out_of_memory", "per_channel", "precision_unavailable", "study", "tap_lines", "weights_for"]
