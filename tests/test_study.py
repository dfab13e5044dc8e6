"""One batch of the study (`repro.engines.tensorflow.study_graph.StudyGraph`) on a tiny network: every (perturbation, metric,
block) value against `repro.engines.tensorflow.metrics.per_channel` on the tap tensors, the taps and predictions against
an independent forward pass and `repro.engines.tensorflow.classifier_graph.Classifier`, determinism and batch independence,
and the chunked attack against one uninterrupted run; (slow) one full-size ResNet-152 batch."""
import dataclasses

import numpy as np
import pytest

from repro import checkpoints, protocol, zoo
from repro.data import to_model_space
from repro.engines.tensorflow import metrics
from repro.engines.tensorflow import session as tf_session
from repro.engines.tensorflow.classifier_graph import Classifier
from repro.engines.tensorflow.models import IMAGE_SCALE, model_function
from repro.engines.tensorflow.study_graph import StudyGraph
from repro.engines.tensorflow.synthetic import synthetic_checkpoint
from repro.engines.tensorflow.taps import block_taps
from repro.engines.tensorflow.tfcompat import tf
from repro.protocol import PERTURBATIONS, StudyConfig
from tests.conftest import tiny_spec

EPSILON_MODEL = np.float32(16 * IMAGE_SCALE)
CONFIG = StudyConfig(attack_iterations=7, attack_chunk=3, seed=0)
IMAGE_IDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def spec():
    return tiny_spec("resnet", blocks=(1, 2, 1, 1))


@pytest.fixture(scope="module")
def checkpoint(spec):
    return checkpoints.Checkpoint(None, "synthetic", synthetic_checkpoint(spec, seed=1))


@pytest.fixture(scope="module")
def study(spec, checkpoint):
    graph = StudyGraph(spec, checkpoint, CONFIG)
    yield graph
    graph.close()


@pytest.fixture(scope="module")
def images():
    """Four BGR images (64 × 64), a fifth of their pixels saturated at 0 or 255, and their labels."""
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (4, 64, 64, 3))
    corner = rng.random(pixels.shape)
    pixels[corner < 0.1] = 0
    pixels[corner > 0.9] = 255
    return pixels.astype(np.uint8), np.array([3, 0, 9, 5])


@pytest.fixture(scope="module")
def result(study, images):
    """The batch with every block's feature maps fetched alongside the metrics."""
    return study.run_batch(images[0], images[1], IMAGE_IDS, feature_blocks=[t.block_index for t in study.taps])


@pytest.fixture
def swap_config(study):
    """Run the shared study graph with another configuration (only fields read outside the graph)."""
    original = study.config

    def swap(**changes):
        study.config = dataclasses.replace(original, **changes)
    yield swap
    study.config = original


def test_values_exist_for_every_perturbation_metric_and_block(study, result):
    assert [t.block_index for t in study.taps] == [1, 2, 3, 4, 5]
    expected_keys = {(p, m, t.block_index) for p in PERTURBATIONS for m in CONFIG.metrics for t in study.taps}
    assert set(result.values) == expected_keys
    assert len(CONFIG.metrics) == len(metrics.DEFAULT_METRICS) == 10
    channels = {t.block_index: t.channels for t in study.taps}
    assert channels == {1: 16, 2: 32, 3: 32, 4: 64, 5: 128}
    for (_, _, block), value in result.values.items():
        assert value.shape == (len(IMAGE_IDS), channels[block]) and value.dtype == np.float64
    assert result.image_ids == IMAGE_IDS and result.labels.tolist() == [3, 0, 9, 5]
    for name in ("clean",) + PERTURBATIONS:
        assert result.predictions[name].shape == (4,)


def test_feature_maps_have_the_tap_shapes(study, result):
    for tap in study.taps:
        assert result.feature_maps[tap.block_index].shape == (3, 4, tap.channels, tap.height, tap.width)
    # the three parts differ: the perturbations changed every block's output
    maps = result.feature_maps[5]
    assert not np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[0], maps[2])


