"""The study's protocol (engine-neutral): the step-size rule, random targets, per-image draws that do not
depend on batching, and the settings' validation."""
import numpy as np
import pytest
from scipy import stats

from repro import protocol
from repro.protocol import StudyConfig

EPSILON = 16.0


@pytest.mark.parametrize("iterations, step_size, expected", [
    (100, 1.0, 1.0),     # the paper's 100-step attack
    (10, 1.0, 1.6),      # Feature Denoising, Sec. 6.1: ε/10 = 1.6 for 10 steps
    (1, 1.0, 16.0),      # one step of ε
    (1000, 1.0, 1.0),
    (100, 2.0, 2.0),     # a custom step size wins when it is larger than ε/iterations
    (10, 2.0, 2.0),
    (10, 0.5, 1.6),      # ... and loses when it is smaller
    (100, 0.5, 0.5),
])
def test_step_size_rule(iterations, step_size, expected):
    assert protocol.step_size_rule(EPSILON, iterations, step_size) == pytest.approx(expected, rel=1e-12)


def test_study_config_uses_the_step_size_rule():
    assert StudyConfig().step_size == 1.0                     # defaults: 100 steps, ε = 16
    assert StudyConfig(attack_iterations=10).step_size == pytest.approx(1.6)
    assert StudyConfig(attack_iterations=4, epsilon=8.0).step_size == pytest.approx(2.0)
    assert StudyConfig(attack_iterations=100, attack_step_size=3.0).step_size == 3.0


# --- targets and per-image draws ------------------------------------------------------------------

def test_random_targets_by_hand():
    labels = [0, 5, 999, 998, 3]
    offsets = [1, 999, 1, 5, 500]
    assert protocol.random_targets(labels, offsets).tolist() == [1, 4, 0, 3, 503]
    assert protocol.random_targets([9, 0], [1, 9], num_classes=10).tolist() == [0, 9]


def test_random_targets_never_the_label_and_uniform_over_the_other_classes():
    classes, draws_count = 10, 4500
    ids = np.arange(draws_count)
    labels = np.random.default_rng(123).integers(0, classes, draws_count)
    offsets = protocol.perturbation_draws(7, ids, (1, 1, 1), num_classes=classes)["target_offset"]
    targets = protocol.random_targets(labels, offsets, classes)

    assert offsets.min() >= 1 and offsets.max() <= classes - 1
    assert np.all(targets != labels) and targets.min() >= 0 and targets.max() < classes
    # The offset is uniform on {1, …, 9}: χ² goodness of fit, and every count within 5σ of 500.
    counts = np.bincount(offsets, minlength=classes)[1:]
    expected = draws_count / (classes - 1)
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    sigma = np.sqrt(draws_count * (1 / 9) * (8 / 9))
    assert np.all(np.abs(counts - expected) < 5 * sigma), counts
    # Given the label, the target is uniform over the 9 other classes (label 3 here: ~450 draws).
    given = targets[labels == 3]
    counts_given = np.bincount(given, minlength=classes)
    assert counts_given[3] == 0
    assert stats.chisquare(np.delete(counts_given, 3)).pvalue > 1e-3, counts_given


def test_target_offsets_cover_1_to_999_for_imagenet():
    offsets = protocol.perturbation_draws(0, range(20000), (1, 1, 1))["target_offset"]
    assert offsets.min() == 1 and offsets.max() == 999
    assert len(np.unique(offsets)) == 999      # 20000 draws hit every one of 999 values (P(miss) ≈ 2e-6)


