"""Targeted PGD and the random perturbation (SPEC §3) in graph mode, checked against hand-computed values,
direct NumPy reimplementations and the gradient of the same graph (the draws: tests/test_protocol.py)."""
import numpy as np
import pytest
from tensorpack.tfutils.tower import TowerContext

from repro import checkpoints, protocol
from repro.data import to_model_space
from repro.engines.tensorflow import attacks
from repro.engines.tensorflow import session as tf_session
from repro.engines.tensorflow.models import IMAGE_SCALE, model_function
from repro.engines.tensorflow.synthetic import synthetic_checkpoint
from repro.engines.tensorflow.tfcompat import tf
from tests.conftest import tiny_spec

EPSILON = 16.0
EPSILON_MODEL = np.float32(EPSILON * IMAGE_SCALE)   # 16·2/255 in model space
TOLERANCE = 1e-6


# --- step size ------------------------------------------------------------------------------------

def _extreme_images(count=3, size=32, seed=0):
    """BGR uint8 images whose pixels are mostly 0 or 255 (so clipping to [-1, 1] matters), the rest random."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3))
    corner = rng.random(images.shape)
    images[corner < 0.3] = 0
    images[corner > 0.7] = 255
    return images.astype(np.uint8)


def _run_ops(build, *arrays):
    graph = tf.Graph()
    with graph.as_default():
        placeholders = [tf.placeholder(tf.float32, a.shape) for a in arrays]
        outputs = build(*placeholders)
        with tf.Session() as session:
            return session.run(outputs, dict(zip(placeholders, arrays)))


@pytest.mark.parametrize("noise", ["uniform", "sign"])
def test_random_perturbation_stays_in_the_ball_and_the_valid_range(noise):
    clean = to_model_space(_extreme_images())
    assert np.sum(clean == -1.0) > 1000 and np.sum(clean == 1.0) > 1000
    draws = protocol.perturbation_draws(1, range(len(clean)), clean.shape[1:], noise=noise)["random"]
    perturbed = _run_ops(lambda x, n: attacks.random_perturbation(x, n, EPSILON), clean, draws)

    expected = np.clip(clean + draws * EPSILON_MODEL, np.float32(-1), np.float32(1))
    np.testing.assert_allclose(perturbed, expected, rtol=0, atol=1e-7)
    assert np.abs(perturbed - clean).max() <= EPSILON_MODEL + TOLERANCE
    assert perturbed.min() >= -1.0 and perturbed.max() <= 1.0
    # clipping happened: white pixels pushed up stay at 1, black pixels pushed down stay at -1
    assert np.all(perturbed[(clean == 1.0) & (draws > 0)] == 1.0)
    assert np.all(perturbed[(clean == -1.0) & (draws < 0)] == -1.0)
    if noise == "sign":
        moved = np.abs(perturbed - clean)
        inside = (clean > -1 + EPSILON_MODEL) & (clean < 1 - EPSILON_MODEL)
        np.testing.assert_allclose(moved[inside], EPSILON_MODEL, rtol=0, atol=TOLERANCE)


def test_epsilon_ball_is_the_linf_ball_intersected_with_the_valid_range():
    clean = to_model_space(_extreme_images(count=2))
    low, high = _run_ops(lambda x: attacks.epsilon_ball(x, EPSILON), clean)
    np.testing.assert_allclose(low, np.maximum(clean - EPSILON_MODEL, -1), rtol=0, atol=1e-7)
    np.testing.assert_allclose(high, np.minimum(clean + EPSILON_MODEL, 1), rtol=0, atol=1e-7)
    assert np.all(low[clean == -1.0] == -1.0) and np.all(high[clean == 1.0] == 1.0)


# --- PGD on a tiny network ------------------------------------------------------------------------

class AttackGraph:
    """A tiny network with `pgd_targeted` and, outside the loop, the same loss's input gradient."""

    def __init__(self, spec, seed=0, **gains):
        self.spec = spec
        size = spec.arch.input_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.clean = tf.placeholder(tf.float32, [None, 3, size, size])
            self.start = tf.placeholder(tf.float32, [None, 3, size, size])
            self.target = tf.placeholder(tf.int64, [None])
            self.steps = tf.placeholder(tf.int32, [])
            self.step_size = tf.placeholder(tf.float32, [])
            model = model_function(spec)
            with TowerContext("", is_training=False):
                self.logits = model(self.start)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=self.logits, labels=self.target)
                self.gradient, = tf.gradients(losses, self.start)
                self.loss = losses
                with tf.name_scope("attack"):
                    self.attack, _ = attacks.pgd_targeted(model, self.clean, self.start, self.target,
                                                          EPSILON, self.step_size, self.steps)
            self.variables = tf.global_variables()
            self.session = tf.Session()
        arrays = synthetic_checkpoint(spec, seed=seed, **gains)
        tf_session.restore(self.session, checkpoints.Checkpoint(None, "", arrays), spec)
        self.graph.finalize()

    def run(self, clean, start, target, steps, step_size):
        return self.session.run(self.attack, {self.clean: clean, self.start: start, self.target: target,
                                              self.steps: steps, self.step_size: step_size})

    def gradient_at(self, image, target):
        return self.session.run(self.gradient, {self.start: image, self.target: target})

    def predict(self, image):
        return self.session.run(self.logits, {self.start: image}).argmax(axis=1)


