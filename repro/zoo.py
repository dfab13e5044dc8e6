"""The model zoos: one table per zoo; everything else asks here.

Per model: the architecture (builder family and shape), its depth, the checkpoint file name and
release URL, and the published numbers it should reproduce (SPEC §1). A second zoo (the miniature one)
is one more table of the same records.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
"""Blocks per group of the bottleneck ResNets (He et al. 2016, Table 1)."""

RELEASES = "https://github.com/facebookresearch/ImageNet-Adversarial-Training/releases/download"


@dataclass(frozen=True)
class Architecture:
    """Everything the shared builder needs to lay out one network."""
    family: str                                  # key of repro.engines.tensorflow.models.nets.BUILDERS
    blocks_per_group: Tuple[int, ...]
    group_channels: Tuple[int, ...] = (64, 128, 256, 512)   # bottleneck width; outputs are 4×
    group_strides: Tuple[int, ...] = (1, 2, 2, 2)
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    num_classes: int = 1000
    input_size: int = 224
    resnext_groups: int = 1
    resnext_width: int = 64


@dataclass(frozen=True)
class Published:
    """Published top-1 error and targeted attack success rate (percent) at one attack strength."""
    top1_error: float
    attack_success: Optional[float] = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    zoo: str
    arch: Architecture
    depth: int
    checkpoint: str                              # file name under checkpoints/
    url: Optional[str] = None
    sha256: Optional[str] = None                 # known for checkpoints this project ships
    description: str = ""
    published: Dict[int, Published] = field(default_factory=dict)   # attack iterations → numbers
    published_fluctuation: float = 0.3           # ± percentage points (SPEC §1)
    bundled_dir: Optional[str] = None            # checkpoint shipped in the repository, relative to its root

    @property
    def denoise_ops(self) -> bool:
        return self.arch.family != "resnet"


def _imagenet_model(name, family, depth, checkpoint, release, description, published, **arch):
    return ModelSpec(
        name=name, zoo="imagenet", depth=depth, checkpoint=checkpoint,
        url="{}/{}/{}".format(RELEASES, release, checkpoint), description=description,
        arch=Architecture(family=family, blocks_per_group=RESNET_BLOCKS[depth], **arch),
        published={iterations: Published(*numbers) for iterations, numbers in published.items()})


IMAGENET = {spec.name: spec for spec in (
    _imagenet_model(
        "ResNet", "resnet", 152, "R152.npz", "v0",
        "ResNet-152 baseline, adversarially trained",
        {0: (37.7,), 10: (47.5, 5.5), 100: (58.3, 31.0), 1000: (61.0, 36.1)}),
    _imagenet_model(
        "ResNetDenoise", "resnet_denoise", 152, "R152-Denoise.npz", "v0.1",
        "ResNet-152 + 4 Gaussian non-local denoising blocks, one after each group",
        {0: (34.7,), 10: (44.3, 4.9), 100: (54.5, 26.6), 1000: (57.2, 32.7)}),
    _imagenet_model(
        "ResNeXtDenoiseAll", "resnext_denoise_all", 101, "X101-DenoiseAll.npz", "v0.2",
        "ResNeXt-101 32×8d + dot-product non-local denoising after every block (CAAD 2018 winner)",
        {0: (31.6,), 10: (44.0, 4.9), 100: (55.6, 31.5), 1000: (59.6, 38.1)},
        resnext_groups=32, resnext_width=8),
)}

MINI_ARCH = dict(group_channels=(8, 16, 32, 64), group_strides=(1, 2, 2, 1), stem_channels=16, stem_kernel=3,
                 stem_stride=1, stem_pool=False, num_classes=10, input_size=32)
"""The miniature zoo's shape: 32×32 inputs, no stem down-sampling, so the groups' feature maps are 32², 16²,
8², 8² — every block output large enough for SSIM's 7×7 window — and 10 classes (`repro.minidata`)."""