def test_draws_are_deterministic_per_seed_and_image_id_whatever_the_batch():
    shape = (3, 8, 8)
    batch = protocol.perturbation_draws(5, [7, 3, 11, 0], shape)
    again = protocol.perturbation_draws(5, [7, 3, 11, 0], shape)
    alone = protocol.perturbation_draws(5, [11], shape)
    reordered = protocol.perturbation_draws(5, [0, 11, 42, 3, 7], shape)
    for key in ("target_offset", "start", "random"):
        np.testing.assert_array_equal(batch[key], again[key])
        np.testing.assert_array_equal(batch[key][2], alone[key][0])
        np.testing.assert_array_equal(batch[key][[0, 1, 2, 3]], reordered[key][[4, 3, 1, 0]])
    # numpy integer ids (as from an index array) give the same draws as Python ints
    np.testing.assert_array_equal(protocol.perturbation_draws(5, np.array([11]), shape)["start"], alone["start"])
    # another seed, or another image, draws something else
    other_seed = protocol.perturbation_draws(6, [7, 3, 11, 0], shape)
    assert not np.array_equal(other_seed["start"], batch["start"])
    assert not np.array_equal(other_seed["random"], batch["random"])
    assert not np.array_equal(other_seed["target_offset"], batch["target_offset"])
    assert not np.array_equal(batch["start"][0], batch["start"][1])


def test_draw_shapes_and_types():
    draws = protocol.perturbation_draws(0, [1, 2], (3, 4, 5), num_classes=10)
    assert draws["target_offset"].shape == (2,) and draws["target_offset"].dtype == np.int64
    for key in ("start", "random"):
        assert draws[key].shape == (2, 3, 4, 5) and draws[key].dtype == np.float32
    empty = protocol.perturbation_draws(0, [], (3, 4, 5))
    assert empty["start"].shape == (0, 3, 4, 5) and empty["target_offset"].shape == (0,)


def test_uniform_noise_statistics():
    draws = protocol.perturbation_draws(3, range(20), (3, 32, 32))
    for key in ("start", "random"):
        values = draws[key].astype(np.float64).ravel()          # 61,440 values
        assert values.min() >= -1.0 and values.max() <= 1.0
        assert values.min() < -0.999 and values.max() > 0.999
        # U(-1, 1): mean 0 (σ of the mean 0.0023), variance 1/3 (σ of the variance 0.0012)
        assert abs(values.mean()) < 0.012
        assert values.var() == pytest.approx(1 / 3, abs=0.006)
        # ten equal bins of [-1, 1] hold 10 % each
        counts, _ = np.histogram(values, bins=10, range=(-1, 1))
        assert stats.chisquare(counts).pvalue > 1e-3, counts
    # the PGD start and the random perturbation are independent draws, not the same noise
    correlation = np.corrcoef(draws["start"].ravel(), draws["random"].ravel())[0, 1]
    assert abs(correlation) < 0.02


def test_sign_noise_is_exactly_plus_or_minus_one():
    uniform = protocol.perturbation_draws(3, range(10), (3, 16, 16))
    sign = protocol.perturbation_draws(3, range(10), (3, 16, 16), noise="sign")
    values = sign["random"]
    assert set(np.unique(values).tolist()) == {-1.0, 1.0}
    assert abs(values.mean()) < 0.03            # 7,680 fair signs: σ of the mean 0.011
    # the noise option changes only the random perturbation, not the attack's target or start
    np.testing.assert_array_equal(sign["target_offset"], uniform["target_offset"])
    np.testing.assert_array_equal(sign["start"], uniform["start"])


def test_unknown_noise_is_a_value_error():
    with pytest.raises(ValueError, match="unknown noise 'gauss'"):
        protocol.perturbation_draws(0, [0], (3, 2, 2), noise="gauss")


# --- random perturbation and the ε-ball (graph ops against NumPy) ---------------------------------


@pytest.mark.parametrize("field,value,message", [
    ("epsilon", float("nan"), "epsilon must be a finite number"), ("epsilon", -1.0, "epsilon must be a finite number"),
    ("attack_step_size", float("inf"), "attack_step_size must be a finite number"),
    ("ssim_data_range", float("nan"), "ssim_data_range must be a finite number > 0 or 'reference'"),
    ("ssim_data_range", 0.0, "ssim_data_range"), ("noise", "gauss", "unknown noise"), ("tap", "relu", "unknown tap"),
    ("metrics", ("mse", "psnrr"), "unknown metric.s. psnrr"), ("attack_chunk", 0, "attack_chunk must be ≥ 1"),
])
def test_study_config_refuses_settings_that_cannot_be_right(field, value, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**{field: value})
