"""predict: top-5 table and logits in input order; unreadable images reported and skipped."""
import numpy as np
import pandas as pd
import pytest

from repro import predict
from repro.classes import class_name
from repro.data import load_image_naive
from repro.engines.tensorflow.classifier_graph import Classifier
from repro.engines.tensorflow.synthetic import write_synthetic_checkpoint
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


def test_non_finite_logits_are_refused_naming_the_images_by_the_command_and_the_api(tmp_path, capsys):
    """Finite weights whose logits overflow (a classifier of 3e38s) used to give exit 0 and a CSV of classes
    0–4 with empty probabilities."""
    from repro import api, checkpoints, cli
    spec = tiny_spec("resnet")
    arrays = checkpoints.read_checkpoint(write_synthetic_checkpoint(spec, tmp_path / "tiny.npz")).arrays
    overflowing = checkpoints.save_checkpoint(dict(arrays, **{"linear/W": np.full_like(arrays["linear/W"], 3e38)}),
                                              tmp_path / "overflow.npz")
    paths = write_images(tmp_path / "in", [(64, 64), (64, 64)])
    with pytest.raises(cli.RunFailed, match=r"^Tiny: the checkpoint gives non-finite logits \(NaN or inf\) for 2 of 2 "
                                            r"image\(s\) \(.*image00\.png, .*image01\.png\): it is damaged"):
        predict.predict(spec, overflowing, paths)
    model = api.Model(spec, overflowing)
    with pytest.raises(cli.RunFailed, match=r"non-finite logits \(NaN or inf\) for 1 of 1 image\(s\) \(.*image01\.png\)"):
        model.predict(str(paths[1]))
    model.close()
    from repro import zoo
    monkey_spec = spec
    original = zoo.get_model
    try:
        zoo.get_model = lambda *args, **kwargs: monkey_spec
        code = cli.run_main(predict.main, ["--model", "Tiny", "--load", str(overflowing), "--input", str(tmp_path / "in"),
                                           "--output", str(tmp_path / "p.csv")])
    finally:
        zoo.get_model = original
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "non-finite logits" in errors[0], err
    assert not (tmp_path / "p.csv").exists()


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


def test_outputs_are_checked_before_any_work_and_written_all_or_none(tmp_path, capsys, monkeypatch):
    from repro.cli import run_main
    spec = tiny_spec("resnet")
    from repro import zoo
    zoo.ZOOS["test"] = {spec.name: spec}
    try:
        checkpoint = write_synthetic_checkpoint(spec, tmp_path / "tiny.npz")
        write_images(tmp_path / "in", [(64, 64), (70, 80)])
        a_file = tmp_path / "plain"
        a_file.write_text("x")
        argv = ["--model", spec.name, "--zoo", "test", "--load", str(checkpoint), "--input", str(tmp_path / "in")]
        called = []
        monkeypatch.setattr(predict, "predict", lambda *a, **k: called.append(1))
        assert run_main(predict.main, argv + ["--output", str(a_file / "p.csv")]) == 2
        assert capsys.readouterr().err == "error: --output {}: {} is a file, not a folder\n".format(a_file / "p.csv", a_file)
        assert run_main(predict.main, argv + ["--save-logits", str(tmp_path)]) == 2
        assert "--save-logits {0}: {0} is a folder: give a file name".format(tmp_path) in capsys.readouterr().err
        assert not called                                                   # refused before classifying
        monkeypatch.undo()

        def logits_fail(stream, array):
            raise OSError(28, "No space left on device", "logits.npy")
        monkeypatch.setattr(predict.np, "save", logits_fail)
        out = tmp_path / "out.csv"
        assert run_main(predict.main, argv + ["--output", str(out), "--save-logits", str(tmp_path / "l.npy")]) == 1
        assert "No space left on device" in capsys.readouterr().err
        assert not out.exists() and not (tmp_path / "l.npy").exists() and not list(tmp_path.glob(".*.tmp"))
    finally:
        zoo.ZOOS.pop("test", None)


def test_every_image_unreadable_gives_a_csv_with_its_header_and_a_named_pipe_does_not_hang(tmp_path, capsys):
    import os
    import signal
    from repro.cli import run_main
    spec = tiny_spec("resnet")
    from repro import zoo
    zoo.ZOOS["test"] = {spec.name: spec}
    previous = signal.signal(signal.SIGALRM, hang_fails)
    signal.alarm(120)                                  # a hang fails the test instead of blocking the suite
    try:
        checkpoint = write_synthetic_checkpoint(spec, tmp_path / "tiny.npz")
        (tmp_path / "in").mkdir()
        os.mkfifo(tmp_path / "in" / "pipe.png")
        (tmp_path / "in" / "loop.jpg").symlink_to(tmp_path / "in" / "loop.jpg")
        out = tmp_path / "out.csv"
        status = run_main(predict.main, ["--model", spec.name, "--zoo", "test", "--load", str(checkpoint),
                                         "--input", str(tmp_path / "in"), "--output", str(out)])
        assert status == 1
        assert list(pd.read_csv(out).columns)[:4] == ["path", "class_1", "name_1", "prob_1"] and len(pd.read_csv(out)) == 0
        reasons = dict(pd.read_csv(out.with_suffix(".skipped.csv")).itertuples(index=False))
        assert reasons == {str(tmp_path / "in" / "loop.jpg"): "a loop of symbolic links",
                           str(tmp_path / "in" / "pipe.png"): "not a regular file (a named pipe)"}
        err = capsys.readouterr().err
        assert err.count("pipe.png") == 1 and "skipped 2 unreadable image(s)" in err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        zoo.ZOOS.pop("test", None)


def hang_fails(signum, frame):
    raise TimeoutError("reading blocked: a named pipe or device was read as an image")
