"""The engine registry, and the engine-neutral core: importing it (and the entry points' parsing) loads
neither TensorFlow, tensorpack nor PyTorch."""
import ast
import importlib
import subprocess
import sys
import types

import pytest

from repro import engines, zoo
from repro.taps import taps_for

PACKAGE = zoo.REPO_ROOT / "repro"
ENGINE_ROOMS = {"tensorflow": ("tensorflow", "tensorpack", "tf_keras"), "torch": ("torch", "torchvision", "timm")}
"""Each engine's package, and the frameworks only it may import."""


def repro_modules():
    """Every module of the package, by dotted name, with its source file (derived from the tree, not a list)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name, path, modules):
    """Every module ``name`` imports — at the top or inside a function — as dotted names (``from a import b``
    gives ``a.b`` when that is a module of the package, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(base + "." + alias.name for alias in node.names if base + "." + alias.name in modules)
    return found


def room_of(module):
    """The engine whose package holds ``module``, or None for the engine-neutral core."""
    return next((engine for engine in ENGINE_ROOMS if module == "repro.engines." + engine
                 or module.startswith("repro.engines." + engine + ".")), None)


def test_no_module_outside_an_engines_room_imports_its_framework_or_its_modules():
    """Walks every source file of the package (function-level imports included): TensorFlow, tensorpack and
    tf_keras only in repro/engines/tensorflow/, PyTorch only in repro/engines/torch/; the core reaches an
    engine only through the registry (`repro.engines.load`), and no engine imports the other."""
    modules = repro_modules()
    assert {"repro.evaluate", "repro.engines.tensorflow.study_graph", "repro.engines.torch.engine"} <= set(modules)
    offences = []
    for name, path in modules.items():
        room = room_of(name)
        for imported in imports_of(name, path, modules):
            for engine, frameworks in ENGINE_ROOMS.items():
                if engine == room:
                    continue
                if imported.split(".")[0] in frameworks or room_of(imported) == engine:
                    offences.append("{} imports {}".format(name, imported))
    assert not offences, offences


def test_the_package_has_no_import_cycle():
    """No module imports, directly or through others, one that imports it back (a parent package, which Python
    imports first anyway, does not count as an edge)."""
    modules = repro_modules()
    edges = {name: {imported for imported in imports_of(name, path, modules)
                    if imported in modules and not name.startswith(imported + ".")}
             for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name, trail):
        state[name] = "open"
        for imported in sorted(edges[name]):
            if state.get(imported) == "open":
                cycles.append(trail[trail.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, trail + [imported])
        state[name] = "done"
    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_engine_neutral_core_imports_no_framework():
    """Importing every module outside the engines' rooms (in one fresh process) loads no framework."""
    core = sorted(name for name in repro_modules() if room_of(name) is None and name != "repro.__main__")
    assert "repro.runner" in core and "repro.engines" in core and len(core) >= 20
    code = ("import importlib, sys\nfor name in {!r}:\n    importlib.import_module(name)\n"
            "loaded = [m for m in ('tensorflow', 'tensorpack', 'tf_keras', 'torch', 'ray') if m in sys.modules]\n"
            "assert not loaded, loaded").format(core)
    result = subprocess.run([sys.executable, "-c", code], cwd=str(zoo.REPO_ROOT), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_each_engines_package_face_is_the_documented_interface():
    """`repro.engines.load` gives the engine's package; its public names are the interface (and for torch the
    engine's own model object, ``load_model``, and the library models' ``external_spec``, ``tap_lines``,
    ``weights_for``), nothing else — and stay so once every module of the engine is
    imported (a submodule named like a face function would replace it)."""
    interface = {"PRECISIONS", "precision_unavailable", "device_unavailable", "study", "classifier", "attack_model",
                 "per_channel", "describe", "out_of_memory"}
    for engine, extra in (("tensorflow", set()), ("torch", {"load_model", "external_spec", "tap_lines", "weights_for"})):
        module = engines.load(engine)
        assert module.__name__ == "repro.engines." + engine
        for name in repro_modules():
            if room_of(name) == engine:
                importlib.import_module(name)
        public = {name: value for name, value in vars(module).items() if not name.startswith("_")
                  and not (isinstance(value, types.ModuleType) and value.__name__.startswith(module.__name__ + "."))}
        assert set(public) == interface | extra, (engine, sorted(public))
        assert public["PRECISIONS"] == engines.PRECISIONS
        assert all(callable(value) and not isinstance(value, types.ModuleType)
                   for name, value in public.items() if name != "PRECISIONS"), public


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
    from repro.engines.tensorflow.models import model_function
    from repro.engines.tensorflow.taps import block_taps
    from repro.engines.tensorflow.tfcompat import tf
    spec = zoo.get_model(name)
    graph = tf.Graph()
    with graph.as_default():
        model_function(spec)(tf.placeholder(tf.float32, [None, 3, 224, 224]))
    for tap in ("block_output", "denoised"):
        assert taps_for(spec, tap) == block_taps(graph, tap)


def test_devices_are_checked_in_one_line_before_any_work():
    """--device nonsense and mps were tracebacks, --device cuda with TensorFlow was ignored without a word."""
    tensorflow_engine = engines.load("tensorflow")
    assert tensorflow_engine.device_unavailable(None) is None and tensorflow_engine.device_unavailable("auto") is None
    assert tensorflow_engine.device_unavailable("cpu").startswith("--device cpu applies to --engine torch")
    with pytest.raises(engines.DeviceUnavailable, match="CUDA_VISIBLE_DEVICES"):
        engines.check_device("tensorflow", "cuda")
    torch_engine = engines.load("torch")
    import torch
    assert torch_engine.device_unavailable("cpu") is None
    assert torch_engine.device_unavailable("nonsense") == "unknown --device 'nonsense': choose cpu, cuda or cuda:N (N from 0)"
    assert torch_engine.device_unavailable("meta") == "--device meta is not supported by the study: choose cpu, cuda or cuda:N"
    if not torch.backends.mps.is_available():
        assert "sees no MPS device" in torch_engine.device_unavailable("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    reason = torch_engine.device_unavailable("cuda:{}".format(count))
    assert ("sees no CUDA device" if count == 0 else "this machine has {} CUDA device(s)".format(count)) in reason
    assert torch_engine.device_unavailable("cuda:{}".format(count), hardware=False) is None   # a cluster decides
