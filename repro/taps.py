"""Feature taps: every residual block's output, by tensor name, in depth order (SPEC §4)."""
from dataclasses import dataclass

from repro.protocol import TAPS


@dataclass(frozen=True)
class Tap:
    block_index: int        # 1-based, depth order
    depth_from_end: int     # 0 = final block
    group: int
    block: int              # index within the group
    tensor: str             # e.g. 'group2/block5/block_output:0'
    channels: int
    height: int
    width: int

    @property
    def name(self):
        return self.tensor[:-2] if self.tensor.endswith(":0") else self.tensor


def block_table(model, taps):
    """Rows of the block table that `repro.aggregate.blocks_frame` joins with the statistics."""
    return [dict(model=model, block_index=t.block_index, depth_from_end=t.depth_from_end, group=t.group,
                 block=t.block, tap=t.name, channels=t.channels, height=t.height, width=t.width) for t in taps]


def denoised_tap_name(spec, group, block):
    """The denoising output that follows block (group, block) in ``spec``'s network, or None (SPEC §4)."""
    family = spec.arch.family
    if family == "resnext_denoise_all":
        return "group{}/block{}/non_local/add".format(group, block)
    if family == "resnet_denoise" and block == spec.arch.blocks_per_group[group] - 1:
        return "group{}_denoise/add".format(group)
    return None


def is_denoising(tap_name):
    """Whether a tap is a denoising operation's output (not a residual block's)."""
    return not tap_name.split(":")[0].endswith("block_output")


def block_tap_names(tap, group, block, denoised):
    """The tensor names (without ``:0``) tapped at residual block (group, block), in forward order: its
    ``block_output`` (``tap='block_output'``), the denoising output after it where there is one (``'denoised'``,
    ``denoised`` its name or None), or both, the block output first (``'both'``: the pair a denoising effect
    compares, SPEC §9)."""
    if tap not in TAPS:
        raise ValueError("unknown tap {!r}: choose one of {}".format(tap, ", ".join(TAPS)))
    output = "group{}/block{}/block_output".format(group, block)
    if tap == "block_output" or denoised is None:
        return [output]
    return [denoised] if tap == "denoised" else [output, denoised]


def numbered(taps):
    """``[(group, block, name, channels, height, width)]`` in forward order → Taps numbered 1… in that order, with
    ``depth_from_end`` counted in taps (0 = the last)."""
    return [Tap(block_index=index + 1, depth_from_end=len(taps) - 1 - index, group=group, block=block,
                tensor=name + ":0", channels=channels, height=height, width=width)
            for index, (group, block, name, channels, height, width) in enumerate(taps)]


def denoising_pairs(block_table):
    """``[(before, after)]`` rows of one model's block table (a list of dicts in block_index order): each denoising
    operation's tap and the block output that enters it, the tap just before it. Only ``--tap both`` has such
    pairs: a ``--tap denoised`` table has none."""
    return [(before, after) for before, after in zip(block_table, block_table[1:])
            if is_denoising(after["tap"]) and not is_denoising(before["tap"])
            and (before["group"], before["block"]) == (after["group"], after["block"])]


def taps_for(spec, tap="block_output"):
    """The taps of ``spec``'s network read off its zoo entry, engine-neutral: the same table as
    `repro.engines.tensorflow.taps.block_taps` reads off a built graph (tested). With ``tap='both'`` each
    block output is followed by the denoising output after it, if any; ``block_index`` numbers the taps."""
    if tap not in TAPS:
        raise ValueError("unknown tap {!r}: choose one of {}".format(tap, ", ".join(TAPS)))
    if getattr(spec, "taps", None) is not None:      # a library model (repro.external): the modules it names
        if tap != "block_output":
            raise ValueError("--tap {} needs denoising blocks, which {} does not have: library models are tapped at "
                             "the modules --taps names".format(tap, spec.name))
        return external_taps(spec)
    arch = spec.arch
    size = -(-arch.input_size // arch.stem_stride)
    if arch.stem_pool:
        size = -(-size // 2)
    positions = []
    for group, (count, channels, stride) in enumerate(zip(arch.blocks_per_group, arch.group_channels,
                                                          arch.group_strides)):
        size = -(-size // stride)
        positions += [(group, block, channels * 4, size) for block in range(count)]
    return numbered([(group, block, name, channels, size, size) for group, block, channels, size in positions
                     for name in block_tap_names(tap, group, block, denoised_tap_name(spec, group, block))])


def external_taps(spec):
    """The taps of a library model (`repro.external.ExternalSpec`): its tapped modules in forward order, ``group``
    numbering their parent modules in order of appearance (a ResNet's ``layer1`` … ``layer4``, a ViT's one
    encoder) and ``block`` their place under it."""
    parents, rows = [], []
    for tap in spec.taps:
        parent = tap.name.rsplit(".", 1)[0] if "." in tap.name else ""
        if parent not in parents:
            parents.append(parent)
        group = parents.index(parent)
        block = sum(1 for row in rows if row[0] == group)
        rows.append((group, block, tap.name, tap.channels, tap.height, tap.width))
    return numbered(rows)
