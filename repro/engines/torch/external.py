"""torchvision, timm and RobustBench networks for the study: build, load weights strictly, find the taps, wrap the
input convention (`repro.external` is the engine-neutral record, `ExternalSpec`).

- Weights are a state dict read without executing pickled code (``torch.load(weights_only=True)``, or
  safetensors), loaded strictly: missing, unexpected and mis-shaped keys are named in one line.
- Taps: ``auto`` recognises the residual blocks of the common families (`FAMILIES`); module names or fnmatch
  patterns choose any others. Their outputs are read by forward hooks, so the library's code runs unchanged.
- `ExternalNet` takes the study's images (BGR in [-1, 1], SPEC §2) and applies the model's own convention inside
  the graph; the attack differentiates through it, so ε stays in pixels of the 0–255 image.
"""
import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repro import external, zoo
from repro.checkpoints import CheckpointError
from repro.engines.torch.models import tap_receiver

FAMILIES = {
    # family: (module classes, as `module.__qualname__` of the library's module; output layout)
    "torchvision ResNet/ResNeXt/Wide-ResNet": (("torchvision.models.resnet.BasicBlock",
                                                "torchvision.models.resnet.Bottleneck"), "nchw"),
    "torchvision ConvNeXt": (("torchvision.models.convnext.CNBlock",), "nchw"),
    "torchvision ViT": (("torchvision.models.vision_transformer.EncoderBlock",), "tokens"),
    "torchvision Swin": (("torchvision.models.swin_transformer.SwinTransformerBlock",
                          "torchvision.models.swin_transformer.SwinTransformerBlockV2"), "nhwc"),
    "timm ResNet/ResNeXt": (("timm.models.resnet.BasicBlock", "timm.models.resnet.Bottleneck"), "nchw"),
    "timm ConvNeXt": (("timm.models.convnext.ConvNeXtBlock",), "nchw"),
    "timm ViT/DeiT": (("timm.models.vision_transformer.Block", "timm.models.vision_transformer.ResPostBlock",
                       "timm.models.deit.Block"), "tokens"),
    "timm Swin": (("timm.models.swin_transformer.SwinTransformerBlock",), "nhwc"),
}
"""What ``--taps auto`` recognises: a family's residual (or transformer) blocks, by their class, and how a block's
output becomes a C×H×W map. Everything else is named with ``--taps``."""


class ExternalModelError(ValueError):
    """A library model that cannot be built, weights that do not fit it, or taps that cannot be found."""


# --- the libraries ----------------------------------------------------------------------------------------------

_TORCHVISION_OPS = None


def import_torchvision():
    """torchvision, imported. Its compiled operators (detection's NMS, RoI pooling: nothing a classifier uses)
    need a build matching this PyTorch; where they cannot load — PyPI's CUDA wheel beside a CPU build of PyTorch
    — torchvision's own import stops at registering their shapes ("operator torchvision::nms does not exist").
    Their schemas are then declared (no kernel: calling NMS would still fail) so the models import."""
    global _TORCHVISION_OPS
    try:
        import torchvision
        return torchvision
    except ImportError:
        raise ExternalModelError("torchvision is not installed: install {}".format(external.INSTALL["torchvision"])) \
            from None
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
    _TORCHVISION_OPS = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _TORCHVISION_OPS.define("{}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor".format(op))
    import torchvision
    return torchvision


def import_library(source):
    """The module of ``source`` (torchvision, timm or robustbench), or one line saying what to install."""
    if source == "module":
        return torch
    if source in ("timm", "robustbench"):
        import_torchvision()
        try:
            return importlib.import_module(source)
        except ImportError as error:
            raise ExternalModelError("{} models need {}, which could not be imported ({})".format(
                source, external.INSTALL[source], error)) from None
    return import_torchvision()


def library_version(source, model=None):
    if source == "module":
        module = external.MODULES.get(model)
        return "{}.{} (torch {})".format(type(module).__module__, type(module).__qualname__, torch.__version__)
    return getattr(import_library(source), "__version__", "unknown")


