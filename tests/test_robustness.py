"""repro.robustness on a small synthetic network: clean predictions equal the Classifier's, targets are
the documented per-image draws, results do not depend on batching and equal the study's adversarial
predictions, ε = 0 changes nothing, and the summaries' intervals are scipy's Wilson intervals."""
import numpy as np
import pytest
from scipy.stats import binomtest

from repro import minidata
from repro.engines.tensorflow.classifier_graph import Classifier
from repro.engines.tensorflow.study_graph import StudyGraph
from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
from repro.protocol import StudyConfig
from repro.robustness import RobustnessEvaluator, evaluate_robustness, rate, summarise
from tests.conftest import tiny_spec

SEED = 5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = tiny_spec("resnet", input_size=32)
    path = write_synthetic_checkpoint(spec, tmp_path_factory.mktemp("robustness") / "tiny.npz", seed=2)
    evaluator = RobustnessEvaluator(spec, path)
    yield spec, path, evaluator
    evaluator.close()


@pytest.fixture(scope="module")
def data():
    return minidata.load_split("test", n_per_class=1)          # 10 images, one per class


def test_clean_predictions_are_the_classifiers(model, data):
    spec, path, evaluator = model
    images, labels = data
    result = evaluator.evaluate(images, labels, iterations=0, batch=4)
    classifier = Classifier(spec, path)
    try:
        expected = np.concatenate([classifier.predict_logits(images[i:i + 4], batch_size=4).argmax(1)
                                   for i in range(0, 10, 4)])
    finally:
        classifier.close()
    np.testing.assert_array_equal(result["predictions"], expected)
    assert result["correct"] == int((expected == labels).sum()) and result["n"] == 10
    assert result["success"] is None and result["targets"] is None


def test_targets_are_the_per_image_draws_and_batching_does_not_matter(model, data):
    _, _, evaluator = model
    images, labels = data
    ids = np.arange(100, 110)
    a = evaluator.evaluate(images, labels, iterations=3, seed=SEED, batch=10, image_ids=ids)
    b = evaluator.evaluate(images, labels, iterations=3, seed=SEED, batch=3, image_ids=ids)
    offsets = [np.random.default_rng([SEED, int(i)]).integers(1, 10) for i in ids]
    np.testing.assert_array_equal(a["targets"], (labels + np.array(offsets)) % 10)
    assert (a["targets"] != labels).all()
    np.testing.assert_array_equal(a["predictions"], b["predictions"])
    assert a["success"] == int((a["predictions"] == a["targets"]).sum())
    assert a["correct"] == int((a["predictions"] == labels).sum())
    assert a["step_size"] == pytest.approx(16 / 3)                  # max(1, ε / iterations)


def test_adversarial_predictions_equal_the_studys(model, data):
    spec, path, evaluator = model
    images, labels = data
    ids = list(range(10))
    ours = evaluator.evaluate(images, labels, iterations=4, seed=SEED, batch=10)
    study = StudyGraph(spec, path, StudyConfig(attack_iterations=4, seed=SEED, metrics=("mse",), attack_chunk=4))
    try:
        result = study.run_batch(images, labels, ids)
    finally:
        study.close()
    np.testing.assert_array_equal(ours["targets"], result.targets)
    np.testing.assert_array_equal(ours["predictions"], result.predictions["adversarial"])


def test_zero_epsilon_attack_leaves_the_clean_predictions(model, data):
    _, _, evaluator = model
    images, labels = data
    clean = evaluator.evaluate(images, labels, iterations=0)
    attacked = evaluator.evaluate(images, labels, iterations=5, epsilon=0.0, seed=SEED)
    np.testing.assert_array_equal(attacked["predictions"], clean["predictions"])


def test_one_shot_function_and_bad_input(model, data):
    spec, path, _ = model
    images, labels = data
    result = evaluate_robustness(spec, path, images[:4], labels[:4], iterations=0)
    assert result["n"] == 4
    with pytest.raises(ValueError, match="labels"):
        evaluate_robustness(spec, path, images[:4], labels[:3], iterations=0)


def test_summaries_use_wilson_intervals_in_percent():
    for count, n in ((0, 20), (7, 20), (20, 20), (613, 1000)):
        record = rate(count, n)
        interval = binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
        np.testing.assert_allclose(record["interval95_percent"], [100 * interval.low, 100 * interval.high],
                                   rtol=1e-9, atol=1e-9)
        assert record["percent"] == pytest.approx(100 * count / n)
    summary = summarise({"n": 20, "correct": 7, "success": 3, "step_size": 1.6})
    assert summary["top1_accuracy"]["count"] == 7 and summary["top1_error"]["count"] == 13
    assert summary["attack_success"]["count"] == 3 and summary["step_size"] == 1.6
    assert "attack_success" not in summarise({"n": 20, "correct": 7, "success": None, "step_size": None})