@pytest.fixture(scope="module")
def attack_graph():
    graph = AttackGraph(tiny_spec("resnet_denoise"))
    yield graph
    graph.session.close()


@pytest.fixture(scope="module")
def batch(attack_graph):
    """8 images (a third of their pixels at 0 or 255), their draws, PGD starts x + ε·U(-1, 1) (not
    clipped, as in the study) and random targets other than the network's clean prediction."""
    clean = to_model_space(_extreme_images(count=8, size=64, seed=4))
    draws = protocol.perturbation_draws(0, range(8), clean.shape[1:], num_classes=10)
    predicted = attack_graph.predict(clean)
    targets = protocol.random_targets(predicted, draws["target_offset"], 10)
    start = clean + draws["start"] * EPSILON_MODEL
    return dict(clean=clean, start=start, targets=targets, predicted=predicted)


def _ball(clean):
    return (np.clip(clean - EPSILON_MODEL, np.float32(-1), np.float32(1)),
            np.clip(clean + EPSILON_MODEL, np.float32(-1), np.float32(1)))


def test_one_pgd_step_is_a_signed_gradient_step_clipped_to_the_ball(attack_graph, batch):
    clean, start, targets = batch["clean"], batch["start"], batch["targets"]
    alpha = np.float32(1.6 * IMAGE_SCALE)
    adversarial = attack_graph.run(clean, start, targets, steps=1, step_size=1.6)

    gradient = attack_graph.gradient_at(start, targets)
    low, high = _ball(clean)
    expected = np.clip(start - alpha * np.sign(gradient), low, high)
    np.testing.assert_allclose(adversarial, expected, rtol=0, atol=1e-7)
    assert np.mean(gradient != 0) > 0.5        # most pixels do move: the check is not vacuous


def test_every_pgd_step_moves_a_pixel_by_alpha_or_zero_unless_clipped(attack_graph, batch):
    clean, targets = batch["clean"], batch["targets"]
    low, high = _ball(clean)
    alpha = 2.0 * IMAGE_SCALE
    previous = np.clip(batch["start"], low, high)
    for _ in range(3):
        current = attack_graph.run(clean, previous, targets, steps=1, step_size=2.0)
        moved = np.abs(current - previous)
        clipped = (current == low) | (current == high)
        by_alpha = np.abs(moved - alpha) < TOLERANCE
        still = moved == 0
        assert np.all(by_alpha | still | clipped)
        assert by_alpha.mean() > 0.3           # a real step, not a no-op
        previous = current


def test_pgd_stays_in_the_epsilon_ball_and_the_valid_range(attack_graph, batch):
    clean = batch["clean"]
    adversarial = attack_graph.run(clean, batch["start"], batch["targets"], steps=5, step_size=4.0)
    assert np.abs(adversarial - clean).max() <= EPSILON_MODEL + TOLERANCE
    assert adversarial.min() >= -1.0 and adversarial.max() <= 1.0
    # the start left the valid range at saturated pixels; the attack brought them back
    assert batch["start"].max() > 1.0 and batch["start"].min() < -1.0


def test_zero_iterations_return_the_start_projected_into_the_ball(attack_graph, batch):
    clean, start = batch["clean"], batch["start"]
    result = attack_graph.run(clean, start, batch["targets"], steps=0, step_size=1.0)
    low, high = _ball(clean)
    np.testing.assert_array_equal(result, np.clip(start, low, high))
    assert not np.array_equal(result, start)    # the projection did something


def test_chained_single_steps_equal_one_multi_step_run(attack_graph, batch):
    clean, targets = batch["clean"], batch["targets"]
    chained = batch["start"]
    for _ in range(3):
        chained = attack_graph.run(clean, chained, targets, steps=1, step_size=1.0)
    at_once = attack_graph.run(clean, batch["start"], targets, steps=3, step_size=1.0)
    np.testing.assert_array_equal(chained, at_once)


