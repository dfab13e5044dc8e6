"""Feature taps (SPEC §4): every block's output by tensor name, in numeric depth order, with the static
shapes of the graph; the denoised variant; checked on tiny networks of every family and (slow) on the
three full-size ImageNet graphs against the checkpoint manifest."""
import pytest
from tensorpack.tfutils.tower import TowerContext

from repro import zoo
from repro.engines.tensorflow.models import model_function
from repro.engines.tensorflow.taps import block_taps
from repro.engines.tensorflow.tfcompat import tf
from repro.taps import TAPS, block_table, denoising_pairs, is_denoising
from tests.conftest import tiny_spec


def _graph_of(spec):
    """The inference graph of ``spec`` on one zero image, as the study builds it (root name scope)."""
    graph = tf.Graph()
    size = spec.arch.input_size
    with graph.as_default():
        model_function(spec)(tf.zeros([1, 3, size, size]))
    return graph


def _positions(spec):
    """(group, block) of every residual block in depth order, from the architecture."""
    return [(group, block) for group, count in enumerate(spec.arch.blocks_per_group) for block in range(count)]


def _check_tap_fields(graph, taps, names):
    """Names in order, 1-based indices, distance from the end, and shapes equal to the tensors' own."""
    count = len(names)
    assert [t.name for t in taps] == names
    assert [t.tensor for t in taps] == [name + ":0" for name in names]
    assert [t.block_index for t in taps] == list(range(1, count + 1))
    assert [t.depth_from_end for t in taps] == list(range(count - 1, -1, -1))
    for tap in taps:
        shape = graph.get_tensor_by_name(tap.tensor).shape.as_list()
        assert [tap.channels, tap.height, tap.width] == shape[1:], tap


TINY = {  # family → blocks per group: two blocks in some groups so "last in group" is not every block
    "resnet": (2, 1, 2, 1),
    "resnet_denoise": (2, 1, 2, 1),
    "resnext_denoise_all": (2, 1, 1, 1),
}


@pytest.fixture(scope="module")
def tiny_graphs():
    return {family: (spec, _graph_of(spec)) for family, blocks in TINY.items()
            for spec in [tiny_spec(family, blocks=blocks)]}


@pytest.mark.parametrize("family", sorted(TINY))
def test_block_output_taps_of_tiny_networks(family, tiny_graphs):
    spec, graph = tiny_graphs[family]
    taps = block_taps(graph)
    names = ["group{}/block{}/block_output".format(g, b) for g, b in _positions(spec)]
    _check_tap_fields(graph, taps, names)
    assert [(t.group, t.block) for t in taps] == _positions(spec)
    # Hand-computed shapes: 64 → stem /2 → pool /2 = 16, then strides 1, 2, 2, 2; outputs 4 × width.
    sizes = {0: 16, 1: 8, 2: 4, 3: 2}
    widths = {0: 16, 1: 32, 2: 64, 3: 128}
    assert [(t.channels, t.height, t.width) for t in taps] == \
        [(widths[g], sizes[g], sizes[g]) for g, _ in _positions(spec)]


def test_blocks_are_ordered_numerically_not_alphabetically():
    spec = tiny_spec("resnet", blocks=(1, 1, 12, 1))
    graph = _graph_of(spec)
    taps = block_taps(graph)
    names = [t.name for t in taps]
    expected = (["group0/block0/block_output", "group1/block0/block_output"]
                + ["group2/block{}/block_output".format(b) for b in range(12)]
                + ["group3/block0/block_output"])
    assert names == expected
    assert names.index("group2/block10/block_output") == names.index("group2/block9/block_output") + 1
    assert taps[-1].depth_from_end == 0 and taps[-1].block_index == 15
    _check_tap_fields(graph, taps, expected)


def test_denoised_taps_of_resnet_denoise_follow_each_groups_last_block(tiny_graphs):
    spec, graph = tiny_graphs["resnet_denoise"]
    taps = block_taps(graph, tap="denoised")
    blocks = spec.arch.blocks_per_group
    names = ["group{}_denoise/add".format(g) if b == blocks[g] - 1 else "group{}/block{}/block_output".format(g, b)
             for g, b in _positions(spec)]
    assert names == ["group0/block0/block_output", "group0_denoise/add", "group1_denoise/add",
                     "group2/block0/block_output", "group2_denoise/add", "group3_denoise/add"]
    _check_tap_fields(graph, taps, names)
    assert [(t.group, t.block) for t in taps] == _positions(spec)


def test_denoised_taps_of_resnext_denoise_all_follow_every_block(tiny_graphs):
    spec, graph = tiny_graphs["resnext_denoise_all"]
    taps = block_taps(graph, tap="denoised")
    names = ["group{}/block{}/non_local/add".format(g, b) for g, b in _positions(spec)]
    _check_tap_fields(graph, taps, names)
    # the denoising block keeps the shape of the block output it denoises
    outputs = block_taps(graph)
    assert [(t.channels, t.height, t.width) for t in taps] == [(t.channels, t.height, t.width) for t in outputs]


