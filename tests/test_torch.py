"""The PyTorch engine held to the TensorFlow reference: the same variables as the released checkpoints, the
same strict-loading errors, the same taps, logits and maps within 1e-4 relative, the same PGD step, the
same metrics, and the same study on the miniature zoo."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from repro import checkpoints, cli, engines, evaluate, minidata, protocol, zoo
from repro.checkpoints import CheckpointError
from repro.data import to_model_space
from repro.engines.tensorflow.synthetic import synthetic_checkpoint
from repro.protocol import StudyConfig
from tests.conftest import tiny_spec

if os.environ.get("REPRO_REQUIRE_TORCH"):
    import torch                                        # CI: a missing PyTorch fails the parity tests
else:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -r requirements-torch.txt)")

from repro.engines.torch import models as torch_models  # noqa: E402
from repro.engines.torch import metrics as torch_metrics  # noqa: E402

FAMILIES = [("resnet", (1, 2, 1, 1)), ("resnet_denoise", (1, 1, 1, 1)), ("resnext_denoise_all", (1, 1, 1, 1))]
MINI = [name for name, spec in zoo.MINI.items() if cli.checkpoint_path(spec).is_file()]
RTOL, ATOL = 1e-4, 1e-5                                 # the parity target for logits and taps


def tiny(family, blocks):
    spec = tiny_spec(family, blocks=blocks, name="Tiny" + family)
    return spec, checkpoints.Checkpoint(None, "synthetic", synthetic_checkpoint(spec, seed=1))


def images_for(spec, count=3, seed=0):
    size = spec.arch.input_size
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.uint8)


def assert_forward_parity(spec, checkpoint, images, rtol=RTOL, atol=ATOL, against_float64=False):
    """Logits and every tap (block outputs and denoised outputs) of both engines on the same images.

    Element by element within rtol/atol; with ``against_float64`` (the full-size networks, whose 50–100
    float32 layers put round-off of 1e-5 of a map's scale on elements near zero) within rtol of the map's
    largest magnitude instead, and each engine no farther than the other (×1.5) from the same network
    evaluated in float64: the two differ by round-off, not by a formula."""
    from repro.engines.tensorflow.study_graph import StudyGraph
    from repro.taps import taps_for
    names = sorted({t.name for kind in protocol.TAPS for t in taps_for(spec, kind)})
    graph = StudyGraph(spec, checkpoint, StudyConfig(attack_iterations=0, metrics=("mse",)))
    try:
        clean = to_model_space(images)
        reference_logits = graph.clean_logits(clean)
        # the tapped tensors of the [clean; random; adversarial] forward pass, fed the clean images three times
        fetches = {name: graph.graph.get_tensor_by_name(name + ":0") for name in names}
        tapped = graph.session.run(fetches, {graph.clean: clean, graph.random_noise: np.zeros_like(clean),
                                             graph.adversarial: clean})
    finally:
        graph.close()
    model = torch_models.build(spec)
    torch_models.restore(model, checkpoint, spec)
    with torch.no_grad():
        logits, maps = model(torch.from_numpy(clean), taps=set(names))
    pairs = [("logits", logits.numpy(), reference_logits)] + [
        (name, maps[name].numpy(), tapped[name][:len(clean)]) for name in names]
    if not against_float64:
        for name, ours, reference in pairs:
            np.testing.assert_allclose(ours, reference, rtol=rtol, atol=atol, err_msg=name)
        return len(names)
    with torch.no_grad():
        exact_logits, exact_maps = model.double()(torch.from_numpy(clean).double(), taps=set(names))
    exact = dict(exact_maps, logits=exact_logits)
    for name, ours, reference in pairs:
        scale = np.abs(reference).max()
        assert np.abs(ours - reference).max() <= rtol * scale + atol, name
        truth = exact[name].numpy()
        assert np.abs(ours - truth).max() <= 1.5 * np.abs(reference - truth).max() + 1e-7 * scale, name
    return len(names)


# --- the model and its loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
def test_variables_equal_the_released_checkpoints(name, manifest):
    expected = [[checkpoints.variable_key(n), list(s)] for n, s in manifest[name]["variables"]]
    assert [[n, list(s)] for n, s in torch_models.build(zoo.get_model(name)).variables()] == expected


@pytest.mark.parametrize("spec", [spec for spec in zoo.all_models() if spec.zoo == "mini"] + [
    tiny_spec(family, blocks=(1, 2, 1, 1)) for family in ("resnet", "resnet_denoise", "resnext_denoise_all")],
    ids=lambda spec: spec.name if spec.zoo != "test" else spec.arch.family)
def test_variables_equal_the_neutral_variable_list(spec):
    """`repro.checkpoints.model_variables` (what checkpoints are checked against before they are read)."""
    assert sorted(torch_models.build(spec).variables()) == sorted(checkpoints.model_variables(spec))


def test_same_padding_is_tensorflows_asymmetric_rule():
    assert torch_models.same_padding(224, 7, 2) == (2, 3)          # stem convolution
    assert torch_models.same_padding(112, 3, 2) == (0, 1)          # stem max-pool, strided 3×3
    assert torch_models.same_padding(56, 1, 2) == (0, 0)           # strided 1×1 shortcut
    assert torch_models.same_padding(15, 3, 2) == (1, 1) and torch_models.same_padding(7, 3, 1) == (1, 1)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # SAME pads 0 before and 1 after: windows start at rows/columns 0 and 2 (symmetric padding would start
    # them at −1 and 1 and give 5, 7, 13, 15)
    assert torch_models.max_pool_same(x).flatten().tolist() == [10.0, 11.0, 14.0, 15.0]


def test_strict_loading_errors_are_the_tensorflow_engines(tmp_path):
    spec, checkpoint = tiny("resnet_denoise", (1, 1, 1, 1))
    arrays = checkpoint.arrays

    def load(changed):
        torch_models.restore(torch_models.build(spec), checkpoints.Checkpoint(tmp_path / "c.npz", "", changed), spec)
    missing = dict(arrays)
    del missing["group1/block0/conv2/bn/variance/EMA"]
    with pytest.raises(CheckpointError, match=r"lacks 1 model variable\(s\): group1/block0/conv2/bn/variance/EMA"):
        load(missing)
    with pytest.raises(CheckpointError, match=r"group0_denoise/conv/W has shape \[1, 1, 16, 8\] in the checkpoint, "
                                              r"the model needs \[1, 1, 16, 16\]"):
        load(dict(arrays, **{"group0_denoise/conv/W": np.zeros((1, 1, 16, 8), np.float32)}))
    with pytest.raises(CheckpointError, match="holds 1 non-finite value"):
        load(dict(arrays, **{"linear/b": np.where(np.arange(10) == 3, np.nan, 0).astype(np.float32)}))
    other = tiny_spec("resnet", name="Other")
    zoo.ZOOS["test"] = {"Tinyresnet_denoise": spec, "Other": other}
    try:
        with pytest.raises(CheckpointError, match=r"is a Tinyresnet_denoise \(test zoo\) checkpoint, you asked for "
                                                  r"Other \(test zoo\)"):
            torch_models.restore(torch_models.build(other), checkpoints.Checkpoint(tmp_path / "c.npz", "", arrays), other)
    finally:
        zoo.ZOOS.pop("test", None)
    model = torch_models.build(spec)
    torch_models.restore(model, checkpoint, spec)
    state = model.state_dict()
    np.testing.assert_array_equal(state["group0_denoise.conv.W"].numpy(),
                                  arrays["group0_denoise/conv/W"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(state["group0.block0.conv1.bn.mean_EMA"].numpy(),
                                  arrays["group0/block0/conv1/bn/mean/EMA"])


def test_the_taps_read_off_the_zoo_equal_the_tensorflow_graphs():
    from repro.engines.tensorflow.study_graph import StudyGraph
    from repro.taps import taps_for
    for family, blocks in FAMILIES:
        spec, checkpoint = tiny(family, blocks)
        for tap in protocol.TAPS:
            graph = StudyGraph(spec, checkpoint, StudyConfig(attack_iterations=0, metrics=("mse",), tap=tap))
            assert taps_for(spec, tap) == graph.taps, (family, tap)
            graph.close()


@pytest.mark.parametrize("family,blocks", FAMILIES)
def test_logits_and_every_tap_equal_tensorflows_on_tiny_networks(family, blocks):
    spec, checkpoint = tiny(family, blocks)
    assert assert_forward_parity(spec, checkpoint, images_for(spec)) >= 5


@pytest.mark.skipif(not MINI, reason="no miniature checkpoint in mini_zoo/")
@pytest.mark.parametrize("name", MINI)
def test_logits_and_every_tap_equal_tensorflows_on_the_miniature_zoo(name):
    spec = zoo.get_model(name, "mini")
    images, _ = minidata.load_split("test")
    assert_forward_parity(spec, checkpoints.read_checkpoint(cli.checkpoint_path(spec)), images[:8])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
def test_logits_and_every_tap_equal_tensorflows_on_full_size_synthetic_checkpoints(name, synthetic_imagenet_checkpoint):
    spec = zoo.get_model(name)
    checkpoint = checkpoints.read_checkpoint(synthetic_imagenet_checkpoint(name))
    taps = assert_forward_parity(spec, checkpoint, images_for(spec, 2), against_float64=True)
    assert taps == {"ResNet": 50, "ResNetDenoise": 54, "ResNeXtDenoiseAll": 66}[name]


def test_each_attacks_loss_is_its_formula_in_both_engines():
    """Per image, by hand: −log softmax(z)_t (targeted), log softmax(z)_y (untargeted), max(max_{j≠t} z_j − z_t, −κ)
    (cw, κ = 0: zero once the target leads); the torch engine's summed loss is the sum of TensorFlow's."""
    from repro.engines.tensorflow.attacks import attack_loss as tf_loss
    from repro.engines.tensorflow.tfcompat import tf
    from repro.engines.torch.engine import attack_loss as torch_loss
    logits = np.random.default_rng(5).normal(0, 3, (6, 10)).astype(np.float32)
    classes = np.array([0, 3, 9, 2, 2, 7])
    logits[4, 2] = 20.0                                   # the target already leads: the margin is 0
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = log_softmax[np.arange(6), classes]
    others = np.where(np.eye(10, dtype=bool)[classes], -np.inf, logits).max(axis=1)
    margin = np.maximum(others - logits[np.arange(6), classes], -protocol.CW_KAPPA)
    assert margin[4] == 0 and (margin[[0, 1, 2, 3, 5]] > 0).any()
    expected = {"targeted": -picked, "untargeted": picked, "cw": margin}
    for attack, by_hand in expected.items():
        graph = tf.Graph()
        with graph.as_default(), tf.Session(graph=graph) as session:
            in_graph = session.run(tf_loss(tf.constant(logits), tf.constant(classes), attack))
        np.testing.assert_allclose(in_graph, by_hand, rtol=1e-5, atol=1e-5, err_msg=attack)
        summed = torch_loss(torch.from_numpy(logits), torch.from_numpy(classes), attack).item()
        assert summed == pytest.approx(by_hand.sum(), rel=1e-5, abs=1e-5), attack
    with pytest.raises(ValueError, match="unknown attack 'fgsm'"):
        torch_loss(torch.from_numpy(logits), torch.from_numpy(classes), "fgsm")


@pytest.mark.parametrize("attack", ["targeted", "untargeted", "cw"])
def test_one_pgd_step_takes_the_same_signs(attack):
    """The input gradient of one PGD step has the same sign in ≥ 99.9% of the pixels, for every attack's loss."""
    for family, blocks in FAMILIES:
        spec, checkpoint = tiny(family, blocks)
        config = StudyConfig(attack_iterations=1, epsilon=16.0, metrics=("mse",), attack=attack)
        clean = to_model_space(images_for(spec, 4, seed=3))
        draws = protocol.perturbation_draws(0, range(4), clean.shape[1:], spec.arch.num_classes)
        start = clean + draws["start"] * np.float32(16 * 2 / 255)
        targets = protocol.random_targets([0, 1, 2, 3], draws["target_offset"], spec.arch.num_classes)
        stepped = {}
        for engine in engines.ENGINES:
            study = engines.study(engine, spec, checkpoint, config)
            stepped[engine], _ = study.attack_steps(clean, start, targets, 1)
            study.close()
        moved_the_same_way = np.isclose(stepped["tensorflow"], stepped["torch"], rtol=0, atol=1e-6).mean()
        assert moved_the_same_way >= 0.999, (family, moved_the_same_way)


@pytest.mark.parametrize("name", MINI)
def test_a_multi_step_pgd_trajectory_is_the_same_in_both_engines(name):
    """Four steps of the study's attack, one call each: after every call both engines hold the same adversarial
    images (to float round-off, on ≥ 99% of the pixels; the paths part only where a gradient sign is a near tie).
    An engine taking a step more or less per call, or none, moves every pixel by α and fails at once."""
    spec = zoo.get_model(name, "mini")
    checkpoint = checkpoints.read_checkpoint(cli.checkpoint_path(spec))
    images, _ = minidata.load_split("test")
    clean = to_model_space(images[:4])
    config = StudyConfig(attack_iterations=4, epsilon=16.0, metrics=("mse",))
    draws = protocol.perturbation_draws(0, range(4), clean.shape[1:], spec.arch.num_classes)
    start = clean + draws["start"] * np.float32(16 * 2 / 255)
    targets = protocol.random_targets([0, 1, 2, 3], draws["target_offset"], spec.arch.num_classes)
    paths = {}
    for engine in engines.ENGINES:
        study = engines.study(engine, spec, checkpoint, config)
        adversarial, path = start, []
        for _ in range(4):
            adversarial, finite = study.attack_steps(clean, adversarial, targets, 1)
            assert finite
            path.append(adversarial)
        study.close()
        paths[engine] = path
    step = 4 * 2 / 255                                          # α = max(1, ε / 4) = 4 pixels
    for index, (ours, reference) in enumerate(zip(paths["torch"], paths["tensorflow"])):
        assert np.isclose(ours, reference, rtol=0, atol=1e-6).mean() >= 0.99, (name, index)
        moved = np.abs(reference - (start if index == 0 else paths["tensorflow"][index - 1]))
        assert np.median(moved[moved > 0]) == pytest.approx(step, rel=1e-5) and (moved > 0).mean() > 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_reduced_precision_attack_moves_the_pixels_the_way_float32_does(precision):
    """On ≥ 90% of the pixels the first bf16/fp16 step moves the same way as float32's (as the TensorFlow engine's
    bf16 test asks); an attack going uphill, or not at all, in reduced precision fails."""
    spec = zoo.get_model("ResNetDenoise", "mini")
    checkpoint = checkpoints.read_checkpoint(cli.checkpoint_path(spec))
    images, _ = minidata.load_split("test")
    clean = to_model_space(images[:8])
    draws = protocol.perturbation_draws(0, range(8), clean.shape[1:], spec.arch.num_classes)
    start = clean + draws["start"] * np.float32(16 * 2 / 255)
    targets = protocol.random_targets(np.arange(8) % 10, draws["target_offset"], spec.arch.num_classes)
    moved = {}
    for arithmetic in ("float32", precision):
        study = engines.study("torch", spec, checkpoint, StudyConfig(attack_iterations=1), arithmetic)
        adversarial, finite = study.attack_steps(clean, start, targets, 1)
        study.close()
        assert finite
        moved[arithmetic] = np.sign(adversarial - start)
    assert (moved[precision] != 0).mean() > 0.5
    assert (moved[precision] == moved["float32"]).mean() >= 0.9


def test_a_non_finite_attack_stops_the_run_in_one_line_keeping_the_committed_batches(tmp_path, capsys):
    """float16 logits overflow (a classifier scaled up: logits of ~1e5, finite in float32) turn the loss and the
    gradient into NaN; the run used to exclude such images with a warning and exit 0 (and on GPUs clipping turns
    NaN into the ε-ball's bound, so it may not even be seen). Now it stops naming model, batch and precision."""
    spec = zoo.get_model("ResNet", "mini")
    arrays = checkpoints.read_checkpoint(cli.checkpoint_path(spec)).arrays
    loud = checkpoints.save_checkpoint(dict(arrays, **{"linear/W": arrays["linear/W"] * np.float32(3e4)}),
                                       tmp_path / "loud.npz")
    argv = ["--zoo", "mini", "--model", "ResNet", "--load", str(loud), "--images", "4", "--batch", "2",
            "--attack-iter", "2", "--metrics", "mse", "--engine", "torch", "--no-check", "--out", str(tmp_path / "o")]
    assert cli.run_main(evaluate.main, argv + ["--precision", "float32"]) == 0
    capsys.readouterr()
    out = tmp_path / "o16"
    assert cli.run_main(evaluate.main, [a if a != str(tmp_path / "o") else str(out) for a in argv] +
                        ["--precision", "fp16"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == (
        "error: ResNet: the attack's loss or gradient became non-finite (NaN or inf) in fp16 arithmetic for the batch "
        "of images 0–1: nothing was committed for it; use --precision bf16 (float32's range) or float32"), errors
    assert not list((out / "work" / "ResNet").glob("batch-*.json"))


# --- metrics ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [3, 5, 8, 9])
@pytest.mark.parametrize("data_range", [2.0, "reference"])
def test_metrics_equal_repro_metrics_per_channel(size, data_range):
    """Every metric on random maps with degenerate channels (zero, constant, identical, negative mean), the
    per-channel ones computed in chunks of two channels, the whole-map ones (amplification, CKA) on all."""
    from repro.engines.tensorflow import metrics
    rng = np.random.default_rng(size)
    reference = np.maximum(rng.normal(0.3, 1.0, (3, 6, size, size)), 0)
    perturbed = reference + rng.normal(0, 0.2, reference.shape)
    reference[0, 0] = 0.0                                 # silent channel: SRE −inf, cosine 0/0
    reference[0, 1] = 0.7                                 # constant channel: no range
    perturbed[1, 2] = reference[1, 2]                     # unperturbed channel: SRE +inf
    reference[2, 3] -= 2.0
    computed = torch_metrics.metric_values(torch.from_numpy(reference), torch.from_numpy(perturbed),
                                           protocol.EXTENDED_METRICS, data_range=data_range, chunk=2)
    for name in protocol.EXTENDED_METRICS:
        expected = metrics.per_channel(name, reference, perturbed, data_range=data_range)
        np.testing.assert_allclose(computed[name].numpy(), expected, rtol=1e-12, atol=1e-12, equal_nan=True,
                                   err_msg=name)


# --- the study --------------------------------------------------------------------------------------------------

WELL_CONDITIONED = ("frobenius", "mse", "rmse", "sre", "sre_eq", "psnr", "ssim", "cosine")


@pytest.mark.skipif(len(MINI) < 3, reason="the miniature zoo's three checkpoints are not in mini_zoo/")
def test_the_miniature_study_gives_the_same_tables_with_either_engine(tmp_path):
    """20 images, PGD-10, all three miniature models, through the command line. Clean and random block means
    agree within 1e-5 relative for the well-conditioned metrics. rel_l2 (‖A − B‖/‖A‖) and UIQ are divided by
    near-zero quantities on near-silent channels, where float32 round-off of the two engines' convolutions
    (1e-7) moves single channel values by up to 1e-3: they are held to 1e-2 and 1e-4. Adversarial block means
    lie within each other's 95% intervals; per-image records agree."""
    common = ["--zoo", "mini", "--model", *MINI, "--images", "20", "--batch", "10", "--attack-iter", "10"]
    for engine in engines.ENGINES:
        assert cli.run_main(evaluate.main, common + ["--engine", engine, "--out", str(tmp_path / engine)]) == 0
    reference, torch_ = (pd.read_csv(tmp_path / engine / "blocks.csv") for engine in engines.ENGINES)
    keys = ["model", "perturbation", "metric", "block_index", "tap", "channels", "height", "width", "n_images"]
    pd.testing.assert_frame_equal(reference[keys], torch_[keys])
    relative = (reference["mean"] - torch_["mean"]).abs() / reference["mean"].abs().clip(lower=1e-12)
    random = reference.perturbation == "random"
    assert relative[random & reference.metric.isin(WELL_CONDITIONED)].max() <= 1e-5
    assert relative[random & (reference.metric == "uiq")].max() <= 1e-4
    assert relative[random & (reference.metric == "rel_l2")].max() <= 1e-2
    adversarial = ~random
    assert ((torch_["mean"] >= reference.ci95_low) & (torch_["mean"] <= reference.ci95_high))[adversarial].all()
    assert ((reference["mean"] >= torch_.ci95_low) & (reference["mean"] <= torch_.ci95_high))[adversarial].all()
    images = [pd.read_csv(tmp_path / engine / "images.csv") for engine in engines.ENGINES]
    pd.testing.assert_frame_equal(images[0][["model", "image", "label", "target", "pred_clean", "pred_random"]],
                                  images[1][["model", "image", "label", "target", "pred_clean", "pred_random"]])
    assert (images[0].pred_adversarial == images[1].pred_adversarial).mean() >= 0.95
    manifest = json.loads((tmp_path / "torch" / "manifest.json").read_text())
    assert manifest["engine"]["engine"] == "torch" and manifest["engine"]["precision"] == "float32"
    assert manifest["engine"]["tf32"] is False and manifest["config"]["engine"] == "torch"
    assert sorted(p.name for p in (tmp_path / "torch").iterdir()) == sorted(p.name for p in (tmp_path / "tensorflow").iterdir())
    # one out, two engines: refused, not mixed
    assert cli.run_main(evaluate.main, common + ["--engine", "torch", "--out", str(tmp_path / "tensorflow")]) == 2


def test_reduced_precision_runs_and_is_recorded(tmp_path):
    """bf16 and fp16 (its loss scaled) autocast in the attack loop only (on the CPU here; their speed needs a
    GPU); the tapped pass stays float32, so clean predictions are the float32 ones."""
    spec, checkpoint = tiny("resnet", (1, 2, 1, 1))
    images = images_for(spec, 4, seed=5)
    results = {}
    for precision in ("float32", "bf16", "fp16"):
        study = engines.study("torch", spec, checkpoint, StudyConfig(attack_iterations=2, metrics=("mse",)), precision)
        results[precision] = study.run_batch(images, np.arange(4), list(range(4)))
        study.close()
    for precision in ("bf16", "fp16"):
        np.testing.assert_array_equal(results["float32"].predictions["clean"], results[precision].predictions["clean"])
        for key, value in results["float32"].values.items():
            if key[0] == "random":                      # computed outside the attack: untouched by its precision
                np.testing.assert_array_equal(value, results[precision].values[key])
        assert np.isfinite(results[precision].adversarial).all()
        assert not np.array_equal(results["float32"].adversarial, results[precision].adversarial)
    engines.check_precision("torch", "fp16")          # autocast has float16 on the CPU too
    assert engines.describe("torch", "fp16")["precision"] == "fp16"


def test_readme_example_attacks_a_loaded_model_in_plain_pytorch(tmp_path):
    """The README's example, run as written on a miniature checkpoint."""
    import re
    readme = (zoo.REPO_ROOT / "README.md").read_text()
    example = re.search(r"```python\n(# PyTorch:.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)                  # noqa: S102 (our own README)
    model, images, adversarial, labels = (namespace[k] for k in ("model", "images", "adversarial", "labels"))
    assert isinstance(model, torch.nn.Module) and not model.training
    assert float((adversarial - images).abs().max()) <= 8 / 255 + 1e-6
    assert 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1
    with torch.no_grad():
        clean_correct = (model(images).argmax(1) == labels).float().mean()
        adversarial_correct = (model(adversarial).argmax(1) == labels).float().mean()
    assert adversarial_correct <= clean_correct


def test_torch_engine_runs_where_only_pytorch_is_installed(tmp_path):
    """evaluate, predict and validate with --engine torch, and a synthetic checkpoint, in a process where
    importing tensorflow, tensorpack or image_similarity_measures fails."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('tensorflow', 'tensorpack', 'image_similarity_measures'):\n"
        "    sys.modules[name] = None\n")
    environment = dict(os.environ, PYTHONPATH="{}{}{}".format(blocker, os.pathsep, zoo.REPO_ROOT))
    commands = [
        ["repro/evaluate.py", "--engine", "torch", "--zoo", "mini", "--model", "ResNeXtDenoiseAll", "--images", "2",
         "--batch", "2", "--attack-iter", "1", "--visualize", "1", "--out", str(tmp_path / "study")],
        ["repro/validate.py", "--engine", "torch", "--zoo", "mini", "--model", "ResNet", "--limit", "20",
         "--out", str(tmp_path / "validate")],
        ["repro/predict.py", "--engine", "torch", "--zoo", "mini", "--model", "ResNet", "--input",
         str(zoo.REPO_ROOT / "docs" / "fig5_2_mini.png"), "--output", str(tmp_path / "p.csv")],
        ["scripts/synthetic_checkpoint.py", "--engine", "torch", "--zoo", "mini", "--model", "ResNetDenoise",
         "--out", str(tmp_path / "synthetic.npz")],
    ]
    for command in commands:
        result = subprocess.run([sys.executable, *command], cwd=str(zoo.REPO_ROOT), env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command[0], result.stderr[-3000:])
    assert len(pd.read_csv(tmp_path / "study" / "blocks.csv")) > 0 and len(pd.read_csv(tmp_path / "p.csv")) == 1
    assert (tmp_path / "study" / "feature_maps_ResNeXtDenoiseAll.png").stat().st_size > 0
    assert (tmp_path / "study" / "report.html").stat().st_size > 0          # the report needs no TensorFlow either
    assert checkpoints.read_checkpoint(tmp_path / "synthetic.npz").arrays


def test_synthetic_checkpoints_without_tensorflow_are_calibrated():
    """BatchNorm statistics from a PyTorch pass: on its calibration images every BN output is standardised
    (mean 0, variance 1 before γ, β), as after the TensorFlow engine's training-mode calibration."""
    from repro.engines.torch.synthetic import calibration_images, synthetic_checkpoint as torch_synthetic
    spec = tiny_spec("resnext_denoise_all", name="TinyX")
    arrays = torch_synthetic(spec, seed=4)
    assert {k for k, _ in torch_models.build(spec).variables()} == set(arrays)
    model = torch_models.build(spec)
    torch_models.restore(model, checkpoints.Checkpoint(None, "", arrays), spec)
    normalised = []

    def record(module, inputs, output):
        x = inputs[0]
        normalised.append(((x - module.mean_EMA[None, :, None, None]) /
                           torch.sqrt(module.variance_EMA[None, :, None, None] + 1e-5)))
    for module in model.modules():
        if isinstance(module, torch_models.BatchNorm):
            module.register_forward_hook(record)
    with torch.no_grad():
        model(torch.from_numpy(calibration_images(spec, seed=4)))
    for values in normalised:
        np.testing.assert_allclose(values.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-4)
        np.testing.assert_allclose(values.var(dim=(0, 2, 3), unbiased=False).numpy(), 1, rtol=1e-3)
    logits = model(torch.from_numpy(calibration_images(spec, seed=9)))
    assert torch.isfinite(logits).all()


@pytest.mark.skipif("ResNet" not in MINI, reason="the miniature ResNet checkpoint is not in mini_zoo/")
def test_the_evaluation_attack_gives_the_same_robustness_numbers_with_either_engine():
    """validate's and the model cards' attack (repro.robustness) on 40 test images, PGD-5: the same targets,
    the same clean predictions, and adversarial predictions agreeing on ≥ 95% of the images."""
    from repro.robustness import RobustnessEvaluator
    spec = zoo.get_model("ResNet", "mini")
    images, labels = minidata.load_split("test")
    results = {}
    for engine in engines.ENGINES:
        evaluator = RobustnessEvaluator(spec, cli.checkpoint_path(spec), engine=engine)
        results[engine] = (evaluator.evaluate(images[:40], labels[:40], 0, batch=20),
                           evaluator.evaluate(images[:40], labels[:40], 5, batch=20))
        evaluator.close()
    (clean_tf, attacked_tf), (clean_torch, attacked_torch) = results["tensorflow"], results["torch"]
    np.testing.assert_array_equal(clean_tf["predictions"], clean_torch["predictions"])
    np.testing.assert_array_equal(attacked_tf["targets"], attacked_torch["targets"])
    assert (attacked_tf["predictions"] == attacked_torch["predictions"]).mean() >= 0.95
