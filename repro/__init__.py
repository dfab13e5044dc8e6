"""Reproduction toolkit: how adversarial perturbations propagate through feature-denoising networks.

Python API (`repro.api`; the command-line tools run the same code):
- ``load_model(name, checkpoint=None, zoo="imagenet", engine="tensorflow")`` → a model with
  ``predict(images)`` (top-k classes, probabilities, logits) and ``features(images, taps=...)`` (block
  outputs by name);
- ``run_study(models, data=None, zoo="imagenet", images=100, out="results", **settings)`` → the study's tables
  (blocks, images, summary) as pandas DataFrames, and its files in ``out``;
- ``validate(model, zoo="imagenet", data=None, attack_iter=0, **settings)`` → the validation table.
Commands: ``repro-evaluate``, ``repro-validate``, ``repro-predict``, ``repro-download``, or ``python -m repro
<command>``. PyTorch users: ``repro.engines.torch.load_model`` gives an ``nn.Module``.

TensorFlow reads these settings once, when it is first imported — by this package or by tensorpack —
so they are set here, before any submodule can import either (SPEC §8):
- ``TF_USE_LEGACY_KERAS=1``: tensorpack's layers need the legacy ``tf.layers`` of ``tf_keras``;
- ``TF_ENABLE_ONEDNN_OPTS=1``: the stock CPU kernels run convolutions in NHWC only, the oneDNN ones
  also in the NCHW layout of the checkpoints' graphs.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from repro.api import load_model, run_study, validate  # noqa: E402  (after the environment above)

__all__ = ["load_model", "run_study", "validate"]
