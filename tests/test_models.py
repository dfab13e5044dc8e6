"""The built graphs hold exactly the released checkpoints' variables and ops; the denoising and
BatchNorm layers compute the SPEC formulas (checked against direct NumPy on small tensors)."""
import numpy as np
import pytest
from tensorpack.models import BatchNorm, Conv2D
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.tower import TowerContext

from repro import zoo
from repro.engines.tensorflow.classifier_graph import Classifier, model_variables
from repro.engines.tensorflow.models import blocks, model_function, preprocess
from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
from repro.engines.tensorflow.tfcompat import tf
from tests.conftest import tiny_spec


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
def test_graph_variables_and_ops_equal_the_manifest(name, manifest):
    spec = zoo.get_model(name)
    graph = tf.Graph()
    with graph.as_default():
        model_function(spec)(preprocess(tf.placeholder(tf.uint8, [None, 224, 224, 3])))
        variables = [[v.name, v.shape.as_list()] for v in tf.global_variables()]
    expected = manifest[name]
    assert variables == [[n, list(s)] for n, s in expected["variables"]]
    ops = {op.name for op in graph.get_operations()}
    for op_name in expected["block_output_ops"] + expected["denoise_output_ops"]:
        assert op_name in ops, op_name
    assert sum(1 for op in ops if op.endswith("/block_output")) == len(expected["block_output_ops"])
    assert spec.depth == expected["depth"] and spec.checkpoint == expected["checkpoint"]


def test_depth_override_changes_blocks_per_group_only():
    spec = zoo.get_model("ResNet", depth=50)
    assert spec.arch.blocks_per_group == (3, 4, 6, 3) and spec.published == {}
    assert zoo.get_model("ResNeXtDenoiseAll", depth=152).arch.resnext_groups == 32
    with pytest.raises(zoo.UnknownModelError, match="depth 34"):
        zoo.get_model("ResNet", depth=34)
    with pytest.raises(zoo.UnknownModelError, match="choose one of ResNet, ResNetDenoise"):
        zoo.get_model("VGG")


def _run(build, inputs, seed=0):
    """Build ``build(*placeholders)`` in inference mode, randomise every variable, run on ``inputs``.
    Returns (outputs, {variable name: value})."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext("", is_training=False), \
            argscope([Conv2D, BatchNorm], data_format="channels_first"), argscope(Conv2D, use_bias=False):
        placeholders = [tf.placeholder(tf.float32, x.shape) for x in inputs]
        with tf.variable_scope("", reuse=tf.AUTO_REUSE):
            output = build(*placeholders)
        rng = np.random.default_rng(seed)
        with tf.Session() as session:
            values = {}
            for variable in tf.global_variables():
                shape = variable.shape.as_list()
                value = rng.uniform(0.5, 1.5, shape) if "variance" in variable.name else rng.normal(0, 0.5, shape)
                variable.load(value.astype(np.float32), session)
                values[variable.name[:-2]] = value.astype(np.float64)
            result = session.run(output, dict(zip(placeholders, inputs)))
    return result, values


def batch_norm_reference(x, scope, values):
    """SPEC §1: inference BatchNorm with the checkpoint's EMA statistics, epsilon 1e-5."""
    shape = (1, -1, 1, 1)
    mean, variance = values[scope + "/mean/EMA"].reshape(shape), values[scope + "/variance/EMA"].reshape(shape)
    gamma, beta = values[scope + "/gamma"].reshape(shape), values[scope + "/beta"].reshape(shape)
    return (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta


def conv1x1(x, kernel):
    return np.einsum("nchw,cd->ndhw", x, kernel[0, 0])


def test_inference_batch_norm_matches_the_formula():
    x = np.random.default_rng(1).normal(size=(2, 6, 5, 4)).astype(np.float32)
    result, values = _run(lambda t: BatchNorm("bn", t, data_format="channels_first"), [x])
    np.testing.assert_allclose(result, batch_norm_reference(x.astype(np.float64), "bn", values), rtol=1e-5, atol=1e-5)


def gaussian_non_local_reference(x, theta_kernel, phi_kernel):
    """SPEC §1 / Xie et al. Sec. 4: y_i = Σ_j softmax_j(θ(x_i)·φ(x_j)/√(C/2)) x_j."""
    n, c, h, w = x.shape
    theta = conv1x1(x, theta_kernel).reshape(n, -1, h * w)
    phi = conv1x1(x, phi_kernel).reshape(n, -1, h * w)
    logits = np.einsum("nci,ncj->nij", theta, phi) / np.sqrt(theta.shape[1])
    weights = np.exp(logits - logits.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    return np.einsum("nij,ncj->nci", weights, x.reshape(n, c, h * w)).reshape(x.shape)


def dot_product_non_local_reference(x):
    """SPEC §1: y_i = (1/HW) Σ_j (x_i·x_j) x_j, no embeddings."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return (np.einsum("nci,ncj,ndj->ndi", flat, flat, flat) / (h * w)).reshape(x.shape)


def test_gaussian_denoising_block_matches_the_formula():
    x = np.random.default_rng(2).normal(size=(2, 8, 3, 5)).astype(np.float32)
    result, values = _run(lambda t: blocks.denoising_block("d", t, embed=True, softmax=True), [x])
    x64 = x.astype(np.float64)
    denoised = gaussian_non_local_reference(x64, values["d/embedding_theta/W"], values["d/embedding_phi/W"])
    expected = x64 + batch_norm_reference(conv1x1(denoised, values["d/conv/W"]), "d/conv/bn", values)
    assert values["d/embedding_theta/W"].shape == (1, 1, 8, 4)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [32, 24], ids=["sqrt-d-a-power-of-two", "sqrt-d-irrational"])
def test_gaussian_denoising_block_gives_the_bits_of_dividing_the_affinity(channels, monkeypatch):
    """Where √d is a power of two the block divides θ instead of the HW × HW affinity θᵀφ: output and input gradient
    must be those of softmax(θᵀφ / √d) computed as written, bit for bit (the attack's trajectories depend on them)."""
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(3, channels, 8, 8)) * 3).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)

    def block_and_input_gradient(t):
        output = blocks.denoising_block("d", t, embed=True, softmax=True)
        return output, tf.gradients(tf.reduce_sum(output * weights), t)[0]

    shortcut = _run(block_and_input_gradient, [x])[0]
    monkeypatch.setattr(blocks, "power_of_two", lambda value: False)
    as_written = _run(block_and_input_gradient, [x])[0]
    assert all(np.array_equal(a, b) for a, b in zip(shortcut, as_written))
    assert np.abs(shortcut[1]).max() > 0