def test_batch_norm_is_in_inference_mode_during_the_attack(attack_graph, batch):
    """With batch statistics an image's attack would depend on the rest of its batch."""
    clean, start, targets = batch["clean"], batch["start"], batch["targets"]
    together = attack_graph.run(clean, start, targets, steps=2, step_size=1.0)
    alone = attack_graph.run(clean[5:6], start[5:6], targets[5:6], steps=2, step_size=1.0)
    np.testing.assert_allclose(alone[0], together[5], rtol=0, atol=1e-6)
    before = attack_graph.session.run(attack_graph.variables)
    attack_graph.run(clean, start, targets, steps=2, step_size=1.0)
    after = attack_graph.session.run(attack_graph.variables)
    assert all(np.array_equal(b, a) for b, a in zip(before, after))   # no update op ran


def test_pgd_reaches_the_target_on_a_random_tiny_network(attack_graph, batch):
    clean, targets = batch["clean"], batch["targets"]
    iterations = 40
    step = protocol.step_size_rule(EPSILON, iterations)
    assert step == 1.0
    assert np.all(targets != batch["predicted"])
    adversarial = attack_graph.run(clean, batch["start"], targets, steps=iterations, step_size=step)
    reached = attack_graph.predict(adversarial) == targets
    assert reached.mean() >= 0.75, (attack_graph.predict(adversarial), targets)
    # the loss to the target went down for every image
    before = attack_graph.session.run(attack_graph.loss, {attack_graph.start: clean, attack_graph.target: targets})
    after = attack_graph.session.run(attack_graph.loss, {attack_graph.start: adversarial,
                                                         attack_graph.target: targets})
    assert np.all(after < before)
    assert np.abs(adversarial - clean).max() <= EPSILON_MODEL + TOLERANCE


@pytest.mark.slow
def test_full_depth_synthetic_resnext_denoise_all_stays_finite_under_large_pgd_steps():
    """33 dot-product non-local blocks iterate a cubic map: with too large a γ on their branches one
    α = 8 PGD step overflowed the synthetic X101 to NaN (the full-size evaluate test then excluded its
    adversarial metrics). The real depth and widths at 64×64 input, attacked with steps of α = ε = 16."""
    import dataclasses
    from repro import zoo
    full = zoo.get_model("ResNeXtDenoiseAll")
    spec = dataclasses.replace(full, arch=dataclasses.replace(full.arch, input_size=64))
    graph = AttackGraph(spec)
    try:
        clean = to_model_space(_extreme_images(count=2, size=64, seed=7))
        draws = protocol.perturbation_draws(0, range(2), clean.shape[1:], num_classes=1000)
        targets = protocol.random_targets([0, 1], draws["target_offset"], 1000)
        start = clean + draws["start"] * EPSILON_MODEL
        for steps, step_size in [(2, 8.0), (3, 16.0)]:
            adversarial = graph.run(clean, start, targets, steps=steps, step_size=step_size)
            assert np.isfinite(adversarial).all()
            logits = graph.session.run(graph.logits, {graph.start: adversarial})
            assert np.isfinite(logits).all() and np.abs(logits).max() < 100
            assert np.isfinite(graph.gradient_at(adversarial, targets)).all()
    finally:
        graph.session.close()


def test_the_attack_reports_a_non_finite_loss_or_gradient_before_clipping_hides_it():
    """A model whose logits are NaN for some inputs: PGD's finite flag is False (clipping would turn NaN into the
    ε-ball's bound on GPUs and hide it), and True for a model that stays finite."""
    from repro.engines.tensorflow.tfcompat import tf as tf1
    clean = np.zeros((2, 3, 8, 8), np.float32)
    start = clean + 0.01
    target = np.array([1, 2], np.int64)
    results = {}
    for name, model_fn in (("nan", lambda x: tf1.sqrt(tf1.reduce_mean(x, axis=[1, 2, 3]) - 1.0)[:, None] *
                            tf1.ones([1, 10])),
                           ("finite", lambda x: tf1.reduce_mean(x, axis=[1, 2, 3])[:, None] *
                            tf1.range(10, dtype=tf1.float32)[None])):
        graph = tf1.Graph()
        with graph.as_default():
            adversarial, finite = attacks.pgd_targeted(model_fn, tf1.constant(clean), tf1.constant(start),
                                                       tf1.constant(target), 16.0, 1.0, tf1.constant(3))
            with tf1.Session() as session:
                results[name] = session.run([adversarial, finite])
    assert not results["nan"][1] and results["finite"][1]
    assert np.isfinite(results["finite"][0]).all()
