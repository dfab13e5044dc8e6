"""evaluate.py end to end on small networks of the real families (and, slow, the full-size models):
the files and their columns, determinism, resume without double counting, shards, bad input."""
import json

import numpy as np
import pandas as pd
import pytest

from repro import checkpoints, cli, evaluate, metrics, zoo
from repro.classes import load_class_index
from repro.synthetic import write_synthetic_checkpoint
from tests.conftest import tiny_spec, write_images

BLOCK_COLUMNS = ["model", "perturbation", "metric", "block_index", "depth_from_end", "group", "block", "tap",
                 "channels", "height", "width", "mean", "std", "ci95_low", "ci95_high", "n_values", "n_images",
                 "n_excluded"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 'test' zoo of two tiny models with synthetic checkpoints, and an ImageNet-style val folder."""
    base = tmp_path_factory.mktemp("study")
    specs = [tiny_spec("resnet", blocks=(1, 2, 1, 1), name="TinyResNet"),
             tiny_spec("resnext_denoise_all", name="TinyX")]
    zoo.ZOOS["test"] = {spec.name: spec for spec in specs}
    for spec in specs:
        write_synthetic_checkpoint(spec, base / "checkpoints" / spec.checkpoint, seed=1)
    wnids = [wnid for wnid, _ in load_class_index()[:10]]
    for index, wnid in enumerate(wnids[:6]):
        write_images(base / "data" / "val" / wnid, [(80, 90), (70, 64)], seed=index)
    yield base, specs
    zoo.ZOOS.pop("test", None)


def run(base, out, *extra, models=("TinyResNet", "TinyX")):
    argv = ["--model", *models, "--zoo", "test", "--data", str(base / "data"), "--images", "5", "--batch", "2",
            "--attack-iter", "3", "--out", str(out),
            "--load", *[str(base / "checkpoints" / (m + ".npz")) for m in models], *extra]
    return cli.run_main(evaluate.main, argv)


def tables(out):
    return {name: pd.read_csv(out / name) for name in ("blocks.csv", "images.csv", "summary.csv")}


@pytest.fixture(scope="module")
def first_run(setup):
    base, specs = setup
    assert run(base, base / "out") == 0
    return base, specs, tables(base / "out")


def test_two_model_run_writes_every_file_and_column(first_run):
    base, specs, t = first_run
    out = base / "out"
    for name in ["manifest.json", "fig5_2.png", "fig5_2.pdf", "fig5_1_TinyResNet.png", "fig5_1_TinyX.pdf"]:
        assert (out / name).stat().st_size > 0, name
    blocks = t["blocks.csv"]
    assert list(blocks.columns) == BLOCK_COLUMNS
    n_blocks = {"TinyResNet": 5, "TinyX": 4}
    assert len(blocks) == sum(n_blocks.values()) * 2 * len(metrics.DEFAULT_METRICS)
    for model, count in n_blocks.items():
        rows = blocks[(blocks.model == model) & (blocks.perturbation == "adversarial") & (blocks.metric == "ssim")]
        assert list(rows.block_index) == list(range(1, count + 1))
        assert list(rows.depth_from_end) == list(range(count - 1, -1, -1))
    assert (blocks.n_images == 5).all()
    assert ((blocks.n_values + blocks.n_excluded) == blocks.n_images * blocks.channels).all()
    assert set(blocks.perturbation) == {"random", "adversarial"} and set(blocks.metric) == set(metrics.DEFAULT_METRICS)
    first = blocks[(blocks.model == "TinyResNet") & (blocks.block_index == 1) & (blocks.metric == "mse")].iloc[0]
    assert (first.tap, first.channels, first.height, first.width) == ("group0/block0/block_output", 16, 16, 16)
    finite = blocks.dropna(subset=["std"])
    assert (finite.ci95_low <= finite["mean"]).all() and (finite["mean"] <= finite.ci95_high).all()

    images = t["images.csv"]
    assert len(images) == 10 and set(images.model) == {"TinyResNet", "TinyX"}
    assert (images.target != images.label).all()
    assert (images.attack_success == (images.pred_adversarial == images.target)).all()
    summary = t["summary.csv"]
    assert len(summary) == 6 and set(summary.perturbation) == {"clean", "random", "adversarial"}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["attack_iterations"] == 3 and manifest["config"]["seed"] == 0
    assert len(manifest["models"]["TinyX"]["sha256"]) == 64
    assert manifest["packages"]["tensorflow"] and "attack" in manifest["timings_seconds"]


def test_same_seed_gives_identical_tables_and_targets_match_the_draws(first_run):
    base, _, t = first_run
    assert run(base, base / "again") == 0
    again = tables(base / "again")
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(t[name], again[name])


def test_a_killed_run_resumes_without_losing_or_double_counting(setup, first_run, monkeypatch):
    base, _, reference = first_run
    out = base / "killed"
    from repro import study
    original = study.StudyGraph.run_batch
    calls = {"n": 0}

    def dies_on_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(study.StudyGraph, "run_batch", dies_on_second_batch)
    assert run(base, out) == 130
    assert len(list((out / "work" / "TinyResNet").glob("batch-*.npz"))) == 1
    monkeypatch.setattr(study.StudyGraph, "run_batch", original)
    assert run(base, out) == 0
    for name in ("blocks.csv", "images.csv", "summary.csv"):
        pd.testing.assert_frame_equal(reference[name], tables(out)[name])


def test_shards_merge_into_the_same_tables(setup, first_run):
    base, _, reference = first_run
    out = base / "sharded"
    assert run(base, out, "--shard", "0/2") == 0
    partial = pd.read_csv(out / "blocks.csv")
    assert (partial.n_images == 3).all()                                   # batches 0 and 2: images 0,1,4
    assert run(base, out, "--shard", "1/2") == 0
    merged = tables(out)
    pd.testing.assert_frame_equal(reference["blocks.csv"], merged["blocks.csv"], check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(reference["images.csv"], merged["images.csv"])


def test_changed_settings_in_the_same_out_are_refused(setup, first_run, capsys):
    base, _, _ = first_run
    assert run(base, base / "out", "--attack-epsilon", "8") == 2
    assert "holds results computed with different settings (epsilon" in capsys.readouterr().err


def test_missing_checkpoint_and_unreadable_image_get_clear_errors_and_lose_nothing(setup, tmp_path, capsys, caplog):
    base, _ = setup
    status = cli.run_main(evaluate.main, ["--model", "TinyX", "--zoo", "test", "--data", str(base / "data"),
                                          "--load", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and "checkpoint for TinyX not found at" in err and "--load PATH" in err

    data = tmp_path / "data"
    wnid = load_class_index()[3][0]
    write_images(data / wnid, [(64, 64), (64, 64)])
    (data / wnid / "image00.png").write_bytes(b"\x89PNG broken")            # the first selected image
    out = tmp_path / "o2"
    status = cli.run_main(evaluate.main, ["--model", "TinyX", "--zoo", "test", "--data", str(data), "--images", "2",
                                          "--batch", "2", "--attack-iter", "1", "--out", str(out),
                                          "--load", str(base / "checkpoints" / "TinyX.npz")])
    assert status == 0
    images = pd.read_csv(out / "images.csv")
    bad = images[images.path.str.endswith("image00.png")]
    assert len(images) == 2 and len(bad) == 1 and "cannot decode" in bad.error.iloc[0]
    assert (bad[["pred_clean", "target"]] == -1).all(axis=None)
    assert (pd.read_csv(out / "blocks.csv").n_images == 1).all()
    assert pd.read_csv(out / "summary.csv").n_images.eq(1).all()
    assert "skipping unreadable image" in caplog.text and "image00.png" in caplog.text


def test_bad_arguments_are_one_line_errors(setup, tmp_path, capsys):
    base, _ = setup
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "ResNet", "--metrics", "ssim,nope"])
    assert "unknown metric(s) nope" in capsys.readouterr().err
    assert cli.run_main(evaluate.main, ["--model", "TinyX", "--zoo", "test", "--out", str(tmp_path),
                                        "--load", str(base / "checkpoints" / "TinyX.npz")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert cli.run_main(evaluate.main, ["--model", "TinyX", "--zoo", "test", "--data", str(tmp_path / "none"),
                                        "--out", str(tmp_path / "o"),
                                        "--load", str(base / "checkpoints" / "TinyX.npz")]) == 1
    assert "ImageNet data folder" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_two_model_run_with_synthetic_checkpoints(tmp_path, synthetic_imagenet_checkpoint):
    wnids = [wnid for wnid, _ in load_class_index()]
    write_images(tmp_path / "val" / wnids[10], [(256, 300)], seed=1)
    write_images(tmp_path / "val" / wnids[500], [(320, 256)], seed=2)
    out = tmp_path / "out"
    argv = ["--model", "ResNet", "ResNeXtDenoiseAll", "--data", str(tmp_path), "--images", "2", "--batch", "2",
            "--attack-iter", "2", "--out", str(out), "--visualize", "2", "--no-check",
            "--load", str(synthetic_imagenet_checkpoint("ResNet")), str(synthetic_imagenet_checkpoint("ResNeXtDenoiseAll"))]
    assert cli.run_main(evaluate.main, argv) == 0
    blocks = pd.read_csv(out / "blocks.csv")
    assert len(blocks) == (50 + 33) * 2 * len(metrics.DEFAULT_METRICS)
    last = blocks[(blocks.model == "ResNet") & (blocks.block_index == 50)].iloc[0]
    assert (last.channels, last.height, last.width) == (2048, 7, 7)
    assert (blocks[blocks.metric.isin(["frobenius", "mse"])].n_excluded == 0).all()
    for name in ["fig5_1_ResNet.png", "fig5_1_ResNeXtDenoiseAll.png", "fig5_2.png", "fig5_2.pdf",
                 "feature_maps_ResNet.png", "images.csv", "summary.csv", "manifest.json"]:
        assert (out / name).exists(), name


def test_workers_split_the_run_into_processes_and_merge_to_the_same_tables(tmp_path, capsys):
    """--workers 2 (child processes on shards 0/2 and 1/2, a thread each) gives the tables of one process."""
    common = ["--zoo", "mini", "--model", "ResNet", "--images", "4", "--batch", "2", "--attack-iter", "2"]
    assert cli.run_main(evaluate.main, common + ["--out", str(tmp_path / "one")]) == 0
    assert cli.run_main(evaluate.main, common + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = tables(tmp_path / "one"), tables(tmp_path / "two")
    pd.testing.assert_frame_equal(one["blocks.csv"], two["blocks.csv"], check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(one["images.csv"], two["images.csv"])
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["models"]["ResNet"]["sha256"] == checkpoints.sha256_of(
        cli.checkpoint_path(zoo.get_model("ResNet", "mini")))
    assert manifest["models"]["ResNet"]["clean_check"]["images"] == 4
    assert sorted(p.name for p in (tmp_path / "two" / "work" / "logs").iterdir()) == [
        "worker-0-of-2.log", "worker-1-of-2.log"]

    # A checkpoint of another architecture is refused by the parent before any worker starts or the
    # folder is claimed.
    wrong = str(cli.checkpoint_path(zoo.get_model("ResNetDenoise", "mini")))
    capsys.readouterr()
    status = cli.run_main(evaluate.main, common + ["--out", str(tmp_path / "bad"), "--workers", "2", "--load", wrong])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and "is a ResNetDenoise (mini zoo) checkpoint" in errors[0], errors
    assert not (tmp_path / "bad" / "work" / "config.json").exists()


def test_a_failing_worker_is_one_line_naming_it_and_its_log(tmp_path, capsys, monkeypatch):
    """A child that dies (here: made to exit by a sitecustomize on its path) is reported in one line."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\nif '--worker' in sys.argv and '0/2' in sys.argv:\n    sys.exit('injected failure of worker 0')\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))
    common = ["--zoo", "mini", "--model", "ResNet", "--images", "4", "--batch", "2", "--attack-iter", "1"]
    status = cli.run_main(evaluate.main, common + ["--out", str(tmp_path / "out"), "--workers", "2"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1, errors
    assert "worker 0/2 failed" in errors[0] and "injected failure of worker 0" in errors[0]
    assert "worker-0-of-2.log" in errors[0] and "re-run the same command to resume" in errors[0]