@pytest.mark.parametrize("shape", [(2, 12, 2, 3), (2, 4, 3, 5)], ids=["channels>positions", "channels<=positions"])
def test_dot_product_denoising_block_matches_the_formula_in_both_evaluation_orders(shape):
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    result, values = _run(lambda t: blocks.denoising_block("d", t, embed=False, softmax=False), [x])
    x64 = x.astype(np.float64)
    expected = x64 + batch_norm_reference(conv1x1(dot_product_non_local_reference(x64), values["d/conv/W"]),
                                          "d/conv/bn", values)
    assert set(values) == {"d/conv/W", "d/conv/bn/gamma", "d/conv/bn/beta", "d/conv/bn/mean/EMA",
                           "d/conv/bn/variance/EMA"}
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["resnet", "resnet_denoise", "resnext_denoise_all"])
def test_small_networks_of_each_family_are_deterministic_and_shape_correct(family, tmp_path):
    spec = tiny_spec(family)
    names = dict((n[:-2], s) for n, s in model_variables(spec))
    assert names["linear/W"] == [128, 10] and names["conv0/W"] == [7, 7, 3, 8]
    if family == "resnext_denoise_all":
        # inner width = channels · groups · width_per_group / 64 = 32 · 4 · 16 / 64 = 32 in group 3,
        # and a grouped kernel holds in/groups = 8 input channels.
        assert names["group3/block0/conv2/W"] == [3, 3, 8, 32]
    path = write_synthetic_checkpoint(spec, tmp_path / "t.npz", seed=5)
    images = np.random.default_rng(4).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    first, second = Classifier(spec, path), Classifier(spec, path)
    logits = first.predict_logits(images)
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits, second.predict_logits(images))
    np.testing.assert_allclose(first.predict_logits(images[1:2]), logits[1:2], rtol=1e-5, atol=1e-5)


def test_stem_max_pool_in_nhwc_equals_nchw_pooling_and_has_a_gradient():
    x = np.random.default_rng(6).normal(size=(2, 3, 9, 8)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        t = tf.constant(x)
        pooled = blocks.stem_max_pool(t)
        gradient, = tf.gradients(tf.reduce_sum(pooled), t)
        with tf.Session() as session:
            result, grad = session.run([pooled, gradient])
    # SAME: 9→5 pads 2 rows (1 above, 1 below), 8→4 pads 1 column (on the right).
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)), constant_values=-np.inf)
    expected = np.stack([[padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
                          for j in range(4)] for i in range(5)]).transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(result, expected)
    assert grad.sum() == pytest.approx(result.size)
