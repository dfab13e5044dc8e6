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
        return self.tensor[:-2]


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


def taps_for(spec, tap="block_output"):
    """The taps of ``spec``'s network read off its zoo entry, engine-neutral: the same table as
    `repro.engines.tensorflow.taps.block_taps` reads off a built graph (tested)."""
    if tap not in TAPS:
        raise ValueError("unknown tap {!r}: choose one of {}".format(tap, ", ".join(TAPS)))
    arch = spec.arch
    size = -(-arch.input_size // arch.stem_stride)
    if arch.stem_pool:
        size = -(-size // 2)
    positions = []
    for group, (count, channels, stride) in enumerate(zip(arch.blocks_per_group, arch.group_channels,
                                                          arch.group_strides)):
        size = -(-size // stride)
        positions += [(group, block, channels * 4, size) for block in range(count)]
    taps = []
    for index, (group, block, channels, size) in enumerate(positions):
        name = "group{}/block{}/block_output".format(group, block)
        if tap == "denoised":
            name = denoised_tap_name(spec, group, block) or name
        taps.append(Tap(block_index=index + 1, depth_from_end=len(positions) - 1 - index, group=group, block=block,
                        tensor=name + ":0", channels=channels, height=size, width=size))
    return taps