def build_network(source, model, pretrained=False):
    """``model`` of ``source`` in eval mode: random initial weights (nothing is downloaded), or with
    ``pretrained`` the library's own weights (downloaded by the library on first use)."""
    library = import_library(source)
    if source == "module":
        if model not in external.MODULES:
            raise ExternalModelError("module:{} is not a model object of this process: module: names are made by the "
                                     "Python API, repro.run_study({{name: module}}), and its workers run in this "
                                     "process".format(model))
        import copy
        if not isinstance(external.MODULES[model], nn.Module):
            raise ExternalModelError("model {!r} must be a torch.nn.Module, got {}".format(
                model, type(external.MODULES[model]).__name__))
        return copy.deepcopy(external.MODULES[model]).eval()      # the user's object keeps its own state
    try:
        if source == "torchvision":
            names = library.models.list_models(module=library.models)
            if model not in names:
                raise ExternalModelError(_unknown_model(source, model, names))
            network = library.models.get_model(model, weights="DEFAULT" if pretrained else None)
        elif source == "timm":
            if not library.is_model(model):
                raise ExternalModelError(_unknown_model(source, model, library.list_models()))
            network = library.create_model(model, pretrained=pretrained)
        else:
            if not pretrained:
                raise ExternalModelError("robustbench:{} is loaded by RobustBench's load_model with its own weights: "
                                         "use --pretrained".format(model))
            from robustbench.utils import load_model
            network = load_model(model_name=model, dataset="imagenet", threat_model="Linf")
    except ExternalModelError:
        raise
    except Exception as error:   # the library's own failure (a download, an unknown name): one line
        raise ExternalModelError("{}:{} could not be built: {}: {}".format(source, model, type(error).__name__,
                                                                         str(error).splitlines()[0] if str(error)
                                                                         else "")) from None
    return network.eval()


def _unknown_model(source, model, names):
    close = difflib.get_close_matches(model, list(names), n=5, cutoff=0.6)
    return "{} has no model {!r}{}".format(source, model, ": did you mean {}?".format(
        ", ".join("{}:{}".format(source, name) for name in close)) if close else " (see its list_models())")


def input_convention(source, model, network, size=None, mean=None, std=None):
    """The model's input (`repro.external.InputConvention`) from its library's metadata — torchvision's weights
    transforms, timm's pretrained config; RobustBench models normalise inside and take RGB in [0, 1] — with
    ``size``, ``mean``, ``std`` overriding it."""
    default = external.InputConvention()
    found = {}
    if source == "torchvision":
        weights = import_torchvision().models.get_model_weights(model).DEFAULT
        transform = weights.transforms()
        found = dict(size=int(transform.crop_size[0]), mean=tuple(transform.mean), std=tuple(transform.std))
    elif source == "timm":
        config = getattr(network, "pretrained_cfg", None) or {}
        if config:
            found = dict(size=int(config.get("input_size", (3, default.size))[-1]),
                         mean=tuple(config.get("mean", default.mean)), std=tuple(config.get("std", default.std)))
    else:
        found = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    chosen = dict(found, **{key: value for key, value in (("size", size), ("mean", mean), ("std", std))
                            if value is not None})
    convention = dataclasses.replace(default, **{k: tuple(float(x) for x in v) if k != "size" else int(v)
                                                 for k, v in chosen.items()})
    if len(convention.mean) != 3 or len(convention.std) != 3 or min(convention.std) <= 0 or convention.size < 1:
        raise ExternalModelError("--mean and --std take three numbers each (RGB, std > 0) and --input-size a positive "
                                 "size, got mean {}, std {}, size {}".format(convention.mean, convention.std,
                                                                             convention.size))
    return convention


def published_numbers(source, model, pretrained):
    """{0: Published(top-1 error)} from torchvision's metadata for its pretrained weights; {} otherwise (timm's
    package carries no accuracies, and a weights file's origin is the user's)."""
    if source != "torchvision" or not pretrained:
        return {}
    metrics = import_torchvision().models.get_model_weights(model).DEFAULT.meta.get("_metrics", {})
    top1 = metrics.get("ImageNet-1K", {}).get("acc@1")
    return {0: zoo.Published(round(100.0 - float(top1), 3))} if top1 is not None else {}