def test_values_equal_per_channel_metrics_of_the_tap_tensors(study, result):
    for tap in study.taps:
        clean, randomised, adversarial = result.feature_maps[tap.block_index]
        for perturbation, perturbed in zip(PERTURBATIONS, (randomised, adversarial)):
            for metric in CONFIG.metrics:
                expected = metrics.per_channel(metric, clean, perturbed, data_range=CONFIG.ssim_data_range)
                np.testing.assert_allclose(result.values[(perturbation, metric, tap.block_index)], expected,
                                           rtol=1e-9, atol=1e-12, equal_nan=True,
                                           err_msg=str((perturbation, metric, tap.block_index)))
    # not vacuous: the paper's metrics are finite on the larger blocks
    for metric in ("frobenius", "mse", "ssim"):
        assert np.isfinite(result.values[("adversarial", metric, 1)]).all()


class Forward:
    """An independent forward pass in model space: logits and every block output."""

    def __init__(self, spec, checkpoint):
        self.graph = tf.Graph()
        size = spec.arch.input_size
        with self.graph.as_default():
            self.images = tf.placeholder(tf.float32, [None, 3, size, size])
            self.logits = model_function(spec)(self.images)
            self.taps = {t.block_index: self.graph.get_tensor_by_name(t.tensor) for t in block_taps(self.graph)}
            self.session = tf.Session()
        tf_session.restore(self.session, checkpoint, spec)

    def __call__(self, images):
        return self.session.run((self.logits, self.taps), {self.images: images})


@pytest.fixture(scope="module")
def forward(spec, checkpoint):
    model = Forward(spec, checkpoint)
    yield model
    model.session.close()


def test_taps_and_predictions_are_those_of_the_clean_random_and_adversarial_images(
        study, result, images, forward):
    """The three parts of the batch are x, clip(x + ε·noise, −1, 1) with the draws of the image ids,
    and the returned adversarial images."""
    clean = to_model_space(images[0])
    noise = protocol.perturbation_draws(CONFIG.seed, IMAGE_IDS, clean.shape[1:], 10, CONFIG.noise)["random"]
    randomised = np.clip(clean + noise * EPSILON_MODEL, np.float32(-1), np.float32(1))
    for index, (name, inputs) in enumerate(zip(("clean",) + PERTURBATIONS, (clean, randomised, result.adversarial))):
        logits, taps = forward(inputs)
        np.testing.assert_array_equal(result.predictions[name], logits.argmax(axis=1), err_msg=name)
        for block, maps in taps.items():
            np.testing.assert_allclose(result.feature_maps[block][index], maps, rtol=1e-4, atol=1e-5,
                                       err_msg=str((name, block)))


def test_clean_predictions_equal_the_classifier(spec, checkpoint, result, images):
    classifier = Classifier(spec, checkpoint)
    try:
        logits = classifier.predict_logits(images[0])
    finally:
        classifier.close()
    np.testing.assert_array_equal(result.predictions["clean"], logits.argmax(axis=1))
    # the attack moved the predictions to the targets (7 steps suffice on this network)
    assert np.mean(result.predictions["adversarial"] == result.targets) >= 0.75


def test_targets_and_adversarial_images(study, result, images):
    draws = protocol.perturbation_draws(CONFIG.seed, IMAGE_IDS, (3, 64, 64), num_classes=10)
    np.testing.assert_array_equal(result.targets, (images[1] + draws["target_offset"]) % 10)
    assert np.all(result.targets != images[1])
    clean = to_model_space(images[0])
    assert result.adversarial.shape == clean.shape and result.adversarial.dtype == np.float32
    assert np.abs(result.adversarial - clean).max() <= EPSILON_MODEL + 1e-6
    assert result.adversarial.min() >= -1 and result.adversarial.max() <= 1
    assert set(result.timings) == {"attack", "taps_metrics"}


def test_same_seed_and_inputs_give_identical_results(study, result, images):
    again = study.run_batch(images[0], images[1], IMAGE_IDS)
    np.testing.assert_array_equal(again.adversarial, result.adversarial)
    np.testing.assert_array_equal(again.targets, result.targets)
    assert set(again.values) == set(result.values)
    for key, value in result.values.items():
        np.testing.assert_array_equal(again.values[key], value, err_msg=str(key))
    assert again.feature_maps == {}


