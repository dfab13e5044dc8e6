"""The Python API: a zoo model as an object, the study and the validation as functions returning tables.

Each function goes through the same code as its command (`repro.evaluate`, `repro.validation`): keyword
settings become the command's options, so a table from the API equals the command's for the same settings.
"""
import numbers
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from repro import engines, zoo as zoo_module

if TYPE_CHECKING:
    from repro.evaluate import StudyTables

ImagesLike = Union[np.ndarray, Sequence[str]]


@dataclass
class Prediction:
    """Top-k classes per image (``classes``, ``names``, ``probabilities``: N × k) and the raw ``logits``."""
    classes: np.ndarray
    names: List[List[str]]
    probabilities: np.ndarray
    logits: np.ndarray


class Model:
    """A zoo model restored strictly from its checkpoint, on an engine. Images are BGR uint8 arrays
    (N × H × W × 3, the model's input size) or image paths (read and resized as `repro.predict` does)."""

    def __init__(self, spec, checkpoint=None, engine: str = engines.DEFAULT_ENGINE, device: Optional[str] = None):
        from repro import checkpoints, cli
        self.spec = spec
        self.checkpoint_path = cli.checkpoint_path(spec, checkpoint)
        self._classifier = engines.classifier(engine, spec, checkpoints.load_for(spec, self.checkpoint_path),
                                              device=device)

    def _images(self, images: ImagesLike) -> np.ndarray:
        if isinstance(images, (str, os.PathLike)):
            images = [images]                    # one path, not a sequence of one-character paths
        if isinstance(images, np.ndarray):
            size = self.spec.arch.input_size
            if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
                raise ValueError("images must be BGR uint8 of shape N×{0}×{0}×3, got {1} {2}".format(
                    size, images.dtype, images.shape))
            return images
        from repro.data import load_image_naive
        return np.stack([load_image_naive(path, self.spec.arch.input_size) for path in images])

    def predict(self, images: ImagesLike, top_k: int = 5) -> Prediction:
        """Top-``top_k`` classes with their softmax probabilities, and the logits. Non-finite logits raise
        `repro.cli.RunFailed` naming the images (as the ``predict`` command does)."""
        from repro.predict import check_finite_logits, class_names, softmax
        classes = self.spec.arch.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= classes:
            raise ValueError("top_k must be an integer from 1 to {} (the model's classes), got {!r}".format(
                classes, top_k))
        pixels = self._images(images)
        names = [images] if isinstance(images, (str, os.PathLike)) else (
            ["image {}".format(i) for i in range(len(pixels))] if isinstance(images, np.ndarray) else list(images))
        logits = check_finite_logits(self.spec, self._classifier.predict_logits(pixels), names)
        probabilities = softmax(logits.astype(np.float64))
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        names = class_names(self.spec)
        return Prediction(classes=top, names=[[names[k] for k in row] for row in top],
                          probabilities=np.take_along_axis(probabilities, top, axis=1), logits=logits)

    def features(self, images: ImagesLike, taps: Union[str, Sequence[str]] = "block_output") -> Dict[str, np.ndarray]:
        """Block outputs by name: ``taps`` is ``"block_output"`` (every residual block), ``"denoised"`` (as the
        study's ``--tap denoised``) or a list of tensor names; → {name: N × C × H × W float32}."""
        from repro.taps import taps_for
        names = [t.name for t in taps_for(self.spec, taps)] if isinstance(taps, str) else list(taps)
        return self._classifier.features(self._images(images), names)

    def close(self):
        self._classifier.close()


def load_model(name: str, checkpoint: Optional[str] = None, zoo: str = "imagenet",
               engine: str = engines.DEFAULT_ENGINE, device: Optional[str] = None) -> Model:
    """A zoo model with ``predict(images)`` and ``features(images, taps=...)``; the checkpoint defaults to the
    zoo's file (shipped for ``zoo="mini"``, downloaded for ImageNet: `repro.download`)."""
    return Model(zoo_module.get_model(name, zoo), checkpoint, engine, device)


def _options(settings) -> List[str]:
    """Keyword settings as command-line options: ``attack_iter=10`` → ``--attack-iter 10``; True → a flag;
    a list → several values; None and False → left out."""
    argv = []
    for key, value in settings.items():
        option = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(option)
        elif isinstance(value, (list, tuple)):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    return argv


def run_study(models: Union[str, Sequence[str], Dict[str, object]], data: Optional[str] = None,
              zoo: str = "imagenet", images: int = 100, out: str = "results", input: Optional[dict] = None,
              **settings) -> "StudyTables":
    """The study (`repro.evaluate`) → its tables (blocks, images, summary) as DataFrames; the files are
    written to ``out`` as the command writes them. ``settings`` are the command's options by name, e.g.
    ``attack_iter=10, metrics="paper", load=[...], engine="torch", workers=2``.

    ``models`` may name library models (``"torchvision:resnet50"``, with ``weights=[path]`` or ``pretrained=True``)
    or map names to ``torch.nn.Module`` objects — ``{"mine": module}``, studied in this process as ``module:mine``
    with ``taps=[module names or patterns]`` (default ``auto``) and ``input=dict(size=224, mean=(…), std=(…))``,
    the RGB 0–1 normalisation the module expects (default ImageNet's)."""
    from repro import evaluate
    if isinstance(models, dict):
        named = []
        for name, value in models.items():
            if isinstance(value, str):
                named.append(value)
            else:
                from repro.external import register_module
                named.append(register_module(name, value))
        models = named
    models = [models] if isinstance(models, str) else list(models)
    unknown = set(input or {}) - {"size", "mean", "std"}
    if unknown:
        raise ValueError("input takes size, mean and std, got {}".format(", ".join(sorted(unknown))))
    settings = dict(settings, input_size=(input or {}).get("size"), mean=(input or {}).get("mean"),
                    std=(input or {}).get("std"))
    argv = ["--model", *map(str, models), "--zoo", _zoo_name(zoo), "--images", str(images), "--out", str(out)] + \
        _options(dict(settings, data=data))
    return _checked(evaluate.study, argv)


def validate(model: Union[str, Sequence[str]], zoo: str = "imagenet", data: Optional[str] = None,
             attack_iter: int = 0, out: str = "results/validate", **settings) -> pd.DataFrame:
    """Validation against the published numbers (`repro.validation`) → its table (one row per model and
    quantity, with the 95% interval and the verdict)."""
    from repro import validation
    models = [model] if isinstance(model, str) else list(model)
    argv = ["--model", *map(str, models), "--zoo", _zoo_name(zoo), "--attack-iter", str(attack_iter), "--out",
            str(out)] + _options(dict(settings, data=data))
    return _checked(validation.validation_table, argv)


def _zoo_name(zoo):
    """``zoo`` if it names a zoo, else the error `repro.zoo.get_model` gives (not a TypeError on None)."""
    if zoo not in zoo_module.ZOOS:
        raise zoo_module.UnknownModelError("unknown zoo {!r}: choose one of {}".format(zoo, ", ".join(zoo_module.ZOOS)))
    return zoo


def _checked(function, argv):
    """Run ``function(argv)`` with argparse's errors raised as `repro.cli.UsageError` (a ValueError carrying
    argparse's message: an API neither exits nor leaves the reason on stderr only)."""
    from repro import cli
    with cli.usage_errors_raised():
        return function(argv)
