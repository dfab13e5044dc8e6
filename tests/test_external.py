"""Library models (`repro.external`, `repro.engines.torch.external`): taps found by ``auto`` are the modules that
torchvision's `create_feature_extractor` (an independent implementation, torch.fx) returns, with equal tensors; the
whole study on a torchvision network with random weights; strict, safe weights loading with one-line errors."""
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repro import cli, evaluate, external
from repro.classes import load_class_index
from tests.conftest import write_images

if os.environ.get("REPRO_REQUIRE_TORCH"):
    import torch                                        # CI: the library models' tests must run
else:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -r requirements-torch.txt)")

from repro.engines.torch import external as torch_external  # noqa: E402

try:
    torchvision = torch_external.import_torchvision()
except torch_external.ExternalModelError as error:
    if os.environ.get("REPRO_REQUIRE_TORCH"):
        raise
    pytest.skip(str(error), allow_module_level=True)

from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402


def stage_names(prefix, depths, inner=""):
    return ["{}{}.{}{}".format(prefix, stage, inner, block) for stage, depth in depths for block in range(depth)]


AUTO = {
    # (source, model): the residual or transformer blocks the architecture's paper gives, by module name
    ("torchvision", "resnet18"): stage_names("layer", [(1, 2), (2, 2), (3, 2), (4, 2)]),
    ("torchvision", "resnet50"): stage_names("layer", [(1, 3), (2, 4), (3, 6), (4, 3)]),
    ("torchvision", "convnext_tiny"): stage_names("features.", [(1, 3), (3, 3), (5, 9), (7, 3)]),
    ("torchvision", "vit_b_16"): ["encoder.layers.encoder_layer_{}".format(i) for i in range(12)],
    ("torchvision", "swin_t"): stage_names("features.", [(1, 2), (3, 2), (5, 6), (7, 2)]),
    ("timm", "convnext_atto"): stage_names("stages.", [(0, 2), (1, 2), (2, 6), (3, 2)], "blocks."),
    ("timm", "vit_tiny_patch16_224"): ["blocks.{}".format(i) for i in range(12)],
    ("timm", "resnet18"): stage_names("layer", [(1, 2), (2, 2), (3, 2), (4, 2)]),
}


@pytest.mark.parametrize("source, model", list(AUTO))
def test_auto_taps_are_the_blocks_and_equal_create_feature_extractor(source, model):
    torch.manual_seed(0)
    network = torch_external.build_network(source, model)
    family, taps = torch_external.find_taps(network, ("auto",), 224)
    assert [tap.name for tap in taps] == AUTO[(source, model)]
    assert family.startswith(source)
    spec = external.ExternalSpec(name=source + ":" + model, source=source, model=model, weights="x", library_version="",
                                 input=external.InputConvention(), taps=tuple(taps), family=family)
    wrapped = torch_external.ExternalNet(network, spec)
    images = torch.rand(2, 3, 224, 224) * 2 - 1                     # the study's input: BGR in [-1, 1]
    with torch.no_grad():
        logits, maps = wrapped(images, taps={tap.name for tap in taps})
        normalised = ((images.flip(1) + 1) / 2 - wrapped.mean) / wrapped.std
        reference = create_feature_extractor(network, return_nodes=[tap.name for tap in taps])(normalised)
        assert torch.equal(logits, network(normalised))
    for tap in taps:
        expected = torch_external.as_map(reference[tap.name], tap.layout, tap.prefix_tokens)
        assert torch.equal(maps[tap.name], expected), tap.name
        assert maps[tap.name].shape[1:] == (tap.channels, tap.height, tap.width)
    if family.endswith(("ViT", "ViT/DeiT")):                       # the class token is left out, the grid is 14×14
        assert taps[0].prefix_tokens == 1 and (taps[0].height, taps[0].width) == (14, 14)
        assert reference[taps[0].name].shape[1] == 1 + 14 * 14