def test_another_seed_changes_targets_noise_and_attack(study, result, images, swap_config):
    swap_config(seed=1)
    other = study.run_batch(images[0], images[1], IMAGE_IDS)
    assert not np.array_equal(other.targets, result.targets)
    assert not np.array_equal(other.adversarial, result.adversarial)
    random_frobenius = ("random", "frobenius", 1)
    assert not np.allclose(other.values[random_frobenius], result.values[random_frobenius])


def test_an_images_result_does_not_depend_on_its_batch(study, result, images):
    """Images 2 and 3 alone get the targets and adversarial images they got in the batch of four:
    draws are keyed by image id, BatchNorm uses moving statistics. Measured: the adversarial images
    are bit-identical (TF 2.21 oneDNN CPU kernels, batch 4 vs 2), so equality is asserted exactly;
    should another kernel make round-off depend on the batch size, a pixel could land one step away."""
    alone = study.run_batch(images[0][2:], images[1][2:], IMAGE_IDS[2:])
    np.testing.assert_array_equal(alone.targets, result.targets[2:])
    np.testing.assert_array_equal(alone.adversarial, result.adversarial[2:])
    for name in ("clean",) + PERTURBATIONS:
        np.testing.assert_array_equal(alone.predictions[name], result.predictions[name][2:])
    for key, value in result.values.items():
        np.testing.assert_allclose(alone.values[key], value[2:], rtol=1e-5, atol=1e-6, equal_nan=True,
                                   err_msg=str(key))


def test_chunked_attack_equals_one_uninterrupted_run(study, images, swap_config):
    clean = to_model_space(images[0])
    draws = protocol.perturbation_draws(CONFIG.seed, IMAGE_IDS, clean.shape[1:], num_classes=10)
    targets = protocol.random_targets(images[1], draws["target_offset"], 10)
    start = clean + draws["start"] * EPSILON_MODEL
    chunks = []
    chunked, finite = study.run_attack(clean, start, targets, on_steps=chunks.append)
    assert chunks == [3, 3, 1] and finite
    swap_config(attack_chunk=7)
    whole = []
    at_once, _ = study.run_attack(clean, start, targets, on_steps=whole.append)
    assert whole == [7]
    np.testing.assert_array_equal(chunked, at_once)
    swap_config(attack_chunk=100)
    np.testing.assert_array_equal(study.run_attack(clean, start, targets)[0], at_once)
    # and a different number of steps gives a different result (the steps are really taken)
    swap_config(attack_iterations=6, attack_chunk=100)
    assert not np.array_equal(study.run_attack(clean, start, targets)[0], at_once)


def test_zero_attack_iterations_give_the_start_in_the_ball(study, images, swap_config):
    swap_config(attack_iterations=0)
    clean = to_model_space(images[0])
    start = clean + protocol.perturbation_draws(0, IMAGE_IDS, clean.shape[1:])["start"] * EPSILON_MODEL
    calls = []
    result, finite = study.run_attack(clean, start, np.zeros(4, np.int64), on_steps=calls.append)
    low = np.clip(clean - EPSILON_MODEL, np.float32(-1), np.float32(1))
    high = np.clip(clean + EPSILON_MODEL, np.float32(-1), np.float32(1))
    np.testing.assert_array_equal(result, np.clip(start, low, high))
    assert calls == [] and finite


class _SessionGuard:
    """Stands in for the study's session: counts runs and stops a loop that would never end."""

    def __init__(self, session, limit=20):
        self.session, self.limit, self.runs = session, limit, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        if self.runs > self.limit:
            raise RuntimeError("run_attack called session.run more than {} times: it loops forever".format(self.limit))
        return self.session.run(*args, **kwargs)


@pytest.mark.parametrize("chunk", [0, -3])
def test_a_non_positive_attack_chunk_is_a_value_error(study, images, swap_config, chunk):
    clean = to_model_space(images[0])
    session = study.session
    study.session = _SessionGuard(session)
    try:
        with pytest.raises(ValueError, match="attack_chunk"):
            swap_config(attack_chunk=chunk)          # raised here if StudyConfig validates itself ...
            study.run_attack(clean, clean, np.zeros(4, np.int64))   # ... or here
    finally:
        study.session = session


