"""scripts/train_mini.py: the schedule by hand, the training graph's attack (BatchNorm frozen, ε-ball,
targets), a short end-to-end run whose checkpoint loads strictly and whose model card holds what it
must, and the committed mini-zoo checkpoints reproducing their cards' clean accuracy."""
import hashlib
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
from scipy.stats import binomtest

from repro import cli, minidata, zoo
from repro.engines.tensorflow.classifier_graph import Classifier, model_variables
from repro.engines.tensorflow.models import IMAGE_SCALE
from repro.engines.tensorflow.tfcompat import tf
from repro.robustness import RobustnessEvaluator
from tests.conftest import tiny_spec

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "train_mini.py"
MINI_ZOO = REPO / "mini_zoo"


@pytest.fixture(scope="module")
def train_mini():
    spec = importlib.util.spec_from_file_location("train_mini", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- schedule ----------------------------------------------------------------------------------------

def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero(train_mini):
    config = train_mini.TrainConfig(batch=128, base_learning_rate=0.1, warmup_fraction=0.1)
    peak = 0.2                                          # 0.1 at batch 64, scaled linearly to 128
    assert config.peak_learning_rate == pytest.approx(peak)
    assert train_mini.learning_rate(0.0, config) == 0.0
    assert train_mini.learning_rate(0.05, config) == pytest.approx(peak / 2)
    assert train_mini.learning_rate(0.1, config) == pytest.approx(peak)
    assert train_mini.learning_rate(0.55, config) == pytest.approx(peak / 2)        # half-way down the cosine
    assert train_mini.learning_rate(0.1 + 0.9 / 3, config) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 3)))
    assert train_mini.learning_rate(1.0, config) == pytest.approx(0.0, abs=1e-12)
    assert train_mini.learning_rate(1.5, config) == pytest.approx(0.0, abs=1e-12)


def test_schedule_progress_follows_steps_or_the_clock_whichever_is_further(train_mini):
    counted = train_mini.TrainConfig(steps=100)
    timed = train_mini.TrainConfig(steps=100, minutes=1.0)
    assert train_mini.schedule_progress(25, 1e6, counted) == 0.25          # no budget: steps only
    assert train_mini.schedule_progress(25, 30.0, timed) == 0.5            # the clock is further
    assert train_mini.schedule_progress(60, 30.0, timed) == 0.6            # the steps are further
    assert train_mini.schedule_progress(10, 60.0, timed) == 1.0            # the deadline


def test_training_attack_step_keeps_xie_et_al_path_length(train_mini):
    assert train_mini.TrainConfig(attack_steps=4).step_size == 8.0                  # 2ε / K
    assert train_mini.TrainConfig(attack_steps=2, attack_step_size=3.0).step_size == 3.0


# --- the training graph --------------------------------------------------------------------------------

def test_attack_runs_batchnorm_frozen_and_stays_in_the_epsilon_ball(train_mini):
    """UPDATE_OPS hold only the training forward pass's moving-average updates (two per BatchNorm, none
    from the attack or the clean inference pass); generating adversarial examples changes no variable;
    the examples stay in clip(x ± ε, −1, 1)."""
    spec = tiny_spec("resnet", input_size=32)
    config = train_mini.TrainConfig(batch=4, attack_steps=3, seed=1)
    built = train_mini.TrainingGraph(spec, config)
    batch_norms = [name for name in built.variables if name.endswith("/mean/EMA")]
    with built.graph.as_default():
        updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    assert len(updates) == 2 * len(batch_norms) > 0
    assert not [op.name for op in updates if "attack" in op.name]
    images, labels = minidata.TrainStream(seed=0).batch(4)
    with tf.Session(graph=built.graph) as session:
        session.run(built.initializer)
        before = session.run(built.variables)
        adversarial = session.run(built.adversarial, {built.images: images, built.labels: labels})
        after = session.run(built.variables)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    clean = images.astype(np.float32).transpose(0, 3, 1, 2) * np.float32(IMAGE_SCALE) - 1
    epsilon = np.float32(16 * IMAGE_SCALE)
    assert (adversarial >= np.maximum(clean - epsilon, -1) - 1e-6).all()
    assert (adversarial <= np.minimum(clean + epsilon, 1) + 1e-6).all()
    assert np.abs(adversarial - clean).max() > 0.5 * epsilon          # it did move


# --- end to end --------------------------------------------------------------------------------------

def wilson_percent(count, n):
    interval = binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [100 * interval.low, 100 * interval.high]


