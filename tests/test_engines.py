"""The engine registry, and the engine-neutral core: importing it (and the entry points' parsing) loads
neither TensorFlow, tensorpack nor PyTorch."""
import subprocess
import sys

import pytest

from repro import engines, zoo
from repro.taps import taps_for

CORE = ("zoo", "checkpoints", "protocol", "data", "taps", "aggregate", "plots", "runner", "robustness",
        "package_metrics", "fileio", "minidata", "classes", "engines", "cli", "evaluate", "validation", "predict",
        "scheduler", "api", "resources", "download")


def test_the_engine_neutral_core_imports_no_framework():
    code = ("import sys\nimport repro\nfrom repro import {}\n"
            "loaded = [m for m in ('tensorflow', 'tensorpack', 'torch', 'ray') if m in sys.modules]\n"
            "assert not loaded, loaded").format(", ".join(CORE))
    result = subprocess.run([sys.executable, "-c", code], cwd=str(zoo.REPO_ROOT), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_unknown_engines_and_precisions_are_clear_errors():
    with pytest.raises(ValueError, match="unknown engine 'jax': choose tensorflow or torch"):
        engines.load("jax")
    with pytest.raises(engines.PrecisionUnavailable, match="unknown precision 'fp8'"):
        engines.check_precision("tensorflow", "fp8")
    assert engines.load("tensorflow").PRECISIONS == engines.PRECISIONS
    for precision in ("float32", "tf32", "bf16"):       # on any machine; fp16 needs a GPU (tests/test_precision.py)
        engines.check_precision("tensorflow", precision)


def test_a_precision_an_engine_lacks_is_refused_naming_what_it_offers(monkeypatch):
    monkeypatch.setattr(engines.load("tensorflow"), "PRECISIONS", ("float32", "tf32"))
    with pytest.raises(engines.PrecisionUnavailable, match=r"^--precision bf16 is not available with --engine "
                                                           r"tensorflow \(it offers float32, tf32\)$"):
        engines.check_precision("tensorflow", "bf16")


def test_a_missing_framework_is_one_line_naming_what_to_install(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    result = subprocess.run([sys.executable, "repro/predict.py", "--engine", "torch", "--zoo", "mini", "--model",
                             "ResNet", "--input", "docs", "--output", str(tmp_path / "p.csv")],
                            cwd=str(zoo.REPO_ROOT), capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "--engine torch needs PyTorch (requirements-torch.txt)" in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet", "ResNetDenoise", "ResNeXtDenoiseAll"])
def test_the_taps_read_off_the_zoo_equal_the_full_size_graphs(name):
    from repro.models import model_function
    from repro.taps import block_taps
    from repro.tfcompat import tf
    spec = zoo.get_model(name)
    graph = tf.Graph()
    with graph.as_default():
        model_function(spec)(tf.placeholder(tf.float32, [None, 3, 224, 224]))
    for tap in ("block_output", "denoised"):
        assert taps_for(spec, tap) == block_taps(graph, tap)
