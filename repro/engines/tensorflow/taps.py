"""The block outputs of a built TensorFlow graph, by op name, in depth order (SPEC §4): the same table as
`repro.taps.taps_for` reads off the zoo entry (tested)."""
import re

from repro.protocol import TAPS
from repro.taps import block_tap_names, numbered

_BLOCK_OUTPUT = re.compile(r"^group(\d+)/block(\d+)/block_output$")


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
    ``tap='both'`` taps the block output and, after it, the denoising output (`repro.taps.block_tap_names`).
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
    for group, block in positions:
        denoised = _denoised_name(ops, group, block, block == last_block[group])
        for name in block_tap_names(tap, group, block, denoised):
            channels, height, width = graph.get_tensor_by_name(name + ":0").shape.as_list()[1:]
            taps.append((group, block, name, channels, height, width))
    return numbered(taps)
