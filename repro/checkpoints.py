"""Strict loading of tensorpack ``.npz`` checkpoints (SPEC §1).

Every model variable must be present with its shape; a checkpoint of another architecture is
recognised and named; extra keys are reported; nothing is unpickled; the file's SHA-256 is computed
once, from the same bytes that are loaded, for the run manifest.
"""
import hashlib
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from repro.fileio import atomic_write

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what is wrong and what to do."""


@dataclass
class Checkpoint:
    path: Path
    sha256: str
    arrays: Dict[str, np.ndarray]           # variable name without ":0" → array


def variable_key(name: str) -> str:
    """tensorpack dumps variable names with or without the ``:0`` output suffix."""
    return name[:-2] if name.endswith(":0") else name


def read_checkpoint(path) -> Checkpoint:
    """Read a tensorpack ``.npz`` dict of name → array, refusing pickled content."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint {} not found: download it (python scripts/download_checkpoints.py) "
                              "or pass --load with its path".format(path))
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if not data.startswith(b"PK"):
        kind = "a pickle" if data[:1] == b"\x80" else "not an .npz (zip) archive"
        raise CheckpointError("checkpoint {} is {}: only tensorpack .npz checkpoints are accepted "
                              "(pickles are never loaded)".format(path, kind))
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {variable_key(name): npz[name] for name in npz.files}
    except ValueError as error:
        if "pickle" in str(error):
            raise CheckpointError("checkpoint {} holds pickled (object) arrays, which are never loaded: "
                                  "re-save it as plain numeric arrays".format(path)) from None
        raise CheckpointError("checkpoint {} is unreadable ({}): download it again".format(path, error)) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as error:
        raise CheckpointError("checkpoint {} is truncated or corrupt ({}): download it again".format(
            path, error)) from None
    return Checkpoint(path=path, sha256=sha256, arrays=arrays)


def save_checkpoint(arrays: Dict[str, np.ndarray], path) -> Path:
    """Write ``arrays`` as a tensorpack-style ``.npz`` (keys with ``:0``), atomically."""
    named = {variable_key(k) + ":0": np.asarray(v) for k, v in arrays.items()}
    return atomic_write(path, lambda stream: np.savez(stream, **named), binary=True)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_values(checkpoint: Checkpoint, names: Optional[Sequence[str]] = None) -> None:
    """Refuse a checkpoint whose weights cannot be right: a non-finite value (NaN, ±inf) in any variable,
    or a negative BatchNorm variance (``…/variance/EMA``). ``names``: the variables to check (default all).
    Such a network gives NaN feature maps, which the study would otherwise exclude as degenerate."""
    for name in (checkpoint.arrays if names is None else names):
        array = checkpoint.arrays[name]
        if not np.issubdtype(array.dtype, np.number):
            raise CheckpointError("{}: variable {} holds {} values, not numbers: the file is damaged or not a "
                                  "checkpoint".format(checkpoint.path, name, array.dtype))
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = array.size - int(np.isfinite(array).sum())
        if bad:
            raise CheckpointError("{}: variable {} holds {} non-finite value(s) (NaN or inf): the checkpoint is "
                                  "damaged; download or export it again".format(checkpoint.path, name, bad))
        if name.endswith("/variance/EMA") and (array < 0).any():
            raise CheckpointError("{}: variable {} holds {} negative value(s), impossible for a BatchNorm "
                                  "variance: the checkpoint is damaged; download or export it again".format(
                                      checkpoint.path, name, int((array < 0).sum())))


def load_for(spec, path) -> Checkpoint:
    """Read ``path`` and check it for ``spec`` before any graph is built: the architecture (names and
    shapes) and the values (`check_values`). Engine-neutral; every engine still restores strictly."""
    checkpoint = read_checkpoint(path)
    check_architecture(checkpoint, spec)
    check_values(checkpoint)
    return checkpoint


# --- recognising the architecture a checkpoint belongs to -------------------------------------------

_BLOCK = re.compile(r"^group(\d+)/block(\d+)/")


def describe_architecture(shapes: Dict[str, Tuple[int, ...]]) -> Optional[dict]:
    """Read the architecture off a checkpoint's variable names and shapes: builder family, blocks per
    group, ResNeXt cardinality, widths and classes. None when it is not a ResNet-family checkpoint."""
    if "conv0/W" not in shapes or "linear/W" not in shapes:
        return None
    blocks: Dict[int, set] = {}
    for name in shapes:
        match = _BLOCK.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        return None
    if any(name.startswith("group0_denoise/") for name in shapes):
        family = "resnet_denoise"
    elif any("/non_local/" in name for name in shapes):
        family = "resnext_denoise_all"
    else:
        family = "resnet"
    conv1 = shapes.get("group0/block0/conv1/W")
    conv2 = shapes.get("group0/block0/conv2/W")
    cardinality = conv2[3] // conv2[2] if conv2 and conv2[2] else 1
    return {
        "family": family,
        "blocks_per_group": tuple(len(blocks[g]) for g in sorted(blocks)),
        "resnext_groups": cardinality,
        "stem_channels": shapes["conv0/W"][3],
        "stem_kernel": shapes["conv0/W"][0],
        "first_inner_width": conv1[3] if conv1 else None,
        "num_classes": shapes["linear/W"][1],
    }


def _architecture_of(spec) -> dict:
    arch = spec.arch
    inner = arch.group_channels[0] * arch.resnext_groups * arch.resnext_width // 64
    return {
        "family": arch.family, "blocks_per_group": tuple(arch.blocks_per_group),
        "resnext_groups": arch.resnext_groups, "stem_channels": arch.stem_channels,
        "stem_kernel": arch.stem_kernel, "first_inner_width": inner, "num_classes": arch.num_classes,
    }


