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
from dataclasses import dataclass, field
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
    arrays: Dict[str, np.ndarray]           # variable name without ":0" → array (the members read)
    declared: Optional[Dict[str, Tuple[Tuple[int, ...], str]]] = None
    """Every member's shape and dtype as its header declares them (members not read included); None: those of
    ``arrays``."""
    noted: bool = field(default=False, repr=False, compare=False)   # the precision note was logged

    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Every variable's shape, read or not."""
        if self.declared is None:
            return {name: tuple(array.shape) for name, array in self.arrays.items()}
        return {name: shape for name, (shape, _) in self.declared.items()}

    def dtypes(self, names: Optional[Sequence[str]] = None) -> Dict[str, int]:
        """How many of the variables ``names`` (default all) hold each dtype, e.g. {'float32': 161}."""
        declared = self.declared or {name: (array.shape, str(array.dtype)) for name, array in self.arrays.items()}
        counts: Dict[str, int] = {}
        for name in (declared if names is None else names):
            counts[declared[name][1]] = counts.get(declared[name][1], 0) + 1
        return dict(sorted(counts.items()))


def variable_key(name: str) -> str:
    """tensorpack dumps variable names with or without the ``:0`` output suffix."""
    return name[:-2] if name.endswith(":0") else name


def read_checkpoint(path, spec=None) -> Checkpoint:
    """Read a tensorpack ``.npz`` dict of name → array, refusing pickled content.

    Every member's header (shape, dtype) is read first, and a member whose declared size exceeds the bytes it
    holds is refused before anything is inflated (a damaged header must not ask for terabytes). With ``spec``
    the declared names and shapes are checked against ``spec``'s model (`check_architecture`, then
    `check_variables` against `model_variables`) before any array is read, and only the model's variables are
    inflated: a checkpoint of the wrong architecture or with a mis-shaped variable costs no memory."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("checkpoint {} is a folder, not a checkpoint file: pass the .npz file inside it "
                              "(--load PATH)".format(path))
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
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = _member_headers(path, archive)
            checkpoint = Checkpoint(path, sha256, {}, {name: (shape, str(dtype)) for name, (_, shape, dtype)
                                                        in members.items()})
            wanted = set(members)
            if spec is not None:
                check_architecture(checkpoint, spec)
                variables = model_variables(spec)
                check_variables(checkpoint, variables, values=False)
                wanted = {name for name, _ in variables}
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                checkpoint.arrays = {name: npz[member] for name, (member, _, _) in members.items() if name in wanted}
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        if "pickle" in str(error):
            raise CheckpointError("checkpoint {} holds pickled (object) arrays, which are never loaded: "
                                  "re-save it as plain numeric arrays".format(path)) from None
        raise CheckpointError("checkpoint {} is unreadable ({}): download it again".format(path, error)) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, MemoryError) as error:
        raise CheckpointError("checkpoint {} is truncated or corrupt ({}: {}): download it again".format(
            path, type(error).__name__, error)) from None
    return checkpoint


def _member_headers(path, archive):
    """{variable name: (member name, declared shape, dtype)} from each ``.npy`` member's header, without
    reading its data; refuses object arrays (pickles) and members that declare more bytes than they hold."""
    members = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise CheckpointError("checkpoint {}: member {} has an .npy format version {} this tool does not "
                                      "read: re-save it with numpy.savez".format(path, info.filename, version))
            shape, _, dtype = reader(stream, max_header_size=1 << 20)
            header_bytes = stream.tell()
        if dtype.hasobject:
            raise CheckpointError("checkpoint {} holds pickled (object) arrays, which are never loaded ({}): "
                                  "re-save it as plain numeric arrays".format(path, info.filename))
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared > info.file_size - header_bytes:
            raise CheckpointError("checkpoint {}: member {} declares a {} {} array ({}) but holds {}: the file is "
                                  "damaged; download it again".format(
                                      path, info.filename, list(shape), dtype, _size(declared),
                                      _size(max(0, info.file_size - header_bytes))))
        members[variable_key(info.filename[:-len(".npy")])] = (info.filename[:-len(".npy")], tuple(shape), dtype)
    return members


def _size(count):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return "{:.4g} {}".format(count, unit) if unit != "bytes" else "{} bytes".format(count)
        count /= 1000.0


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
    """Refuse a checkpoint whose weights cannot be right: values that are not real floating-point numbers
    (complex, integer, boolean: converting them to float32 would silently drop or invent information), a
    non-finite value (NaN, ±inf), or a negative BatchNorm variance (``…/variance/EMA``). ``names``: the
    variables to check (default all). Such a network gives NaN feature maps, which the study would otherwise
    exclude as degenerate. Floating-point weights of another precision than the released float32 (float16,
    float64) are converted to float32 with a warning (`precision_note`; the manifest records the dtypes)."""
    for name in (checkpoint.arrays if names is None else names):
        array = checkpoint.arrays[name]
        if not np.issubdtype(array.dtype, np.floating):
            what = "numbers" if np.issubdtype(array.dtype, np.number) or array.dtype == bool else "not numbers"
            raise CheckpointError("{}: variable {} holds {} values ({}), not real floating-point weights: the file "
                                  "is damaged or not a checkpoint of these models; export it again as float32".format(
                                      checkpoint.path, name, array.dtype, what))
        bad = array.size - int(np.isfinite(array).sum())
        if bad:
            raise CheckpointError("{}: variable {} holds {} non-finite value(s) (NaN or inf): the checkpoint is "
                                  "damaged; download or export it again".format(checkpoint.path, name, bad))
        if name.endswith("/variance/EMA") and (array < 0).any():
            raise CheckpointError("{}: variable {} holds {} negative value(s), impossible for a BatchNorm "
                                  "variance: the checkpoint is damaged; download or export it again".format(
                                      checkpoint.path, name, int((array < 0).sum())))
    note = precision_note(checkpoint, names)
    if note and not checkpoint.noted:
        checkpoint.noted = True
        log.warning(note)


def precision_note(checkpoint: Checkpoint, names: Optional[Sequence[str]] = None) -> Optional[str]:
    """One line when some of the variables ``names`` (default all) are floating point of another precision than
    float32, else None. They are converted to float32 when restored: float16 weights change the logits by about
    1e-3 relative to the float32 checkpoint they were made from, float64 ones by float32 rounding."""
    dtypes = checkpoint.dtypes(names)
    other = {dtype: count for dtype, count in dtypes.items() if dtype != "float32"}
    if not other:
        return None
    return ("{}: {} of {} variable(s) are {}, not float32 like the released checkpoints: they are converted to "
            "float32, so the numbers are those of the rounded weights (recorded in the manifest)".format(
                checkpoint.path, sum(other.values()), sum(dtypes.values()),
                ", ".join("{} ({})".format(dtype, count) for dtype, count in other.items())))


def load_for(spec, path) -> Checkpoint:
    """Read ``path`` and check it for ``spec`` before any graph is built: the architecture, every variable's
    name and shape (from the members' headers, before anything is inflated: `read_checkpoint`) and the values
    (`check_values`). Engine-neutral; every engine still restores strictly."""
    checkpoint = read_checkpoint(path, spec)
    check_values(checkpoint)
    return checkpoint


# --- the variables a model holds, and recognising the architecture a checkpoint belongs to ------------

_BLOCK = re.compile(r"^group(\d+)/block(\d+)/")
_BN = ("gamma", "beta", "mean/EMA", "variance/EMA")


def model_variables(spec) -> List[Tuple[str, Tuple[int, ...]]]:
    """(tensorpack name, shape) of every variable ``spec``'s network holds, read off its zoo entry without any
    engine: what `repro.engines.tensorflow.models` creates (convolutions without bias, BatchNorm's four
    variables, the ``linear`` classifier with bias; the denoising blocks of Feature Denoising Sec. 4 and 6).
    ``tests/test_checkpoints.py`` holds it equal to both engines' models and to the released checkpoints'
    manifest, so checkpoints can be checked name by name and shape by shape before any array is read."""
    arch = spec.arch
    variables = []

    def conv(scope, kernel, channels_in, channels_out, groups=1, bn=True):
        variables.append((scope + "/W", (kernel, kernel, channels_in // groups, channels_out)))
        if bn:
            variables.extend((scope + "/bn/" + name, (channels_out,)) for name in _BN)

    conv("conv0", arch.stem_kernel, 3, arch.stem_channels)
    channels_in = arch.stem_channels
    for group, (count, channels) in enumerate(zip(arch.blocks_per_group, arch.group_channels)):
        inner, out = channels * arch.resnext_groups * arch.resnext_width // 64, channels * 4
        for block in range(count):
            scope = "group{}/block{}/".format(group, block)
            conv(scope + "conv1", 1, channels_in, inner)
            conv(scope + "conv2", 3, inner, inner, groups=arch.resnext_groups)
            conv(scope + "conv3", 1, inner, out)
            if channels_in != out:
                conv(scope + "convshortcut", 1, channels_in, out)
            if arch.family == "resnext_denoise_all":
                conv(scope + "non_local/conv", 1, out, out)
            channels_in = out
        if arch.family == "resnet_denoise":
            scope = "group{}_denoise/".format(group)
            conv(scope + "embedding_theta", 1, out, out // 2, bn=False)
            conv(scope + "embedding_phi", 1, out, out // 2, bn=False)
            conv(scope + "conv", 1, out, out)
    variables += [("linear/W", (channels_in, arch.num_classes)), ("linear/b", (arch.num_classes,))]
    return variables


def _dimension(shapes, name, axis, rank):
    """``shapes[name][axis]``, or None when the variable is missing or not of ``rank`` dimensions."""
    shape = shapes.get(name)
    return shape[axis] if shape is not None and len(shape) == rank else None


def describe_architecture(shapes: Dict[str, Tuple[int, ...]]) -> Optional[dict]:
    """Read the architecture off a checkpoint's variable names and shapes: builder family, blocks per
    group, ResNeXt cardinality, widths and classes (None where the variable it is read from is missing or of
    the wrong rank). None when it is not a ResNet-family checkpoint."""
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
    inner_in, inner_out = (_dimension(shapes, "group0/block0/conv2/W", axis, 4) for axis in (2, 3))
    return {
        "family": family,
        "blocks_per_group": tuple(len(blocks[g]) for g in sorted(blocks)),
        "resnext_groups": inner_out // inner_in if inner_in and inner_out else None,
        "stem_channels": _dimension(shapes, "conv0/W", 3, 4),
        "stem_kernel": _dimension(shapes, "conv0/W", 0, 4),
        "first_inner_width": _dimension(shapes, "group0/block0/conv1/W", 3, 4),
        "num_classes": _dimension(shapes, "linear/W", 1, 2),
    }


_READ_FROM = {"resnext_groups": "group0/block0/conv2/W", "stem_channels": "conv0/W", "stem_kernel": "conv0/W",
              "first_inner_width": "group0/block0/conv1/W", "num_classes": "linear/W"}
"""The variable each field of `describe_architecture` is read from."""


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


def _difference(field_name, found, expected, shapes) -> str:
    """One field of the architecture that differs, with the variable it was read from."""
    source = _READ_FROM.get(field_name)
    if found is None and source is not None:
        what = "is missing" if source not in shapes else "has shape {}".format(list(shapes[source]))
        return "{}: {} {}".format(field_name.replace("_", " "), source, what)
    where = " (from {} of shape {})".format(source, list(shapes[source])) if source in shapes else ""
    show = (lambda value: list(value)) if isinstance(expected, tuple) else (lambda value: value)
    return "{} {}{}, expected {}".format(field_name.replace("_", " "), show(found), where, show(expected))


def check_architecture(checkpoint: Checkpoint, spec) -> None:
    """Raise when the checkpoint is of another architecture than ``spec``, naming both and what differs."""
    shapes = checkpoint.shapes
    found = describe_architecture(shapes)
    if found is None:
        raise CheckpointError("{} is not a checkpoint of a ResNet-family model (no conv0/W, linear/W or "
                              "groupG/blockB variables); you asked for {}".format(checkpoint.path, _label(spec)))
    expected = _architecture_of(spec)
    if found == expected:
        return
    matches = [other for other in recognise(shapes) if (other.name, other.zoo) != (spec.name, spec.zoo)]
    if matches:
        what = " or ".join(_label(other) for other in matches)
        raise CheckpointError("{} is a {} checkpoint, you asked for {}: pass --model {} or the right "
                              "--load".format(checkpoint.path, what, _label(spec), matches[0].name))
    differences = [_difference(name, found[name], expected[name], shapes) for name in expected
                   if found[name] != expected[name]]
    raise CheckpointError("{} does not fit {} ({} network, blocks per group {}): {}".format(
        checkpoint.path, _label(spec), spec.arch.family, list(spec.arch.blocks_per_group), "; ".join(differences)))


def check_variables(checkpoint: Checkpoint, variables: Sequence[Tuple[str, Sequence[int]]],
                    values: bool = True) -> List[str]:
    """Strict check of a checkpoint against a model's variables ``[(name, shape), …]`` — every engine's.

    A missing variable or a shape mismatch raises CheckpointError naming it; with ``values``, so does a value
    that cannot be right (`check_values`). Extra keys are logged as a warning and returned. Works on the
    declared shapes, so it can run before any array is read (`read_checkpoint`).
    """
    shapes = checkpoint.shapes
    missing, mismatched = [], []
    for name, shape in variables:
        if name not in shapes:
            missing.append(name)
        elif tuple(shapes[name]) != tuple(shape):
            mismatched.append("{} has shape {} in the checkpoint, the model needs {}".format(
                name, list(shapes[name]), list(shape)))
    if missing:
        raise CheckpointError("{} lacks {} model variable(s): {}{}; it does not belong to this model".format(
            checkpoint.path, len(missing), ", ".join(missing[:5]), " …" if len(missing) > 5 else ""))
    if mismatched:
        raise CheckpointError("{}: {}{}".format(
            checkpoint.path, "; ".join(mismatched[:3]), " …" if len(mismatched) > 3 else ""))
    wanted = sorted({name for name, _ in variables})
    if values:
        check_values(checkpoint, wanted)
    extra = sorted(set(shapes) - set(wanted))
    if extra and values:
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