def test_denoised_tap_of_a_network_without_denoising_is_the_block_output(tiny_graphs):
    _, graph = tiny_graphs["resnet"]
    assert block_taps(graph, tap="denoised") == block_taps(graph, tap="block_output")


def test_unknown_tap_and_graph_without_blocks_are_value_errors(tiny_graphs):
    _, graph = tiny_graphs["resnet"]
    with pytest.raises(ValueError, match="unknown tap 'relu'"):
        block_taps(graph, tap="relu")
    assert TAPS == ("block_output", "denoised", "both")
    empty = tf.Graph()
    with empty.as_default(), TowerContext("tower0", is_training=False):   # ops under tower0/
        model_function(tiny_spec("resnet"))(tf.zeros([1, 3, 64, 64]))
    assert "tower0/group0/block0/block_output" in {op.name for op in empty.get_operations()}
    with pytest.raises(ValueError, match="no groupG/blockB/block_output ops"):
        block_taps(empty)


def test_both_taps_put_each_denoising_output_right_after_the_block_output_it_denoises(tiny_graphs):
    for family in ("resnet_denoise", "resnext_denoise_all", "resnet"):
        spec, graph = tiny_graphs[family]
        outputs, denoised, both = (block_taps(graph, tap=tap) for tap in ("block_output", "denoised", "both"))
        # a denoising operation after each group's last block, after every block, or none
        denoised_count = {"resnet_denoise": 4, "resnext_denoise_all": len(outputs), "resnet": 0}[family]
        assert len(both) == len(outputs) + denoised_count
        assert [t.block_index for t in both] == list(range(1, len(both) + 1))
        assert [t.depth_from_end for t in both] == list(range(len(both) - 1, -1, -1))
        assert [t.name for t in both if not is_denoising(t.name)] == [t.name for t in outputs]
        assert [t.name for t in both if is_denoising(t.name)] == [t.name for t in denoised if is_denoising(t.name)]
        rows = block_table("Tiny", both)
        pairs = denoising_pairs(rows)
        assert len(pairs) == denoised_count
        for before, after in pairs:
            assert after["block_index"] == before["block_index"] + 1 and before["tap"].endswith("block_output")
            assert (before["group"], before["block"], before["channels"], before["height"]) == \
                (after["group"], after["block"], after["channels"], after["height"])
        _check_tap_fields(graph, both, [t.name for t in both])
    for tap in ("denoised", "block_output"):          # no block output followed by its denoising output
        assert denoising_pairs(block_table("Tiny", block_taps(tiny_graphs["resnext_denoise_all"][1], tap=tap))) == []


def test_block_table_rows(tiny_graphs):
    _, graph = tiny_graphs["resnet_denoise"]
    taps = block_taps(graph, tap="denoised")
    rows = block_table("Tiny", taps)
    assert len(rows) == len(taps)
    assert rows[1] == dict(model="Tiny", block_index=2, depth_from_end=4, group=0, block=1,
                           tap="group0_denoise/add", channels=16, height=16, width=16)
    assert [r["tap"] for r in rows] == [t.name for t in taps]


# --- full-size ImageNet graphs (no checkpoint needed) ---------------------------------------------

@pytest.fixture(scope="module")
def imagenet_graph():
    built = {}

    def build(name):
        if name not in built:
            built[name] = _graph_of(zoo.get_model(name))
        return built[name]
    return build


@pytest.mark.slow
@pytest.mark.parametrize("name, blocks", [("ResNet", 50), ("ResNetDenoise", 50), ("ResNeXtDenoiseAll", 33)])
def test_full_size_taps_equal_the_manifest(name, blocks, manifest, imagenet_graph):
    graph = imagenet_graph(name)
    spec = zoo.get_model(name)
    expected = manifest[name]["block_output_ops"]
    assert len(expected) == blocks == sum(spec.arch.blocks_per_group)
    taps = block_taps(graph)
    _check_tap_fields(graph, taps, expected)
    assert [(t.group, t.block) for t in taps] == _positions(spec)
    # ResNet-152 / ResNeXt-101 on 224 × 224: 56² after the stem, 7² at the end; outputs 256 … 2048
    assert (taps[0].channels, taps[0].height, taps[0].width) == (256, 56, 56)
    assert (taps[-1].channels, taps[-1].height, taps[-1].width) == (2048, 7, 7)
    by_group = {t.group: (t.channels, t.height, t.width) for t in taps}
    assert by_group == {0: (256, 56, 56), 1: (512, 28, 28), 2: (1024, 14, 14), 3: (2048, 7, 7)}

    denoised = block_taps(graph, tap="denoised")
    denoise_ops = manifest[name]["denoise_output_ops"] or []
    if name == "ResNet":
        assert denoised == taps
    elif name == "ResNetDenoise":
        last = {g: b for g, b in _positions(spec)}
        names = ["group{}_denoise/add".format(g) if b == last[g] else "group{}/block{}/block_output".format(g, b)
                 for g, b in _positions(spec)]
        assert [t.name for t in denoised if "_denoise" in t.name] == denoise_ops
        _check_tap_fields(graph, denoised, names)
    else:
        _check_tap_fields(graph, denoised, denoise_ops)
        assert len(denoise_ops) == 33