@pytest.mark.slow
def test_short_run_writes_a_strict_checkpoint_and_a_complete_model_card(train_mini, tmp_path):
    status = train_mini.main(["--model", "ResNet", "--steps", "2", "--batch", "4", "--seed", "3",
                              "--out", str(tmp_path), "--eval-limit", "10", "--eval-attacks", "1,2",
                              "--eval-batch", "10"])
    assert status == 0
    spec = zoo.get_model("ResNet", zoo="mini")
    checkpoint, card_path = tmp_path / "ResNet.npz", tmp_path / "ResNet.json"
    card = json.loads(card_path.read_text())

    # Model variables only, with exactly the inference graph's names (no optimizer state).
    with np.load(checkpoint) as npz:
        keys = set(npz.files)
    assert keys == {name for name, _ in model_variables(spec)}
    assert any(key.endswith("/mean/EMA:0") for key in keys) and any(key.endswith("/variance/EMA:0") for key in keys)
    classifier = Classifier(spec, checkpoint)                      # strict: raises on anything missing
    try:
        images, labels = minidata.load_split("test")
        predictions = classifier.predict_logits(images[:10], batch_size=10).argmax(axis=1)
    finally:
        classifier.close()

    assert card["zoo"] == "mini" and card["model"] == "ResNet" and card["seed"] == 3
    assert card["architecture"]["description"] == spec.description
    assert card["architecture"]["blocks_per_group"] == list(spec.arch.blocks_per_group)
    assert card["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    training = card["training"]
    for key, value in dict(steps=2, batch=4, seed=3, weight_decay=1e-4, label_smoothing=0.1, momentum=0.9,
                           attack_epsilon=16.0, attack_steps=3, attack_step_size=32.0 / 3,
                           prob_start_from_clean=0.2, attack_targeted=True).items():
        assert training[key] == value, key
    for key in ("base_learning_rate", "peak_learning_rate", "warmup_fraction", "schedule", "minutes"):
        assert key in training
    assert card["run"]["steps"] == 2 and card["run"]["stopped_by"] == "steps"
    assert card["run"]["residual_bn_gamma_init"] == [0.0]       # branches start as the identity (blocks.py)
    assert set(card["source"]) >= {"commit", "uncommitted_changes"}
    assert card["run"]["wall_time_seconds"] > 0
    for package in ("python", "tensorflow", "tensorpack", "numpy", "opencv", "scikit-image"):
        assert card["versions"][package]

    evaluation = card["evaluation"]
    assert evaluation["n"] == 10 and evaluation["epsilon"] == 16.0
    results = evaluation["results"]
    assert set(results) == {"clean", "pgd1", "pgd2"}
    clean = results["clean"]["top1_accuracy"]
    assert clean["count"] == int((predictions == labels[:10]).sum())     # the card's number, reproduced
    assert clean["percent"] == pytest.approx(10.0 * clean["count"])
    np.testing.assert_allclose(clean["interval95_percent"], wilson_percent(clean["count"], 10), rtol=1e-9)
    for key, iterations, alpha in (("pgd1", 1, 16.0), ("pgd2", 2, 8.0)):
        record = results[key]
        assert record["iterations"] == iterations and record["step_size"] == alpha
        for rate in (record["top1_accuracy"], record["attack_success"]):
            assert 0 <= rate["count"] <= 10 and rate["n"] == 10
            np.testing.assert_allclose(rate["interval95_percent"], wilson_percent(rate["count"], 10), rtol=1e-9)
        assert record["top1_accuracy"]["count"] + record["top1_error"]["count"] == 10

    # --evaluate-only re-measures the same checkpoint on more images; the training record stays.
    assert train_mini.main(["--model", "ResNet", "--out", str(tmp_path), "--evaluate-only", "--eval-limit", "20",
                            "--eval-attacks", "2", "--eval-batch", "10"]) == 0
    again = json.loads(card_path.read_text())
    assert {k: v for k, v in again.items() if k != "evaluation"} == {k: v for k, v in card.items() if k != "evaluation"}
    assert again["evaluation"]["n"] == 20 and set(again["evaluation"]["results"]) == {"clean", "pgd2"}
    assert again["evaluation"]["re_evaluated"]["replaces_evaluation_on_n"] == 10
    assert again["evaluation"]["results"]["pgd2"]["step_size"] == 8.0
    assert again["evaluation"]["results"]["pgd2"]["top1_accuracy"]["n"] == 20
    first_ten = again["evaluation"]["results"]["clean"]["top1_accuracy"]["count"]
    assert first_ten >= clean["count"]                      # the first 10 images are among the 20
    (tmp_path / "ResNet.npz").write_bytes(b"not this checkpoint")
    assert cli.run_main(train_mini.main, ["--model", "ResNet", "--out", str(tmp_path), "--evaluate-only"]) == 1


# --- the committed miniature zoo -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.model_names("mini"))
def test_committed_checkpoint_reproduces_its_model_cards_clean_accuracy(name):
    spec = zoo.get_model(name, zoo="mini")
    checkpoint = MINI_ZOO / spec.checkpoint
    card_path = MINI_ZOO / (pathlib.Path(spec.checkpoint).stem + ".json")
    if not checkpoint.is_file() or not card_path.is_file():
        pytest.skip("{} has no committed checkpoint and card in mini_zoo/".format(name))
    card = json.loads(card_path.read_text())
    assert card["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    evaluation = card["evaluation"]
    images, labels = minidata.load_split("test")
    images, labels = images[:evaluation["n"]], labels[:evaluation["n"]]
    # Restored strictly (repro.engines.tensorflow.session.restore with the spec); the clean forward pass is the
    # Classifier's ops and session options.
    evaluator = RobustnessEvaluator(spec, checkpoint)
    try:
        result = evaluator.evaluate(images, labels, iterations=0, batch=evaluation["batch"])
    finally:
        evaluator.close()
    assert result["correct"] == evaluation["results"]["clean"]["top1_accuracy"]["count"]
    assert 60.0 <= evaluation["results"]["clean"]["top1_accuracy"]["percent"] <= 95.0