def test_named_taps_and_patterns_and_an_unknown_family():
    network = torch_external.build_network("torchvision", "alexnet")
    with pytest.raises(torch_external.ExternalModelError) as error:
        torch_external.find_taps(network, ("auto",), 224, "torchvision:alexnet")
    message = str(error.value)
    assert "\n" not in message and "--taps auto does not know torchvision:alexnet" in message
    assert "features" in message and "--list-taps" in message
    family, taps = torch_external.find_taps(network, ("features.1", "features.[4]"), 224)
    assert family == "named" and [(t.name, t.channels, t.height) for t in taps] == [("features.1", 64, 55),
                                                                                   ("features.4", 192, 27)]
    resnet = torch_external.build_network("torchvision", "resnet18")
    assert [t.name for t in torch_external.find_taps(resnet, ("layer4.?",), 224)[1]] == ["layer4.0", "layer4.1"]
    with pytest.raises(torch_external.ExternalModelError, match="names no module"):
        torch_external.find_taps(resnet, ("layer9.*",), 224)
    with pytest.raises(torch_external.ExternalModelError, match="is not a feature map"):
        torch_external.find_taps(resnet, ("fc",), 224)
    lines = torch_external.list_taps(resnet)
    assert "layer4.1  BasicBlock  512×7×7" in lines and "fc  Linear  1000" in lines


def test_input_conventions_and_published_top1_come_from_the_libraries_metadata():
    network = torch_external.build_network("timm", "vit_tiny_patch16_224")
    convention = torch_external.input_convention("timm", "vit_tiny_patch16_224", network)
    assert convention == external.InputConvention(224, "RGB", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    convention = torch_external.input_convention("torchvision", "resnet50", None, size=160, mean=(0.5, 0.4, 0.3))
    assert (convention.size, convention.mean, convention.std) == (160, (0.5, 0.4, 0.3), (0.229, 0.224, 0.225))
    published = torch_external.published_numbers("torchvision", "resnet50", pretrained=True)
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    assert published[0].top1_error == pytest.approx(100 - weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])
    assert torch_external.published_numbers("torchvision", "resnet50", pretrained=False) == {}


# --- the study --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study_setup(tmp_path_factory):
    """ImageNet-style folder of 6 classes and a torchvision resnet18 state dict with random weights (seed 0)."""
    base = tmp_path_factory.mktemp("external")
    for index, (wnid, _) in enumerate(load_class_index()[:6]):
        write_images(base / "data" / "val" / wnid, [(80, 90), (70, 64)], seed=index)
    torch.manual_seed(0)
    network = torchvision.models.resnet18()
    torch.save(network.state_dict(), base / "resnet18.pt")
    return base, network


def run(base, out, weights, *extra):
    argv = ["--model", "torchvision:resnet18", "--weights", str(weights), "--data", str(base / "data"),
            "--images", "4", "--batch", "2", "--attack-iter", "2", "--out", str(out), *extra]
    return cli.run_main(evaluate.main, argv)


@pytest.fixture(scope="module")
def first_study(study_setup):
    base, _ = study_setup
    assert run(base, base / "out", base / "resnet18.pt", "--save-adv", str(base / "adv")) == 0
    return base, {name: pd.read_csv(base / "out" / name) for name in ("blocks.csv", "images.csv", "summary.csv")}


def test_a_torchvision_network_runs_the_whole_study(study_setup, first_study):
    base, tables = first_study
    out = base / "out"
    for name in ("blocks.csv", "images.csv", "summary.csv", "contrasts.csv", "fig5_2.png",
                 "fig5_1_torchvision:resnet18.png", "report.html", "manifest.json"):
        assert (out / name).is_file(), name
    blocks = tables["blocks.csv"]
    assert sorted(blocks["tap"].unique()) == AUTO[("torchvision", "resnet18")]
    assert set(blocks["model"]) == {"torchvision:resnet18"} and blocks["n_images"].min() == 4
    first = blocks[blocks["tap"] == "layer1.0"].iloc[0]
    assert (first["channels"], first["height"], first["width"]) == (64, 56, 56)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["models"]["torchvision:resnet18"]
    assert record["sha256"] == torch_external.file_sha256(base / "resnet18.pt")
    assert record["library_model"]["source"] == "torchvision" and record["library_model"]["library_version"] == \
        torchvision.__version__
    assert manifest["engine"]["engine"] == "torch"