def recognise(shapes: Dict[str, Tuple[int, ...]]):
    """The zoo models (any zoo) whose architecture matches the checkpoint's."""
    from repro import zoo
    found = describe_architecture(shapes)
    return [spec for spec in zoo.all_models() if found is not None and _architecture_of(spec) == found]


def _label(spec) -> str:
    return spec.name if spec.zoo == "imagenet" else "{} ({} zoo)".format(spec.name, spec.zoo)


def check_architecture(checkpoint: Checkpoint, spec) -> None:
    """Raise when the checkpoint is of another architecture than ``spec``, naming both."""
    shapes = {name: tuple(array.shape) for name, array in checkpoint.arrays.items()}
    found = describe_architecture(shapes)
    if found is None:
        raise CheckpointError("{} is not a checkpoint of a ResNet-family model (no conv0/W, linear/W or "
                              "groupG/blockB variables); you asked for {}".format(checkpoint.path, _label(spec)))
    if found == _architecture_of(spec):
        return
    matches = [other for other in recognise(shapes) if (other.name, other.zoo) != (spec.name, spec.zoo)]
    if matches:
        what = " or ".join(_label(other) for other in matches)
        raise CheckpointError("{} is a {} checkpoint, you asked for {}: pass --model {} or the right "
                              "--load".format(checkpoint.path, what, _label(spec), matches[0].name))
    raise CheckpointError(
        "{} does not fit {}: it holds a {} network with blocks per group {} and {} classes, expected {} "
        "with {} and {}".format(
            checkpoint.path, _label(spec), found["family"], list(found["blocks_per_group"]),
            found["num_classes"], spec.arch.family, list(spec.arch.blocks_per_group), spec.arch.num_classes))


def check_variables(checkpoint: Checkpoint, variables: Sequence[Tuple[str, Sequence[int]]]) -> List[str]:
    """Strict check of a checkpoint against a model's variables ``[(name, shape), …]`` — every engine's.

    A missing variable or a shape mismatch raises CheckpointError naming it; so does a non-finite value or
    a negative variance (`check_values`). Extra keys are logged as a warning and returned.
    """
    missing, mismatched = [], []
    for name, shape in variables:
        if name not in checkpoint.arrays:
            missing.append(name)
        elif tuple(checkpoint.arrays[name].shape) != tuple(shape):
            mismatched.append("{} has shape {} in the checkpoint, the model needs {}".format(
                name, list(checkpoint.arrays[name].shape), list(shape)))
    if missing:
        raise CheckpointError("{} lacks {} model variable(s): {}{}; it does not belong to this model".format(
            checkpoint.path, len(missing), ", ".join(missing[:5]), " …" if len(missing) > 5 else ""))
    if mismatched:
        raise CheckpointError("{}: {}{}".format(
            checkpoint.path, "; ".join(mismatched[:3]), " …" if len(mismatched) > 3 else ""))
    wanted = sorted({name for name, _ in variables})
    check_values(checkpoint, wanted)
    extra = sorted(set(checkpoint.arrays) - set(wanted))
    if extra:
        log.warning("%s has %d key(s) the model does not use: %s%s", checkpoint.path, len(extra),
                    ", ".join(extra[:10]), " …" if len(extra) > 10 else "")
    return extra


# --- synthetic checkpoints with the real names and shapes ---------------------------------------------

def synthetic_arrays(name_shapes, seed: int = 0, residual_gain: float = 0.2,
                     non_local_gain: float = 1e-4) -> Dict[str, np.ndarray]:
    """Random weights for the given (name, shape) list: He-normal convolutions, BN with unit
    statistics, and a small γ on each residual branch's last BN (``residual_gain``; ``non_local_gain``
    for the dot-product non-local branches of ResNeXtDenoiseAll), the way trained ResNets keep the
    residual stream bounded. The BN statistics are placeholders: use
    ``repro.engines.tensorflow.synthetic.synthetic_checkpoint`` for a network whose activations stay in range (the
    dot-product non-local block is cubic in its input). For tests and dry runs; the numbers mean nothing."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in name_shapes:
        key, shape = variable_key(name), tuple(shape)
        if key.endswith("/W") and len(shape) == 4:
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif key.endswith("/W"):
            value = rng.normal(0.0, 0.01 * np.sqrt(2048.0 / shape[0]), shape)
        elif key.endswith("/non_local/conv/bn/gamma"):
            # The dot-product non-local branch is cubic in x, so 33 of them in a row iterate a cubic
            # map: an input that scales the stream by k over the calibration images grows each branch
            # by k³ and the stream overflows to inf a few blocks later. With γ = 0.02 one α = 8 PGD step
            # did that on noise images; with 0.002 clean high-contrast images already did (the
            # synthetic BN statistics are calibrated on noise). Trained networks (zero-initialised γ,
            # Goyal et al. Sec. 5.1) keep such branches small; tests/test_attacks.py checks the margin.
            value = non_local_gain * rng.uniform(0.8, 1.2, shape)
        elif key.endswith("/gamma"):
            last_bn = "/conv3/bn/" in key or key.endswith("/conv/bn/gamma")
            value = (residual_gain if last_bn else 1.0) * rng.uniform(0.8, 1.2, shape)
        elif key.endswith("/beta"):
            value = rng.normal(0.0, 0.05, shape)
        elif key.endswith("/mean/EMA"):
            value = rng.normal(0.0, 0.05, shape)
        elif key.endswith("/variance/EMA"):
            value = rng.uniform(0.8, 1.2, shape)
        elif key.endswith("/b"):
            value = rng.normal(0.0, 0.01, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        arrays[key] = value.astype(np.float32)
    return arrays