# --- taps --------------------------------------------------------------------------------------------------------

def _class_path(module):
    return "{}.{}".format(type(module).__module__, type(module).__qualname__)


def recognise(network):
    """(family, [module names]) of the first family of `FAMILIES` whose blocks ``network`` holds, or (None, [])."""
    for family, (classes, _) in FAMILIES.items():
        names = [name for name, module in network.named_modules() if _class_path(module) in classes]
        if names:
            return family, names
    return None, []


def _layout(family, module):
    if family in FAMILIES:
        return FAMILIES[family][1]
    return "nchw"


def _prefix_tokens(network):
    """Tokens before the patch grid: timm's ``num_prefix_tokens`` (class and register tokens), torchvision ViT's
    class token."""
    if hasattr(network, "num_prefix_tokens"):
        return int(network.num_prefix_tokens)
    return 1 if hasattr(network, "class_token") else 0


def as_map(output, layout, prefix_tokens):
    """A tapped module's output as an (N, C, H, W) map."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    if layout == "tokens":
        tokens = output[:, prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ExternalModelError("a transformer block's {} patch tokens do not form a square grid".format(
                tokens.shape[1]))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    return output


def find_taps(network, requested=("auto",), size=224, label="the model"):
    """(family, [`repro.external.ExternalTap`]) in forward order: ``('auto',)`` → the blocks of a family of
    `FAMILIES`; otherwise module names and fnmatch patterns (``layer*.?``) over ``named_modules()``. The shapes
    come from one forward pass of a blank image at ``size``. Nothing found is one line naming what there is."""
    modules = dict(network.named_modules())
    if tuple(requested) == ("auto",):
        family, names = recognise(network)
        if family is None:
            raise ExternalModelError(
                "--taps auto does not know {}'s family (it knows {}): name the modules to tap with --taps NAME… "
                "(fnmatch patterns allowed), e.g. {}; --list-taps prints them all".format(
                    label, "; ".join(FAMILIES), " ".join(_examples(network))))
    else:
        family, names = "named", []
        for pattern in requested:
            matched = [name for name in modules if name and fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ExternalModelError("--taps {!r} names no module of {} (e.g. {}); --list-taps prints them "
                                         "all".format(pattern, label, " ".join(_examples(network))))
            names += [name for name in matched if name not in names]
    prefix = _prefix_tokens(network)
    shapes, order = {}, []

    def hook_for(name, layout):
        def hook(module, inputs, output):
            if name not in shapes:
                order.append(name)
                shapes[name] = (layout, tuple(as_map(output, layout, prefix).shape[1:]))
        return hook
    handles = [modules[name].register_forward_hook(hook_for(name, _layout(family, modules[name]))) for name in names]
    try:
        blank_forward(network, size, label)
    finally:
        for handle in handles:
            handle.remove()
    skipped = [name for name in names if name not in shapes]
    if skipped:
        raise ExternalModelError("{}: module(s) {} are not called in the forward pass: choose others".format(
            label, ", ".join(skipped[:5])))
    bad = [name for name in order if len(shapes[name][1]) != 3]
    if bad:
        raise ExternalModelError("{}: the output of {} is not a feature map (shape {}): tap modules whose output "
                                 "is N×C×H×W".format(label, bad[0], shapes[bad[0]][1]))
    return family, [external.ExternalTap(name, shapes[name][0], prefix if shapes[name][0] == "tokens" else 0,
                                         *shapes[name][1]) for name in order]


def blank_forward(network, size, label="the model"):
    """One forward pass of a blank size×size image; a network that cannot take that size is one line."""
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, size, size))
    except ExternalModelError:
        raise
    except Exception as error:
        raise ExternalModelError("{} does not run on {}×{} images ({}: {}): give the size it takes with "
                                 "--input-size".format(label, size, size, type(error).__name__,
                                                       (str(error).splitlines() or [""])[0][:160])) from None


def _examples(network, count=6):
    """A few module names from across ``network``: the top-level children and their first children."""
    names = [name for name, _ in network.named_modules() if name and name.count(".") <= 1]
    step = max(1, len(names) // count)
    return names[::step][:count]


def list_taps(network, size=224):
    """Lines ``name  Class  C×H×W`` of every module whose output is a feature map (what ``--taps`` can name)."""
    modules = [(name, module) for name, module in network.named_modules() if name]
    shapes = {}

    def hook_for(name):
        def hook(module, inputs, output):
            value = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(value, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(value.shape[1:])
        return hook
    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules]
    try:
        blank_forward(network, size)
    finally:
        for handle in handles:
            handle.remove()
    return ["{}  {}  {}".format(name, type(module).__name__, "×".join(map(str, shapes[name])))
            for name, module in modules if name in shapes]


# --- weights -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ExternalWeights:
    """The weights a run uses: the state dict, where it came from and its SHA-256 (the file's bytes, or for
    downloaded weights `state_dict_sha256`) — what `repro.checkpoints.Checkpoint` is for the zoo."""
    path: str
    sha256: str
    state_dict: dict

    def dtypes(self):
        counts = {}
        for value in self.state_dict.values():
            counts[str(value.dtype).replace("torch.", "")] = counts.get(str(value.dtype).replace("torch.", ""), 0) + 1
        return counts


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict):
    """SHA-256 over the sorted keys, each with its dtype, shape and bytes: the identity of downloaded weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().cpu().contiguous()
        digest.update("{}|{}|{}\n".format(key, value.dtype, tuple(value.shape)).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def read_state_dict(path):
    """The tensors of a state-dict file (.safetensors, or .pt/.pth by ``torch.load(weights_only=True)``: no pickled
    code runs). A checkpoint that wraps it as ``{'state_dict': …}`` or ``{'model': …}`` is unwrapped."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("{} is a folder: --weights takes a state-dict file (.pt, .pth or .safetensors)".format(
            path))
    if not path.is_file():
        raise CheckpointError("weights file not found: {}".format(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if str(error) else "unpickling refused"
        raise CheckpointError("{} is not a plain state dict: loading it would run pickled code, which is refused "
                              "({}); save the weights with torch.save(model.state_dict(), PATH) or as "
                              ".safetensors".format(path, reason[:160])) from None
    except Exception as error:
        raise CheckpointError("{} cannot be read as a state dict ({}: {}): give a file saved with "
                              "torch.save(model.state_dict(), PATH) or safetensors".format(
                                  path, type(error).__name__, str(error).splitlines()[0][:160] if str(error) else ""))\
            from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not any(
                isinstance(value, torch.Tensor) for value in state.values()):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("{} holds {}, not a state dict (names → tensors): save it with "
                              "torch.save(model.state_dict(), PATH)".format(path, type(state).__name__))
    return state


def load_weights(network, state, label, path):
    """Load ``state`` into ``network`` strictly, with one line naming what does not fit: missing, unexpected and
    mis-shaped keys, non-float values for float parameters, non-finite values."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append("{} missing (e.g. {})".format(len(missing), missing[0]))
        if unexpected:
            parts.append("{} unexpected (e.g. {})".format(len(unexpected), unexpected[0]))
        if misshaped:
            key = misshaped[0]
            parts.append("{} of another shape (e.g. {}: {} in the file, {} in the model)".format(
                len(misshaped), key, tuple(state[key].shape), tuple(expected[key].shape)))
        raise CheckpointError("{} does not fit {}: {}; is it the state dict of another architecture{}?".format(
            path, label, ", ".join(parts), " (keys start with 'module.': saved from DataParallel; save "
            "model.module.state_dict())" if unexpected and all(k.startswith("module.") for k in unexpected) else ""))
    for key, value in expected.items():
        given = state[key]
        if value.is_floating_point() and not given.is_floating_point():
            raise CheckpointError("{}: {} is {} where {} expects a float tensor".format(path, key, given.dtype, label))
        if given.is_floating_point() and not bool(torch.isfinite(given).all()):
            raise CheckpointError("{}: {} holds NaN or infinite values: the weights are damaged".format(path, key))
    network.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()}, strict=True)