def test_the_adversarial_images_are_exactly_epsilon_away_in_pixels_of_the_models_own_input(study_setup, first_study):
    """The attack works in the study's pixels; undone from the model's normalisation, the images it fed the
    network differ from the clean ones by at most ε = 16/255, and reach it."""
    from repro.data import load_imagenet_val_image, to_model_space
    base, _ = first_study
    convention = torch_external.input_convention("torchvision", "resnet18", None)
    mean, std = np.array(convention.mean).reshape(1, 3, 1, 1), np.array(convention.std).reshape(1, 3, 1, 1)
    worst = []
    for record in sorted((base / "adv" / "torchvision:resnet18").glob("*.json")):
        info = json.loads(record.read_text())
        adversarial = np.load(record.with_suffix(".npy"))[None].astype(np.float64)
        clean = to_model_space(load_imagenet_val_image(info["path"])[None]).astype(np.float64)

        def network_input(bgr):                                    # what ExternalNet hands the network
            return (((bgr[:, ::-1] + 1) / 2) - mean) / std
        pixels = lambda normalised: (normalised * std + mean) * 255.0  # noqa: E731  (the normalisation undone)
        difference = np.abs(pixels(network_input(adversarial)) - pixels(network_input(clean)))
        assert difference.max() <= 16 + 1e-3
        worst.append(difference.max())
    assert len(worst) == 4 and min(worst) == pytest.approx(16, abs=1e-3)


def test_the_study_resumes_and_refuses_other_weights_into_the_same_out(study_setup, first_study, tmp_path, capsys,
                                                                       caplog):
    base, reference = first_study
    out = tmp_path / "out"
    assert run(base, out, base / "resnet18.pt") == 0
    receipt = out / "work" / "torchvision:resnet18" / "batch-000002-000003.json"
    receipt.unlink()                                               # as if killed before the second commit
    caplog.set_level(logging.INFO, "repro")
    caplog.clear()
    assert run(base, out, base / "resnet18.pt") == 0
    assert "1 of 2 batches already done, 1 to run" in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(out / "blocks.csv"), reference["blocks.csv"])
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "other.pt")
    capsys.readouterr()
    assert run(base, out, tmp_path / "other.pt") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was computed differently" in err and "checkpoint_sha256" in err
    pd.testing.assert_frame_equal(pd.read_csv(out / "blocks.csv"), reference["blocks.csv"])


