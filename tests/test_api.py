"""The Python API (`repro.api`): the same tables as the commands for the same settings, a model object whose
predictions and features equal the engine's, and the `python -m repro` commands."""
import io
import pydoc
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import repro
from repro import api, cli, evaluate, minidata, validation, zoo
from repro.engines.tensorflow.classifier_graph import Classifier


def test_settings_become_the_commands_options():
    assert api._options({"attack_iter": 10, "no_check": True, "workers": None, "aggregate_only": False,
                         "load": ["a.npz", "b.npz"], "ssim_data_range": "reference"}) == [
        "--attack-iter", "10", "--no-check", "--load", "a.npz", "b.npz", "--ssim-data-range", "reference"]
    with pytest.raises(ValueError, match=r"^invalid settings: argument --attack-epsilon: 'nan' is not a finite number$"):
        api.run_study("ResNet", zoo="mini", images=2, attack_epsilon="nan", out="unused")
    with pytest.raises(ValueError, match=r"^invalid settings: unrecognized arguments: --noise loud$"):
        api.validate("ResNet", zoo="mini", noise="loud")
    for call in (lambda: api.run_study("ResNet", zoo=None, out="unused"), lambda: api.validate("ResNet", zoo=None),
                 lambda: api.load_model("ResNet", zoo=None)):
        with pytest.raises(ValueError, match=r"^unknown zoo None: choose one of imagenet, mini$"):
            call()


def test_run_study_returns_the_tables_the_command_writes(tmp_path):
    argv = ["--zoo", "mini", "--model", "ResNet", "--images", "3", "--batch", "2", "--attack-iter", "2"]
    assert cli.run_main(evaluate.main, argv + ["--out", str(tmp_path / "cli")]) == 0
    tables = repro.run_study("ResNet", zoo="mini", images=3, batch=2, attack_iter=2, out=tmp_path / "api")
    for name, frame in zip(("blocks", "images", "summary"), tables):
        written = pd.read_csv(tmp_path / "cli" / (name + ".csv"))
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "api" / (name + ".csv")), written)
        assert list(frame.columns) == list(written.columns) and len(frame) == len(written)
    assert np.allclose(tables.blocks["mean"], pd.read_csv(tmp_path / "cli" / "blocks.csv")["mean"], rtol=1e-12,
                       equal_nan=True)


def test_validate_returns_the_commands_table(tmp_path):
    table = repro.validate("ResNet", zoo="mini", limit=40, out=tmp_path / "api")
    assert cli.run_main(validation.main, ["--zoo", "mini", "--model", "ResNet", "--limit", "40",
                                          "--out", str(tmp_path / "cli")]) == 0
    as_written = pd.read_csv(io.StringIO(table.to_csv(index=False)))       # the file's view of the same table
    pd.testing.assert_frame_equal(as_written, pd.read_csv(tmp_path / "cli" / "validate-mini-k0.csv"))
    assert table.verdict.tolist() == ["PASS", "n/a"]


def test_a_loaded_model_predicts_and_taps_as_the_engine_does(tmp_path):
    spec = zoo.get_model("ResNetDenoise", "mini")
    images, labels = minidata.load_split("test")
    model = repro.load_model("ResNetDenoise", zoo="mini")
    prediction = model.predict(images[:6], top_k=3)
    reference = Classifier(spec, cli.checkpoint_path(spec)).predict_logits(images[:6])
    np.testing.assert_array_equal(prediction.logits, reference)
    assert prediction.classes.shape == (6, 3) and (prediction.classes[:, 0] == reference.argmax(1)).all()
    assert (np.diff(prediction.probabilities, axis=1) <= 0).all() and prediction.names[0][0] == str(prediction.classes[0, 0])
    features = model.features(images[:2])
    assert len(features) == 14 and features["group0/block0/block_output"].shape == (2, 32, 32, 32)
    denoised = model.features(images[:2], taps="denoised")
    assert "group0_denoise/add" in denoised and "group0/block1/block_output" not in denoised
    with pytest.raises(ValueError, match="has no tensor 'group9/block0/block_output'"):
        model.features(images[:2], taps=["group9/block0/block_output"])
    with pytest.raises(ValueError, match="images must be BGR uint8 of shape N×32×32×3"):
        model.predict(images[:2].astype(np.float32))
    for top_k in (-1, 0, 11, 2.5, True):
        with pytest.raises(ValueError, match=r"^top_k must be an integer from 1 to 10 \(the model's classes\)"):
            model.predict(images[:2], top_k=top_k)
    import cv2
    cv2.imwrite(str(tmp_path / "one.png"), images[3])
    for one in (str(tmp_path / "one.png"), tmp_path / "one.png"):         # one path, not its characters
        single = model.predict(one, top_k=2)
        assert single.logits.shape == (1, 10)
        np.testing.assert_array_equal(single.logits, model.predict(images[3:4]).logits)
    model.close()


def test_help_lists_the_api_and_python_m_repro_runs_the_commands(tmp_path):
    text = pydoc.render_doc(repro)
    for name in ("load_model", "run_study", "validate", "repro-evaluate"):
        assert name in text
    result = subprocess.run([sys.executable, "-m", "repro", "predict", "--zoo", "mini", "--model", "ResNet", "--input",
                             str(zoo.REPO_ROOT / "docs" / "fig5_2_mini.png"), "--output", str(tmp_path / "p.csv")],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(zoo.REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "p.csv")) == 1
    usage = subprocess.run([sys.executable, "-m", "repro"], capture_output=True, text=True, timeout=60,
                           env={"PYTHONPATH": str(zoo.REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert usage.returncode == 2 and "evaluate" in usage.stderr and "download" in usage.stderr