def weights_for(spec, network=None):
    """`ExternalWeights` of ``spec``: read from its file and checked against the architecture (loaded strictly into
    ``network``, default a fresh one), or (pretrained) taken from the library's download. The run calls it before
    claiming ``--out``, so weights that do not fit leave it as it was."""
    if spec.weights in ("pretrained", "module"):
        network = network or build_network(spec.source, spec.model, pretrained=True)
        state = {key: value.detach().clone() for key, value in network.state_dict().items()}
        return ExternalWeights(spec.weights, state_dict_sha256(state), state)
    weights = ExternalWeights(spec.weights, file_sha256(spec.weights), read_state_dict(spec.weights))
    load_weights(network or build_network(spec.source, spec.model), weights.state_dict, spec.name, spec.weights)
    return weights


# --- the network the study runs ---------------------------------------------------------------------------------

class ExternalNet(nn.Module):
    """A library network behind the study's input: BGR in [-1, 1] (NCHW) → the model's channel order, 0–1 scale
    and mean/std, inside the graph. ``forward(x, taps=names, on_tap=fn)`` as `repro.engines.torch.models.ZooNet`:
    the tapped modules' outputs, as C×H×W maps, are returned with the logits, or handed to ``on_tap`` as they
    are computed."""

    def __init__(self, network, spec):
        super().__init__()
        self.network, self.spec = network, spec
        convention = spec.input
        self.register_buffer("mean", torch.tensor(convention.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(convention.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.rgb = convention.channels == "RGB"
        modules = dict(network.named_modules())
        self._taps = {tap.name: tap for tap in spec.taps}
        self._receiver = None
        for tap in spec.taps:
            modules[tap.name].register_forward_hook(self._hook(tap))

    def _hook(self, tap):
        def hook(module, inputs, output):
            if self._receiver is not None:
                self._receiver(tap.name, as_map(output, tap.layout, tap.prefix_tokens))
        return hook

    def forward(self, x, taps=(), on_tap=None):
        pixels = ((x.flip(1) if self.rgb else x) + 1.0) * 0.5
        normalised = (pixels - self.mean) / self.std
        tapped = {}
        self._receiver = tap_receiver(taps, on_tap, tapped) if taps else None
        try:
            logits = self.network(normalised)
        finally:
            self._receiver = None
        return (logits, tapped) if taps and on_tap is None else logits


def restore(spec):
    """(`ExternalNet` of ``spec`` with its weights loaded strictly, `ExternalWeights`)."""
    network = build_network(spec.source, spec.model, pretrained=spec.weights == "pretrained")
    weights = weights_for(spec, network)
    if spec.weights == "module" and weights.sha256 != state_dict_sha256(external.MODULES[spec.model].state_dict()):
        raise ExternalModelError("{}: the model object's weights changed since the run started".format(spec.name))
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return ExternalNet(network, spec).eval(), weights


def external_spec(source, model, weights, taps, input_size=None, mean=None, std=None):
    """The `repro.external.ExternalSpec` of ``source:model``: its taps found on a network with random weights
    (nothing is downloaded here), its input convention from the library's metadata, its published top-1."""
    name = "{}:{}".format(source, model)
    if weights not in ("pretrained", "module") and not Path(weights).is_file():
        raise CheckpointError("weights file for {} not found: {}".format(name, weights) if not Path(weights).is_dir()
                              else "{} is a folder: --weights takes a state-dict file (.pt, .pth or .safetensors)"
                              .format(weights))
    if source == "robustbench":
        network = build_network(source, model, pretrained=True)
    else:
        network = build_network(source, model, pretrained=False)
    convention = input_convention(source, model, network, input_size, mean, std)
    family, found = find_taps(network, taps, convention.size, name)
    return external.ExternalSpec(name=name, source=source, model=model, weights=weights,
                                 library_version=library_version(source, model), input=convention, taps=tuple(found),
                                 family=family, published=published_numbers(source, model, weights == "pretrained"))


def network_of(source, model):
    """``source:model`` with random weights, for ``--list-taps``."""
    return build_network(source, model, pretrained=source == "robustbench")


def tap_lines(source, model, size=None):
    network = network_of(source, model)
    size = size or input_convention(source, model, network).size
    return list_taps(network, size)