class RunsCode:
    """Unpickling this runs ``os.system``: a weights file with code in it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, ("touch {}".format(self.marker),)


def bad_weights(study_setup, tmp_path, kind):
    _, network = study_setup
    state = dict(network.state_dict())
    path = tmp_path / "{}.pt".format(kind)
    if kind == "another_architecture":
        state = torchvision.models.resnet34().state_dict()
    elif kind == "missing":
        del state["layer3.1.bn2.running_var"]
    elif kind == "extra":
        state["layer5.0.conv1.weight"] = torch.zeros(3)
    elif kind == "misshaped":
        state["fc.weight"] = torch.zeros(10, 512)
    elif kind == "code":
        with open(path, "wb") as stream:
            pickle.dump({"fc.weight": RunsCode(tmp_path / "ran")}, stream)
        return path
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)
        return path
    elif kind == "nan":
        state["layer2.0.conv1.weight"] = torch.full_like(state["layer2.0.conv1.weight"], float("nan"))
    torch.save(state, path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("another_architecture", "does not fit torchvision:resnet18: 96 unexpected (e.g. layer1.2.conv1.weight); is it the state dict of another architecture?"),
    ("missing", "1 missing (e.g. layer3.1.bn2.running_var)"),
    ("extra", "1 unexpected (e.g. layer5.0.conv1.weight)"),
    ("misshaped", "1 of another shape (e.g. fc.weight: (10, 512) in the file, (1000, 512) in the model)"),
    ("code", "is not a plain state dict: loading it would run pickled code, which is refused"),
    ("not_a_state_dict", "holds list, not a state dict"),
    ("nan", "layer2.0.conv1.weight holds NaN or infinite values"),
])
def test_weights_that_do_not_fit_are_one_line_and_nothing_is_written(study_setup, tmp_path, capsys, kind, expected):
    base, _ = study_setup
    path = bad_weights(study_setup, tmp_path, kind)
    capsys.readouterr()
    assert run(base, tmp_path / "out", path) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "ran").exists()                     # the pickled code never ran
    assert not (tmp_path / "out").exists()


def test_library_model_options_are_checked_in_one_line(study_setup, tmp_path, capsys):
    base, _ = study_setup
    cases = [
        (["--model", "torchvision:resnet18", "--engine", "tensorflow"], 2, "is a PyTorch model: it runs with --engine torch"),
        (["--model", "torchvision:resnet18"], 2, "needs weights: --weights PATH"),
        (["--model", "torchvision:resnet18", "--weights", str(base / "resnet18.pt"), "--pretrained"], 2,
         "not both"),
        (["--model", "ResNet", "--taps", "layer1.0"], 2, "--taps applies to library models"),
        (["--model", "torchvision:resnet_18", "--pretrained"], 1, "torchvision has no model 'resnet_18': did you mean "
                                                                  "torchvision:resnet18"),
        (["--model", "torchvision:", "--pretrained"], 2, "name a library model as SOURCE:NAME"),
        (["--model", "torchvision:resnet18", "--weights", str(tmp_path / "absent.pt")], 1, "weights file for "
                                                                                           "torchvision:resnet18 not found"),
        (["--model", "torchvision:resnet18", "--weights", str(base / "resnet18.pt"), "--tap", "both"], 2,
         "--tap both needs denoising blocks"),
        (["--model", "torchvision:alexnet", "--weights", str(base / "resnet18.pt")], 1, "--taps auto does not know"),
    ]
    for argv, status, expected in cases:
        capsys.readouterr()
        try:
            code = cli.run_main(evaluate.main, argv + ["--data", str(base / "data"), "--out", str(tmp_path / "out")])
        except SystemExit as exit:                                 # argparse's usage errors
            code = exit.code
        assert code == status, argv
        err = capsys.readouterr().err.strip()
        assert expected in err.splitlines()[-1] and (status == 2 or len(err.splitlines()) == 1), (argv, err)
    assert not (tmp_path / "out").exists()


def test_list_taps_prints_the_modules_to_choose_from(capsys):
    assert cli.run_main(evaluate.main, ["--model", "torchvision:resnet18", "--list-taps"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# torchvision:resnet18") and "layer2.1  BasicBlock  128×28×28" in lines


def test_without_torchvision_a_library_model_is_one_line_saying_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torchvision", None)         # import torchvision → ImportError
    with pytest.raises(torch_external.ExternalModelError) as error:
        torch_external.build_network("torchvision", "resnet18")
    assert "torchvision is not installed" in str(error.value) and "requirements-models" in str(error.value)


def test_a_safetensors_file_loads_like_the_state_dict(study_setup, tmp_path):
    from safetensors.torch import save_file
    _, network = study_setup
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(tmp_path / "w.safetensors"))
    state = torch_external.read_state_dict(tmp_path / "w.safetensors")
    reference = torch_external.read_state_dict(Path(study_setup[0]) / "resnet18.pt")
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    assert torch_external.state_dict_sha256(state) == torch_external.state_dict_sha256(reference)


def test_validate_measures_a_library_models_clean_accuracy_with_its_interval(study_setup, tmp_path, capsys):
    from repro import validation
    base, network = study_setup
    table = validation.validation_table(["--model", "torchvision:resnet18", "--weights", str(base / "resnet18.pt"),
                                         "--data", str(base / "data"), "--limit", "6", "--out", str(tmp_path / "v")])
    row = table[table["quantity"] == "top1_error"].iloc[0]
    from repro.data import load_imagenet_val_image, to_model_space
    from repro.runner import image_selection
    selection = image_selection(external.ExternalSpec("x", "torchvision", "resnet18", "x", "", external.InputConvention(),
                                                      (), "named"), str(base / "data"), None, validation.ORDER_SEED)
    chosen = selection.paths[:6]
    images = np.stack([load_imagenet_val_image(path) for path in chosen])
    normalised = ((torch.from_numpy(to_model_space(images)).flip(1) + 1) / 2 - torch.tensor(
        [0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        wrong = int((network.eval()(normalised.float()).argmax(1).numpy() != selection.labels[:6]).sum())
    assert (row["n"], row["measured"]) == (6, pytest.approx(100.0 * wrong / 6))
    assert row["ci95_low"] <= row["measured"] <= row["ci95_high"] and row["verdict"] == "n/a"   # no published top-1
    assert json.loads((tmp_path / "v" / "validate-imagenet-k0.json").read_text())["checkpoints"][
        "torchvision:resnet18"]["sha256"] == torch_external.file_sha256(base / "resnet18.pt")


def test_robustbench_names_fail_in_one_line_where_it_is_not_installed(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(torch_external.ExternalModelError) as error:
        torch_external.build_network("robustbench", "Salman2020Do_R50", pretrained=True)
    assert "robustbench models need RobustBench (pip install git+https://github.com/RobustBench/robustbench.git)" \
        in str(error.value) and "\n" not in str(error.value)


def test_the_api_studies_a_model_object_as_the_command_studies_its_weights(study_setup, first_study, tmp_path):
    """``run_study({"mine": module})``: the same numbers as the command on the module's state dict, the model named
    module:mine, and the user's module left as it was."""
    import repro
    base, reference = first_study
    _, network = study_setup
    before = {k: v.clone() for k, v in network.state_dict().items()}
    tables = repro.run_study({"mine": network}, data=str(base / "data"), images=4, out=str(tmp_path / "api"), batch=2,
                             attack_iter=2, input=dict(size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    assert set(tables.blocks["model"]) == {"module:mine"}
    expected = reference["blocks.csv"].drop(columns="model")
    pd.testing.assert_frame_equal(tables.blocks.drop(columns="model").reset_index(drop=True), expected,
                                  check_dtype=False)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.requires_grad for p in network.parameters())          # not switched off on the user's object
    with pytest.raises(ValueError, match="runs without --workers and --ray"):
        repro.run_study({"mine": network}, data=str(base / "data"), images=4, out=str(tmp_path / "w"), workers=2)


def test_models_that_need_other_images_are_refused_before_any_work(study_setup, tmp_path, capsys):
    base, _ = study_setup
    torch.manual_seed(0)
    torch.save(torchvision.models.vit_b_16().state_dict(), tmp_path / "vit.pt")
    for argv, expected in [
        (["--model", "torchvision:vit_b_16", "--weights", str(tmp_path / "vit.pt"), "--input-size", "160"],
         "torchvision:vit_b_16 does not run on 160×160 images"),
        (["--model", "ResNet", "torchvision:resnet18", "--zoo", "mini", "--weights", "x.npz", str(base / "resnet18.pt"),
          "--engine", "torch"], "torchvision:resnet18 is an ImageNet model: it cannot share a run with --zoo mini"),
    ]:
        capsys.readouterr()
        assert cli.run_main(evaluate.main, argv + ["--data", str(base / "data"), "--out", str(tmp_path / "o")]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    from repro.evaluate import model_specs, parse_args
    args = parse_args(["--model", "torchvision:resnet18", "timm:vit_tiny_patch16_384", "--weights", "a.pt", "b.pt"])
    args.load = None
    args.pretrained = True                                           # nothing is downloaded to make the specs
    with pytest.raises(cli.UsageError, match="they take different sizes \\(torchvision:resnet18 224, "
                                             "timm:vit_tiny_patch16_384 384\\)"):
        model_specs(args)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ray_workers_study_a_library_model_as_one_process_does(study_setup, first_study, tmp_path):
    """--workers 2: the spec travels to two Ray actors, which build the network and load the weights themselves."""
    base, reference = first_study
    assert run(base, tmp_path / "two", base / "resnet18.pt", "--workers", "2") == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "two" / "blocks.csv"), reference["blocks.csv"])
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    slots = {where.split(" (")[0] for where in manifest["computed_by"]["torchvision:resnet18"].values()}
    assert manifest["workers"] == 2 and slots == {"slot 0", "slot 1"}
