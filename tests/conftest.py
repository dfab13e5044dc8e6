"""Shared fixtures: the checkpoint manifest (third_party/), small architectures, synthetic checkpoints."""
import json
import os
from pathlib import Path

import pytest

from repro import zoo

REPO = Path(__file__).resolve().parent.parent
MANIFEST = Path(os.environ.get("REPRO_MANIFEST", REPO / "third_party" / "checkpoint_manifest.json"))


@pytest.fixture(scope="session")
def manifest():
    """The released checkpoints' names and shapes. Missing is a failure, not a skip: the tests that use it
    are the only check that the models load the real checkpoints."""
    if not MANIFEST.is_file():
        pytest.fail("checkpoint manifest not found at {} (it ships in third_party/; $REPRO_MANIFEST overrides "
                    "it)".format(MANIFEST))
    return json.loads(MANIFEST.read_text())["models"]


def tiny_spec(family="resnet", blocks=(1, 1, 1, 1), name="Tiny", **arch):
    """A network of the real families, small enough to build and run in a second."""
    defaults = dict(group_channels=(4, 8, 16, 32), stem_channels=8, num_classes=10, input_size=64)
    if family == "resnext_denoise_all":
        defaults.update(resnext_groups=4, resnext_width=16)
    defaults.update(arch)
    return zoo.ModelSpec(name=name, zoo="test", depth=sum(blocks) * 3 + 2, checkpoint=name + ".npz",
                         arch=zoo.Architecture(family=family, blocks_per_group=tuple(blocks), **defaults))


@pytest.fixture(scope="session")
def synthetic_imagenet_checkpoint(tmp_path_factory):
    """Calibrated synthetic checkpoints of the full-size ImageNet models, made once per session."""
    from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
    made = {}

    def make(name):
        if name not in made:
            path = tmp_path_factory.mktemp("checkpoints") / zoo.get_model(name).checkpoint
            made[name] = write_synthetic_checkpoint(zoo.get_model(name), path, seed=0)
        return made[name]
    return make


def write_images(directory, sizes, seed=0):
    """PNG files of random BGR content with the given (height, width) sizes; returns their paths."""
    import cv2
    import numpy as np
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index, (height, width) in enumerate(sizes):
        path = directory / "image{:02d}.png".format(index)
        cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3)).astype(np.uint8))
        paths.append(path)
    return paths
