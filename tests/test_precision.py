"""The TensorFlow engine's reduced-precision attack (`repro.engines.tensorflow.attack_in_graph`): bfloat16 runs
on the CPU and stays close to the float32 attack, only the attack changes, no variable is added, the choice is
recorded; float16 builds, but is refused before any work on a machine without a GPU."""
import json

import numpy as np
import pytest

from repro import cli, engines, evaluate, minidata, zoo
from repro.data import to_model_space
from repro.engines.tensorflow.tfcompat import tf
from repro.protocol import StudyConfig, perturbation_draws, random_targets

MINI = ("ResNet", "ResNetDenoise", "ResNeXtDenoiseAll")
EPSILON_MODEL = 16 * 2.0 / 255
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
FP16_REFUSAL = "--precision fp16 needs a GPU (TensorFlow has no float16 convolution on CPU); use bf16 or float32"


def mini(name):
    spec = zoo.get_model(name, "mini")
    return spec, cli.checkpoint_path(spec)


def attack_inputs(count=10):
    """The first ``count`` test patches (one per class), PGD starts x + ε·U(-1, 1) and random targets."""
    images, labels = minidata.load_split("test", count // 10)
    clean = to_model_space(images)
    draws = perturbation_draws(0, range(count), clean.shape[1:], num_classes=10)
    return images, labels, clean, clean + draws["start"] * np.float32(EPSILON_MODEL), \
        random_targets(labels, draws["target_offset"], 10)


def attack_op_dtypes(study):
    """The dtypes of the convolutions inside the attack's loop."""
    return {op.get_attr("T") for op in study.graph.get_operations()
            if op.name.startswith("attack/") and op.type == "Conv2D"}


def variable_names(study):
    with study.graph.as_default():
        return [(v.name, v.dtype.base_dtype, tuple(v.shape.as_list())) for v in tf.global_variables()]


@pytest.mark.parametrize("name", MINI)
def test_bf16_attack_runs_on_cpu_near_float32_and_changes_nothing_else(name):
    """One study batch (2 PGD steps) of 10 patches in float32 and in bfloat16.

    The bfloat16 attack's first step moves 95.5% (ResNet), 97.5% (ResNetDenoise) and 97.1% (ResNeXtDenoiseAll)
    of the pixels the same way as float32's on the first 100 test patches (95–98% on these 10); the bound
    0.9 leaves a margin of 5 points. Everything computed outside the attack (clean and random predictions,
    the random perturbation's metrics) is the float32 run's, bit for bit."""
    spec, checkpoint = mini(name)
    images, labels, clean, start, targets = attack_inputs()
    config = StudyConfig(attack_iterations=2, metrics=("mse", "cosine"))
    results, one_step, graphs = {}, {}, {}
    for precision in ("float32", "bf16"):
        study = engines.study("tensorflow", spec, checkpoint, config, precision)
        try:
            results[precision] = study.run_batch(images, labels, list(range(len(images))))
            one_step[precision] = np.sign(study.attack_steps(clean, start, targets, 1)[0] - start)
            graphs[precision] = attack_op_dtypes(study), variable_names(study)
        finally:
            study.close()

    assert graphs["float32"][0] == {tf.float32} and graphs["bf16"][0] == {tf.bfloat16}
    # the same variables, all float32: the strict restore saw exactly the checkpoint's in both graphs
    assert graphs["bf16"][1] == graphs["float32"][1]
    assert {dtype for _, dtype, _ in graphs["bf16"][1]} == {tf.float32}

    agreement = (one_step["bf16"] == one_step["float32"]).mean()
    assert 0.9 <= agreement < 1.0, agreement

    adversarial = results["bf16"].adversarial
    assert np.isfinite(adversarial).all()
    assert np.abs(adversarial - clean).max() <= EPSILON_MODEL + 1e-6
    assert adversarial.min() >= -1.0 and adversarial.max() <= 1.0
    assert not np.array_equal(adversarial, results["float32"].adversarial)

    for perturbation in ("clean", "random"):
        np.testing.assert_array_equal(results["bf16"].predictions[perturbation],
                                      results["float32"].predictions[perturbation])
    random_keys = [key for key in results["float32"].values if key[0] == "random"]
    assert random_keys
    for key in random_keys:
        np.testing.assert_array_equal(results["bf16"].values[key], results["float32"].values[key])


def test_a_positive_loss_scale_leaves_the_attack_as_it_is():
    """A power-of-two scale is exact in float32, so the scaled attack must be the unscaled one bit for bit."""
    from tensorpack.tfutils.tower import TowerContext

    from repro import checkpoints
    from repro.engines.tensorflow import attacks
    from repro.engines.tensorflow import session as tf_session
    from repro.engines.tensorflow.models import model_function
    spec, checkpoint = mini("ResNet")
    _, _, clean, start, targets = attack_inputs()
    graph = tf.Graph()
    with graph.as_default(), TowerContext("", is_training=False):
        model = model_function(spec)
        image = tf.constant(clean)
        runs = [attacks.pgd_targeted(model, image, tf.constant(start), tf.constant(targets), 16.0, 1.0, 3,
                                     loss_scale=scale)[0] for scale in (None, engines.FP16_LOSS_SCALE)]
        with tf.Session() as session:
            tf_session.restore(session, checkpoints.read_checkpoint(checkpoint), spec)
            unscaled, scaled = session.run(runs)
    np.testing.assert_array_equal(unscaled, scaled)
    assert not np.array_equal(unscaled, np.clip(start, clean - EPSILON_MODEL, clean + EPSILON_MODEL))


def test_fp16_attack_graph_is_float16_with_a_scaled_loss_on_the_same_variables():
    """Built (not run: the CPU has no float16 NCHW convolution) for both graphs that attack."""
    from repro.engines.tensorflow.attack_graph import AttackGraph
    from repro.engines.tensorflow.study_graph import StudyGraph
    spec, checkpoint = mini("ResNeXtDenoiseAll")
    reference = StudyGraph(spec, checkpoint, StudyConfig(attack_iterations=1, metrics=("mse",)))
    study = StudyGraph(spec, checkpoint, StudyConfig(attack_iterations=1, metrics=("mse",)), precision="fp16")
    attack = AttackGraph(spec, checkpoint, precision="fp16")
    try:
        for graph in (study, attack):
            assert attack_op_dtypes(graph) == {tf.float16}
            scalings = [op for op in graph.graph.get_operations() if op.name.startswith("attack/")
                        and "/gradients/" not in op.name and op.type == "Mul" and any(
                            i.op.type == "Const" and i.op.get_attr("value").float_val == [engines.FP16_LOSS_SCALE]
                            for i in op.inputs)]
            assert len(scalings) == 1                   # the loss, once
        assert variable_names(study) == variable_names(reference)
    finally:
        for graph in (reference, study, attack):
            graph.close()


@pytest.mark.skipif(not HAS_GPU, reason="float16 convolutions need a GPU")
@pytest.mark.parametrize("name", MINI)
def test_fp16_attack_on_a_gpu_is_finite_and_near_float32(name):
    spec, checkpoint = mini(name)
    _, _, clean, start, targets = attack_inputs()
    moved = {}
    for precision in ("float32", "fp16"):
        study = engines.study("tensorflow", spec, checkpoint, StudyConfig(attack_iterations=1), precision)
        try:
            adversarial, finite = study.attack_steps(clean, start, targets, 1)
        finally:
            study.close()
        assert finite and np.isfinite(adversarial).all()
        moved[precision] = np.sign(adversarial - start)
    assert (moved["fp16"] == moved["float32"]).mean() >= 0.9


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: float16 is allowed")
def test_fp16_is_refused_without_a_gpu_in_one_line_before_any_work(tmp_path, capsys):
    with pytest.raises(engines.PrecisionUnavailable) as refused:
        engines.check_precision("tensorflow", "fp16")
    assert str(refused.value) == FP16_REFUSAL
    spec, checkpoint = mini("ResNet")
    with pytest.raises(engines.PrecisionUnavailable, match="needs a GPU"):
        engines.study("tensorflow", spec, checkpoint, StudyConfig(attack_iterations=1), "fp16")
    with pytest.raises(engines.PrecisionUnavailable, match="needs a GPU"):
        engines.attack_model("tensorflow", spec, checkpoint, "fp16")

    out = tmp_path / "out"
    status = cli.run_main(evaluate.main, ["--zoo", "mini", "--model", "ResNet", "--images", "2", "--attack-iter", "1",
                                          "--precision", "fp16", "--out", str(out)])
    assert status == 2
    assert capsys.readouterr().err == "error: {}\n".format(FP16_REFUSAL)
    assert not out.exists()


def test_a_ray_cluster_elsewhere_decides_for_itself_whether_it_can_run_fp16(tmp_path, monkeypatch):
    """With --ray ADDRESS the workers are other machines (with GPUs, typically), so this machine's lack of a GPU
    must not refuse fp16: the run goes on to the cluster, whose workers check when they build their graphs
    (`engines.study`, refused above). A precision the engine lacks is still refused here."""
    from repro import scheduler

    class ReachedTheCluster(Exception):
        pass

    def connect_ray(address=None, workers=None):
        raise ReachedTheCluster(address)

    monkeypatch.setattr(scheduler, "connect_ray", connect_ray)
    argv = ["--zoo", "mini", "--model", "ResNet", "--images", "2", "--attack-iter", "1", "--precision", "fp16",
            "--ray", "ray://head.example:10001", "--out", str(tmp_path / "out")]
    with pytest.raises(ReachedTheCluster, match="ray://head.example:10001"):
        evaluate.main(argv)
    engines.check_precision("tensorflow", "fp16", this_machine=False)
    with pytest.raises(engines.PrecisionUnavailable, match="unknown precision 'fp8'"):
        engines.check_precision("tensorflow", "fp8", this_machine=False)


def test_the_manifest_records_the_attack_precision(tmp_path):
    out = tmp_path / "out"
    assert cli.run_main(evaluate.main, ["--zoo", "mini", "--model", "ResNet", "--images", "2", "--batch", "2",
                                        "--attack-iter", "1", "--metrics", "mse", "--precision", "bf16",
                                        "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == engines.describe("tensorflow", "bf16")
    assert manifest["engine"]["precision"] == "bf16" and manifest["engine"]["engine"] == "tensorflow"
    assert manifest["config"]["precision"] == "bf16"