def _mini_model(name, family, blocks, description, **arch):
    return ModelSpec(name=name, zoo="mini", depth=3 * sum(blocks) + 2, checkpoint=name + ".npz",
                     bundled_dir="mini_zoo", description=description,
                     arch=Architecture(family=family, blocks_per_group=blocks, **dict(MINI_ARCH, **arch)))


MINI = {spec.name: spec for spec in (
    _mini_model("ResNet", "resnet", (2, 4, 6, 2), "miniature ResNet-44 (14 bottleneck blocks), adversarially trained"),
    _mini_model("ResNetDenoise", "resnet_denoise", (2, 4, 6, 2),
                "miniature ResNet-44 + 4 Gaussian non-local denoising blocks, one after each group"),
    _mini_model("ResNeXtDenoiseAll", "resnext_denoise_all", (2, 3, 5, 2),
                "miniature ResNeXt-38 4×32d + dot-product non-local after every block (12 blocks)",
                resnext_groups=4, resnext_width=32),
)}
"""Trained here (`scripts/train_mini.py`); published numbers come from each checkpoint's model card."""

ZOOS = {"imagenet": IMAGENET, "mini": MINI}
DEFAULT_ZOO = "imagenet"


class UnknownModelError(ValueError):
    pass


def get_model(name: str, zoo: str = DEFAULT_ZOO, depth: Optional[int] = None) -> ModelSpec:
    """The zoo's record for ``name``; ``depth`` overrides the ResNet depth (50, 101 or 152) where the
    architecture allows it — the checkpoint then is the user's own, so no published numbers apply."""
    if zoo not in ZOOS:
        raise UnknownModelError("unknown zoo {!r}: choose one of {}".format(zoo, ", ".join(ZOOS)))
    models = ZOOS[zoo]
    if name not in models:
        raise UnknownModelError("unknown model {!r} in the {} zoo: choose one of {}".format(
            name, zoo, ", ".join(models)))
    spec = models[name]
    if depth is None or depth == spec.depth:
        return spec
    if zoo != "imagenet" or depth not in RESNET_BLOCKS:
        raise UnknownModelError("depth {} is not available for {} ({} zoo): choose one of {}".format(
            depth, name, zoo, ", ".join(map(str, sorted(RESNET_BLOCKS))) if zoo == "imagenet" else spec.depth))
    arch = dataclasses.replace(spec.arch, blocks_per_group=RESNET_BLOCKS[depth])
    return dataclasses.replace(spec, arch=arch, depth=depth, published={}, url=None,
                               checkpoint="{}-{}.npz".format(name, depth))


REPO_ROOT = Path(__file__).resolve().parent.parent     # the checkout (tests, scripts); data: repro.resources


def model_card_path(spec: ModelSpec) -> Optional[Path]:
    """The model card (JSON) beside a checkpoint this repository ships, if the model has one."""
    if not spec.bundled_dir:
        return None
    from repro import resources
    return resources.data_dir(spec.bundled_dir) / (Path(spec.checkpoint).stem + ".json")


def published_numbers(spec: ModelSpec) -> Dict[int, Published]:
    """Attack iterations → published top-1 error and attack success (percent): Xie et al.'s for the
    ImageNet zoo (SPEC §1), the model card's measurement on the held-out test split for a shipped model."""
    if spec.published:
        return dict(spec.published)
    path = model_card_path(spec)
    if path is None or not path.is_file():
        return {}
    results = json.loads(path.read_text())["evaluation"]["results"]
    numbers = {}
    for record in results.values():
        success = record.get("attack_success", {}).get("percent")
        numbers[int(record.get("iterations", 0))] = Published(record["top1_error"]["percent"], success)
    return numbers


def model_names(zoo: str = DEFAULT_ZOO):
    return list(ZOOS[zoo])


def all_models():
    """Every (zoo, spec) pair, for recognising which model a checkpoint belongs to."""
    return [spec for models in ZOOS.values() for spec in models.values()]