def test_negative_attack_iterations_are_a_value_error(study, images, swap_config):
    clean = to_model_space(images[0])
    start = clean + np.float32(0.5)                  # outside the ball: must never be returned as is
    with pytest.raises(ValueError, match="attack_iterations"):
        swap_config(attack_iterations=-1)
        study.run_attack(clean, start, np.zeros(4, np.int64))


@pytest.mark.slow
def test_denoised_tap_study_graph(images):
    """tap='denoised' on ResNetDenoise: the group ends are tapped after the denoising block, and the
    values are the metrics of those tensors."""
    spec = tiny_spec("resnet_denoise")
    config = StudyConfig(attack_iterations=1, tap="denoised", metrics=("frobenius", "cosine"))
    denoised = StudyGraph(spec, checkpoints.Checkpoint(None, "synthetic", synthetic_checkpoint(spec)), config)
    try:
        assert [t.name for t in denoised.taps] == ["group{}_denoise/add".format(g) for g in range(4)]
        out = denoised.run_batch(images[0][:2], images[1][:2], [0, 1], feature_blocks=[2])
    finally:
        denoised.close()
    assert set(out.values) == {(p, m, b) for p in PERTURBATIONS for m in config.metrics for b in range(1, 5)}
    clean, _, adversarial = out.feature_maps[2]
    np.testing.assert_allclose(out.values[("adversarial", "frobenius", 2)],
                               np.sqrt(((clean.astype(np.float64) - adversarial) ** 2).sum(axis=(2, 3))),
                               rtol=1e-6)


# --- full size ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_size_resnet152_batch(synthetic_imagenet_checkpoint):
    spec = zoo.get_model("ResNet")
    config = StudyConfig(attack_iterations=2, attack_chunk=1)
    study = StudyGraph(spec, synthetic_imagenet_checkpoint("ResNet"), config)
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    try:
        steps = []
        out = study.run_batch(images, np.array([1, 998]), [10, 20], on_steps=steps.append)
    finally:
        study.close()
    assert steps == [1, 1] and config.step_size == 8.0
    assert len(study.taps) == 50
    assert (study.taps[0].channels, study.taps[0].height) == (256, 56)
    assert (study.taps[-1].channels, study.taps[-1].height) == (2048, 7)
    clean = to_model_space(images)
    assert np.abs(out.adversarial - clean).max() <= EPSILON_MODEL + 1e-6
    assert out.adversarial.min() >= -1 and out.adversarial.max() <= 1
    assert np.all(out.targets != np.array([1, 998])) and out.targets.max() < 1000
    for perturbation in PERTURBATIONS:
        for metric in config.metrics:
            assert {b for p, m, b in out.values if (p, m) == (perturbation, metric)} == set(range(1, 51))
        for tap in study.taps:
            for metric in ("frobenius", "mse"):
                value = out.values[(perturbation, metric, tap.block_index)]
                assert value.shape == (2, tap.channels) and np.isfinite(value).all()
            # MSE = ‖A − B‖²_F / (H·W), channel by channel
            np.testing.assert_allclose(out.values[(perturbation, "mse", tap.block_index)] * tap.height * tap.width,
                                       out.values[(perturbation, "frobenius", tap.block_index)] ** 2, rtol=1e-9)


def test_clean_finite_flags_each_image_whose_clean_logits_or_maps_are_not_finite(spec, checkpoint, images, result):
    """The flag the runner stops on: all True for a working network; False where a clean map overflows."""
    assert result.clean_finite.dtype == bool and result.clean_finite.tolist() == [True] * 4
    arrays = dict(checkpoint.arrays)
    arrays["conv0/W"] = np.full_like(arrays["conv0/W"], 3e38)       # finite weights, overflowing maps
    broken = StudyGraph(spec, checkpoints.Checkpoint(None, "overflow", arrays), dataclasses.replace(CONFIG, attack_iterations=0))
    try:
        flags = broken.run_batch(images[0], images[1], IMAGE_IDS).clean_finite
    finally:
        broken.close()
    assert flags.tolist() == [False] * 4
