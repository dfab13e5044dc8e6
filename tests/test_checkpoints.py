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
    with pytest.raises(CheckpointError, match=r"does not fit ResNet \(resnet network, blocks per group \[3, 4, 6, 3\]\): "
                                              r"blocks per group \[3, 8, 36, 3\], expected \[3, 4, 6, 3\]$"):
        checkpoints.check_architecture(checkpoint, zoo.get_model("ResNet", depth=50))


def test_a_non_resnet_checkpoint_is_named_as_such(tmp_path):
    checkpoint = checkpoints.Checkpoint(path="bert.npz", sha256="", arrays={"embeddings/W": np.zeros(3)})
    with pytest.raises(CheckpointError, match="not a checkpoint of a ResNet-family model"):
        checkpoints.check_architecture(checkpoint, zoo.get_model("ResNet"))


def test_model_variables_of_a_tiny_spec_match_its_checkpoint(tiny):
    spec, arrays = tiny
    assert {checkpoints.variable_key(n) for n, _ in model_variables(spec)} == set(arrays)


# --- the variables a model holds, read off the zoo without an engine -----------------------------------

@pytest.mark.parametrize("spec", [spec for spec in zoo.all_models()] + [
    tiny_spec(family, blocks=(1, 2, 1, 1)) for family in ("resnet", "resnet_denoise", "resnext_denoise_all")],
    ids=lambda spec: "{}-{}".format(spec.zoo, spec.name) if spec.zoo != "test" else spec.arch.family)
def test_the_neutral_variable_list_is_the_tensorflow_models(spec):
    """`checkpoints.model_variables` (no engine) names exactly the variables, with their shapes, that the
    TensorFlow models create (the PyTorch engine's are held to the same list in tests/test_torch.py)."""
    assert sorted(checkpoints.model_variables(spec)) == sorted(
        (checkpoints.variable_key(name), tuple(shape)) for name, shape in model_variables(spec))


def test_the_neutral_variable_list_is_the_released_checkpoints_manifest(manifest):
    for name, recorded in manifest.items():
        assert sorted(checkpoints.model_variables(zoo.get_model(name))) == sorted(
            (checkpoints.variable_key(n), tuple(s)) for n, s in recorded["variables"])


# --- nothing inflated before the declared names, shapes and sizes are checked ----------------------------

def _npz_with_header(path, arrays, lie=None):
    """An .npz whose member ``lie[0]`` declares the shape ``lie[1]`` in its header while holding its own bytes."""
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            header = dict(descr=np.lib.format.dtype_to_descr(array.dtype), fortran_order=False,
                          shape=lie[1] if lie and lie[0] == name else array.shape)
            import io
            stream = io.BytesIO()
            np.lib.format.write_array_header_1_0(stream, header)
            archive.writestr(name + ":0.npy", stream.getvalue() + np.ascontiguousarray(array).tobytes())
    return path


def test_a_member_declaring_a_huge_array_is_refused_from_its_header(tiny, tmp_path):
    """A header declaring 3.6 TiB is refused in one line naming the member and both sizes, before any
    allocation (it used to end in numpy's _ArrayMemoryError)."""
    _, arrays = tiny
    path = _npz_with_header(tmp_path / "lie.npz", arrays, lie=("linear/W", (1000000, 1000000)))
    with pytest.raises(CheckpointError, match=r"member linear/W:0\.npy declares a \[1000000, 1000000\] float32 array "
                                              r"\(4 TB\) but holds 5\.12 KB: the file is damaged; download it again$"):
        checkpoints.read_checkpoint(path)


