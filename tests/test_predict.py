"""predict: top-5 table and logits in input order; unreadable images reported and skipped."""
import numpy as np
import pandas as pd
import pytest

from repro import predict
from repro.classes import class_name
from repro.classifier import Classifier
from repro.data import load_image_naive
from repro.synthetic import write_synthetic_checkpoint
from tests.conftest import tiny_spec, write_images


def test_predict_table_matches_the_classifier_and_skips_unreadable_images(tmp_path):
    spec = tiny_spec("resnet")
    checkpoint = write_synthetic_checkpoint(spec, tmp_path / "tiny.npz")
    paths = write_images(tmp_path / "in", [(80, 70), (64, 64), (30, 90)])
    bad = tmp_path / "in" / "image01b.jpg"
    bad.write_text("not an image")
    inputs = [paths[0], paths[1], bad, paths[2]]
    table, logits, skipped = predict.predict(spec, checkpoint, inputs, batch_size=2)
    assert list(table["path"]) == [str(p) for p in paths]
    assert skipped == [(str(bad), skipped[0][1])] and "cannot decode" in skipped[0][1]
    expected = Classifier(spec, checkpoint).predict_logits(np.stack([load_image_naive(p, 64) for p in paths]))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    for row, probs in zip(table.itertuples(), probabilities):
        top = np.argsort(-probs)[:5]
        assert [getattr(row, "class_{}".format(k)) for k in range(1, 6)] == list(top)
        np.testing.assert_allclose([getattr(row, "prob_{}".format(k)) for k in range(1, 6)], probs[top], rtol=1e-5)


@pytest.mark.slow
def test_predict_command_on_a_synthetic_resnet152_writes_csv_and_logits(tmp_path, synthetic_imagenet_checkpoint, capsys):
    checkpoint = synthetic_imagenet_checkpoint("ResNet")
    paths = write_images(tmp_path / "in", [(300, 260), (224, 224)])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out" / "predictions.csv"
    argv = ["--model", "ResNet", "--load", str(checkpoint), "--input", str(tmp_path / "in"),
            "--output", str(out), "--save-logits", str(tmp_path / "logits.npy"), "--batch", "2"]
    assert predict.main(argv) == 0
    table = pd.read_csv(out)
    logits = np.load(tmp_path / "logits.npy")
    assert list(table["path"]) == [str(p) for p in paths]
    assert logits.shape == (2, 1000) and logits.dtype == np.float32 and np.isfinite(logits).all()
    assert list(table["class_1"]) == list(logits.argmax(1))
    assert list(table["name_1"]) == [class_name(k) for k in logits.argmax(1)]
    assert (np.diff(table[["prob_{}".format(k) for k in range(1, 6)]].to_numpy(), axis=1) <= 0).all()
    assert "broken.png" in capsys.readouterr().err
    assert pd.read_csv(out.with_suffix(".skipped.csv"))["path"].str.endswith("broken.png").all()
    assert predict.main(argv) == 0                                     # same input → same logits
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), logits)


def test_missing_checkpoint_is_one_clear_message(tmp_path, capsys):
    from repro.cli import run_main
    status = run_main(predict.main, ["--model", "ResNet", "--load", str(tmp_path / "R152.npz"),
                                     "--input", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "checkpoint for ResNet not found" in err and "download_checkpoints.py --model ResNet" in err
