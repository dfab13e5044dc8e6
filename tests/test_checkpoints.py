"""Strict checkpoint loading: every error the SPEC names is triggered and its message checked."""
import hashlib
import logging
import pickle

import numpy as np
import pytest

from repro import checkpoints, zoo
from repro.checkpoints import CheckpointError
from repro.engines.tensorflow.classifier_graph import Classifier, model_variables
from repro.engines.tensorflow.synthetic import synthetic_checkpoint
from tests.conftest import tiny_spec


@pytest.fixture(scope="module")
def tiny():
    spec = tiny_spec("resnet_denoise")
    return spec, synthetic_checkpoint(spec, seed=1)


def manifest_checkpoint(manifest, name):
    """A checkpoint with the manifest's names and shapes, without allocating its arrays."""
    arrays = {checkpoints.variable_key(n): np.broadcast_to(np.float32(0), s) for n, s in manifest[name]["variables"]}
    return checkpoints.Checkpoint(path="{}.npz".format(name), sha256="", arrays=arrays)


def test_sha256_is_of_the_file_and_keys_load_with_or_without_suffix(tiny, tmp_path):
    spec, arrays = tiny
    with_suffix = checkpoints.save_checkpoint(arrays, tmp_path / "a.npz")
    with np.load(with_suffix) as npz:
        assert all(key.endswith(":0") for key in npz.files)
    np.savez(tmp_path / "b.npz", **arrays)                     # plain names, as some dumps have them
    first, second = checkpoints.read_checkpoint(with_suffix), checkpoints.read_checkpoint(tmp_path / "b.npz")
    assert first.sha256 == hashlib.sha256(with_suffix.read_bytes()).hexdigest()
    assert first.sha256 == checkpoints.sha256_of(with_suffix)
    assert set(first.arrays) == set(second.arrays) == set(arrays)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    np.testing.assert_array_equal(Classifier(spec, first).predict_logits(images),
                                  Classifier(spec, second).predict_logits(images))


def test_restored_values_are_exactly_the_checkpoint(tiny, tmp_path):
    spec, arrays = tiny
    classifier = Classifier(spec, checkpoints.save_checkpoint(arrays, tmp_path / "a.npz"))
    with classifier.graph.as_default():
        from repro.engines.tensorflow.tfcompat import tf
        for variable in tf.global_variables():
            np.testing.assert_array_equal(classifier.session.run(variable), arrays[variable.name[:-2]])


def test_missing_file_names_the_download_command(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz not found: download it \(python scripts/download_checkpoints"):
        checkpoints.read_checkpoint(tmp_path / "nope.npz")


def test_pickled_file_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"conv0/W": np.zeros(3)}))
    with pytest.raises(CheckpointError, match="is a pickle: only tensorpack .npz checkpoints are accepted"):
        checkpoints.read_checkpoint(path)


def test_object_arrays_inside_an_npz_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, **{"conv0/W:0": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match=r"holds pickled \(object\) arrays, which are never loaded"):
        checkpoints.read_checkpoint(path)


def test_truncated_and_non_npz_files_get_clear_errors(tiny, tmp_path):
    _, arrays = tiny
    whole = checkpoints.save_checkpoint(arrays, tmp_path / "whole.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="truncated.npz is truncated or corrupt .*download it again"):
        checkpoints.read_checkpoint(truncated)
    text = tmp_path / "text.npz"
    text.write_text("<html>404</html>")
    with pytest.raises(CheckpointError, match="text.npz is not an .npz \\(zip\\) archive"):
        checkpoints.read_checkpoint(text)


def _restore(spec, arrays, tmp_path):
    return Classifier(spec, checkpoints.save_checkpoint(arrays, tmp_path / "c.npz"))


def test_missing_variable_is_named(tiny, tmp_path):
    spec, arrays = tiny
    broken = dict(arrays)
    del broken["group1/block0/conv2/bn/variance/EMA"]
    with pytest.raises(CheckpointError, match=r"lacks 1 model variable\(s\): group1/block0/conv2/bn/variance/EMA"):
        _restore(spec, broken, tmp_path)


def test_mis_shaped_variable_is_named_with_both_shapes(tiny, tmp_path):
    spec, arrays = tiny
    broken = dict(arrays)
    broken["group0_denoise/conv/W"] = np.zeros((1, 1, 16, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"group0_denoise/conv/W has shape \[1, 1, 16, 8\] in the "
                                              r"checkpoint, the model needs \[1, 1, 16, 16\]"):
        _restore(spec, broken, tmp_path)


def test_extra_keys_are_listed_in_a_warning(tiny, tmp_path, caplog):
    spec, arrays = tiny
    extra = dict(arrays, global_step=np.int64(5), **{"learning_rate": np.float32(0.1)})
    with caplog.at_level(logging.WARNING, logger="repro.checkpoints"):
        _restore(spec, extra, tmp_path)
    assert "has 2 key(s) the model does not use: global_step, learning_rate" in caplog.text


@pytest.mark.parametrize("found,asked", [("ResNetDenoise", "ResNeXtDenoiseAll"), ("ResNeXtDenoiseAll", "ResNet"),
                                         ("ResNet", "ResNetDenoise")])
def test_checkpoint_of_another_architecture_is_recognised_and_named(manifest, found, asked):
    checkpoint = manifest_checkpoint(manifest, found)
    assert [spec.name for spec in checkpoints.recognise(
        {k: v.shape for k, v in checkpoint.arrays.items()})] == [found]
    with pytest.raises(CheckpointError, match="is a {} checkpoint, you asked for {}".format(found, asked)):
        checkpoints.check_architecture(checkpoint, zoo.get_model(asked))
    checkpoints.check_architecture(checkpoint, zoo.get_model(found))       # its own model: no error


def test_other_depth_is_described(manifest):
    checkpoint = manifest_checkpoint(manifest, "ResNet")
    with pytest.raises(CheckpointError, match=r"blocks per group \[3, 8, 36, 3\] .* expected resnet with \[3, 4, 6, 3\]"):
        checkpoints.check_architecture(checkpoint, zoo.get_model("ResNet", depth=50))


def test_a_non_resnet_checkpoint_is_named_as_such(tmp_path):
    checkpoint = checkpoints.Checkpoint(path="bert.npz", sha256="", arrays={"embeddings/W": np.zeros(3)})
    with pytest.raises(CheckpointError, match="not a checkpoint of a ResNet-family model"):
        checkpoints.check_architecture(checkpoint, zoo.get_model("ResNet"))


def test_model_variables_of_a_tiny_spec_match_its_checkpoint(tiny):
    spec, arrays = tiny
    assert {checkpoints.variable_key(n) for n, _ in model_variables(spec)} == set(arrays)