def test_a_large_member_of_the_wrong_shape_is_refused_before_it_is_read(tiny, tmp_path, monkeypatch):
    """With the model known, the declared shapes are checked first and only the model's variables are read:
    a wrong-shaped member is named without inflating anything, an extra member is never read."""
    spec, arrays = tiny
    wrong = dict(arrays, **{"group1/block0/conv2/W": np.zeros((3, 3, 8, 9), np.float32)})
    path = checkpoints.save_checkpoint(wrong, tmp_path / "wrong.npz")
    read = []
    original = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    with pytest.raises(CheckpointError, match=r"group1/block0/conv2/W has shape \[3, 3, 8, 9\] in the checkpoint, the "
                                              r"model needs \[3, 3, 8, 8\]"):
        checkpoints.load_for(spec, path)
    assert read == []
    extra = checkpoints.save_checkpoint(dict(arrays, unused=np.zeros(5, np.float32)), tmp_path / "extra.npz")
    loaded = checkpoints.load_for(spec, extra)
    assert "unused" not in loaded.arrays and "unused" in loaded.shapes and "unused:0" not in read
    assert set(loaded.arrays) == set(arrays)


def test_a_variable_of_the_wrong_rank_is_named_not_a_traceback(tiny, tmp_path):
    spec, arrays = tiny
    path = checkpoints.save_checkpoint(dict(arrays, **{"conv0/W": np.zeros((3, 8), np.float32)}), tmp_path / "r.npz")
    with pytest.raises(CheckpointError, match=r"does not fit Tiny .*: stem channels: conv0/W has shape \[3, 8\]; "
                                              r"stem kernel: conv0/W has shape \[3, 8\]$"):
        checkpoints.load_for(spec, path)


def test_a_missing_variable_is_named_not_described_as_the_same_architecture(tiny, tmp_path):
    """It used to read "holds resnet [2, 4, 6, 2] and 10, expected resnet [2, 4, 6, 2] and 10"."""
    spec, arrays = tiny
    for name, expected in (("group0/block0/conv1/W", r"first inner width: group0/block0/conv1/W is missing$"),
                           ("group2/block0/conv3/W", r"lacks 1 model variable\(s\): group2/block0/conv3/W; it does "
                                                     r"not belong to this model")):
        path = checkpoints.save_checkpoint({k: v for k, v in arrays.items() if k != name}, tmp_path / "m.npz")
        with pytest.raises(CheckpointError, match=expected):
            checkpoints.load_for(spec, path)


def test_a_folder_named_like_a_checkpoint_is_called_a_folder(tmp_path):
    (tmp_path / "x.npz").mkdir()
    with pytest.raises(CheckpointError, match=r"x\.npz is a folder, not a checkpoint file: pass the \.npz file"):
        checkpoints.read_checkpoint(tmp_path / "x.npz")


# --- weights must be real floating-point numbers ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.complex64, np.int32, np.bool_])
def test_weights_that_are_not_real_floats_are_refused(tiny, tmp_path, dtype):
    """Complex weights used to lose their imaginary part silently, integer ones to load as floats."""
    spec, arrays = tiny
    path = checkpoints.save_checkpoint(dict(arrays, **{"group0/block0/conv1/W": arrays[
        "group0/block0/conv1/W"].astype(dtype)}), tmp_path / "c.npz")
    with pytest.raises(CheckpointError, match=r"variable group0/block0/conv1/W holds {} values .*not real floating-"
                                              r"point weights".format(np.dtype(dtype).name)):
        checkpoints.load_for(spec, path)


def test_lower_precision_weights_are_converted_with_a_warning_and_recorded(tiny, tmp_path, caplog):
    spec, arrays = tiny
    half = {name: value.astype(np.float16) if name.startswith("group0/") else value for name, value in arrays.items()}
    path = checkpoints.save_checkpoint(half, tmp_path / "half.npz")
    with caplog.at_level(logging.WARNING, logger="repro.checkpoints"):
        checkpoint = checkpoints.load_for(spec, path)
        Classifier(spec, checkpoint).close()
    notes = [r.message for r in caplog.records if "not float32" in r.message]
    group0 = sum(1 for name in arrays if name.startswith("group0/"))
    assert len(notes) == 1 and "{} of {} variable(s) are float16 ({})".format(group0, len(arrays), group0) in notes[0]
    assert checkpoint.dtypes() == {"float16": group0, "float32": len(arrays) - group0}
    assert checkpoints.precision_note(checkpoints.read_checkpoint(checkpoints.save_checkpoint(
        arrays, tmp_path / "full.npz"))) is None
