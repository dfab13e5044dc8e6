"""Feature taps: every residual block's output, by tensor name, in depth order (SPEC §4)."""
import re
from dataclasses import dataclass

from repro.protocol import TAPS

_BLOCK_OUTPUT = re.compile(r"^group(\d+)/block(\d+)/block_output$")


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


def _denoised_name(graph_ops, group, block, last_in_group):
    """The tensor that carries block (group, block) on after its denoising, if the network has one there:
    ``groupG/blockB/non_local/add`` (a denoising block after every block, ResNeXtDenoiseAll) or
    ``groupG_denoise/add`` (one after each group's last block, ResNetDenoise)."""
    for name, applies in (("group{}/block{}/non_local/add".format(group, block), True),
                          ("group{}_denoise/add".format(group), last_in_group)):
        if applies and name in graph_ops:
            return name
    return None


def block_taps(graph, tap="block_output"):
    """The taps of every residual block of the model in ``graph``, in depth order.

    ``tap='block_output'`` (default, what the paper's "block outputs" most plausibly are) taps
    ``groupG/blockB/block_output``; ``tap='denoised'`` taps, for blocks followed by a denoising block,
    its output instead (see `_denoised_name`) — the feature map that the next block receives. Which one
    the paper used is not stated (SPEC §4). Blocks without a denoising block keep ``block_output``.
    """
    if tap not in TAPS:
        raise ValueError("unknown tap {!r}: choose one of {}".format(tap, ", ".join(TAPS)))
    ops = {op.name for op in graph.get_operations()}
    positions = sorted((int(m.group(1)), int(m.group(2))) for m in map(_BLOCK_OUTPUT.match, ops) if m)
    if not positions:
        raise ValueError("the graph has no groupG/blockB/block_output ops: build the model at the root name scope")
    last_block = {}
    for group, block in positions:
        last_block[group] = max(block, last_block.get(group, -1))
    taps = []
    for index, (group, block) in enumerate(positions):
        name = "group{}/block{}/block_output".format(group, block)
        if tap == "denoised":
            name = _denoised_name(ops, group, block, block == last_block[group]) or name
        tensor = graph.get_tensor_by_name(name + ":0")
        channels, height, width = tensor.shape.as_list()[1:]
        taps.append(Tap(block_index=index + 1, depth_from_end=len(positions) - 1 - index, group=group,
                        block=block, tensor=name + ":0", channels=channels, height=height, width=width))
    return taps


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
    `block_taps` gives from a TensorFlow graph (tested), for engines without named ops."""
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
