"""Models from outside the zoo: ``torchvision:NAME``, ``timm:NAME`` and ``robustbench:NAME`` (PyTorch engine).

Engine-neutral: an `ExternalSpec` is the zoo record of such a model — where it comes from, its weights, its input
convention and its taps — and everything that asks the zoo (runner, scheduler, tables, figures, receipts) takes it
as it takes a `repro.zoo.ModelSpec`. What needs PyTorch (building the network, reading the weights, finding the
taps) is in `repro.engines.torch.external`, reached through `spec_for` here only.

The study's pixels stay the zoo's: images enter every model as BGR in [-1, 1] (`repro.data.to_model_space`), ε and
the attack's steps are in pixels of the 0–255 image (SPEC §3), and each model's own convention — RGB or BGR, 0–1
scale, mean/std — is applied inside the differentiated graph (`ExternalNet`), so the attack sees it as part of the
model.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from repro import zoo

SOURCES = ("torchvision", "timm", "robustbench", "module")
"""Libraries a model can be named from, as ``SOURCE:NAME``; ``module:NAME`` is an ``nn.Module`` handed to the Python
API (`repro.api.run_study` with ``{NAME: module}``), registered in this process."""

MODULES = {}
"""``module:NAME`` models: the objects handed to the Python API in this process (`register_module`)."""


def register_module(name, module):
    """Make ``module`` (an ``nn.Module`` taking RGB images normalised as its input convention says) the model
    ``module:NAME`` of this process; returns that name."""
    MODULES[name] = module
    return "module:" + name


INSTALL = {
    "torchvision": "torchvision (pip install -r requirements-models.txt, then pip install --no-deps -r "
                   "requirements-models-nodeps.txt; make test does both)",
    "timm": "timm (pip install -r requirements-models.txt, then pip install --no-deps -r "
            "requirements-models-nodeps.txt; make test does both)",
    "robustbench": "RobustBench (pip install git+https://github.com/RobustBench/robustbench.git)"}


@dataclass(frozen=True)
class InputConvention:
    """How a model wants its pixels: ``size``×``size``, channel order, and (value/255 − mean) / std per channel."""
    size: int = 224
    channels: str = "RGB"
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExternalTap:
    """A tapped module: its name in ``named_modules()``, how its output becomes a C×H×W map (``nchw``; ``nhwc``:
    Swin's channels-last stages; ``tokens``: a transformer's tokens on their grid, the first ``prefix_tokens`` —
    class and register tokens — left out), and that map's shape."""
    name: str
    layout: str
    prefix_tokens: int
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class ExternalSpec:
    """A torchvision, timm or RobustBench model as the study sees it. ``weights``: a state-dict file, or
    ``'pretrained'`` (the library's own download, on the user's machine). ``taps``: the tapped modules in
    forward order (found by `repro.engines.torch.external.find_taps`). ``published``: the top-1 the library's
    metadata gives for the pretrained weights (none for a file: its origin is the user's)."""
    name: str                                    # e.g. torchvision:resnet50
    source: str
    model: str
    weights: str
    library_version: str
    input: InputConvention
    taps: Tuple[ExternalTap, ...]
    family: str                                  # the family `auto` recognised, or 'named' (--taps NAME…)
    published: Dict[int, zoo.Published] = field(default_factory=dict)
    published_fluctuation: float = 0.3
    zoo: str = "imagenet"                        # its data: ImageNet validation images, 1000 classes
    depth: Optional[int] = None
    url: Optional[str] = None
    bundled_dir: Optional[str] = None
    denoise_ops: bool = False

    @property
    def arch(self):
        return zoo.Architecture(family="external", blocks_per_group=(), input_size=self.input.size)

    @property
    def checkpoint(self):
        return self.weights

    def identity(self):
        """What a batch's numbers depend on about the model, besides its weights' SHA-256 (`repro.runner`)."""
        return {"name": self.name, "zoo": self.zoo, "source": self.source, "model": self.model,
                "library_version": self.library_version, "input": dataclasses.asdict(self.input),
                "taps": [tap.name for tap in self.taps]}


def is_external(name):
    """Whether ``name`` names a model of a library (``SOURCE:NAME``) rather than one of the zoo."""
    return isinstance(name, str) and name.split(":", 1)[0] in SOURCES and ":" in name


def is_external_spec(spec):
    return isinstance(spec, ExternalSpec)


def split_name(name):
    """``'timm:convnext_tiny'`` → ``('timm', 'convnext_tiny')``; a usage error for an empty model name."""
    source, _, model = name.partition(":")
    if source not in SOURCES or not model.strip():
        raise zoo.UnknownModelError("--model {!r}: name a library model as SOURCE:NAME with SOURCE one of {} (e.g. "
                                    "torchvision:resnet50, timm:convnext_tiny)".format(name, ", ".join(SOURCES)))
    return source, model.strip()


def spec_for(name, weights=None, pretrained=False, taps=("auto",), input_size=None, mean=None, std=None):
    """The `ExternalSpec` of ``SOURCE:NAME`` with its weights (a state-dict path, or ``pretrained``), its taps
    (``('auto',)``, or module names and fnmatch patterns) and its input convention (the library's metadata,
    overridden by ``input_size``, ``mean``, ``std``). Builds the network once (PyTorch engine) to find the taps."""
    source, model = split_name(name)
    if source == "module":
        if weights or pretrained:
            raise zoo.UnknownModelError("{} is a model object: its weights are its own (no --weights or --pretrained)"
                                        .format(name))
        weights = "module"
    if pretrained and weights:
        raise zoo.UnknownModelError("{}: give --weights PATH or --pretrained, not both".format(name))
    if not pretrained and not weights:
        raise zoo.UnknownModelError("{} needs weights: --weights PATH (a state dict: .pt, .pth or .safetensors) or "
                                    "--pretrained (the library's own download)".format(name))
    from repro import engines
    return engines.load("torch").external_spec(source, model, "pretrained" if pretrained else str(weights),
                                               tuple(taps), input_size, mean, std)
