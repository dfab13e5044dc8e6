"""The engines that compute the study: TensorFlow (the reference, tensorpack graphs) and PyTorch.

Everything else — zoo, checkpoint checks, data, draws, the batch flow (`repro.protocol.StudyFlow`), work
directory, tables, figures — is shared; an engine only builds the model and computes, for one batch, the
attack, the tapped forward pass with the metrics, and clean logits. Each answers the same small interface:

- ``study(spec, checkpoint, config, precision, device)`` → an object with ``taps``, ``checkpoint``,
  ``run_batch``, ``clean_logits_of``, ``close`` (a `repro.protocol.StudyFlow`);
- ``classifier(spec, checkpoint, device)`` → ``predict_logits(images_bgr, batch_size)``, ``close``;
- ``attack_model(spec, checkpoint, precision, device)`` → ``clean_predictions(images_bgr)``,
  ``adversarial_predictions(clean, start, targets, steps, epsilon, step_size)``, ``close``
  (for `repro.robustness`).

An engine's modules are imported only when it is asked for, so ``--engine torch`` never imports TensorFlow.
"""
import importlib

ENGINES = ("tensorflow", "torch")
DEFAULT_ENGINE = "tensorflow"
PRECISIONS = ("float32", "tf32", "bf16")
"""Arithmetic of the attack loop: float32 with TF32 off (the default, everywhere), TF32 matmuls and
convolutions (Ampere and newer GPUs), or bfloat16 autocast (PyTorch engine). The tapped forward pass stays
float32 with TF32 off and the metrics float64 whatever is chosen."""

_MODULES = {"tensorflow": "repro.engines.tensorflow", "torch": "repro.torch.engine"}


class EngineUnavailable(RuntimeError):
    """The engine's framework is not installed here; the message says which and what to do."""


def load(engine):
    """The module of ``engine`` (imported on first use)."""
    if engine not in _MODULES:
        raise ValueError("unknown engine {!r}: choose {}".format(engine, " or ".join(ENGINES)))
    try:
        return importlib.import_module(_MODULES[engine])
    except ImportError as error:
        package = {"tensorflow": "TensorFlow and tensorpack (requirements.txt)",
                   "torch": "PyTorch (requirements-torch.txt)"}[engine]
        raise EngineUnavailable("--engine {} needs {}, which could not be imported ({}): install it, or choose "
                                "the other engine".format(engine, package, error)) from None


def check_precision(engine, precision):
    if precision not in PRECISIONS:
        raise ValueError("unknown precision {!r}: choose one of {}".format(precision, ", ".join(PRECISIONS)))
    supported = load(engine).PRECISIONS
    if precision not in supported:
        raise ValueError("--precision {} is not available with --engine {} (it offers {})".format(
            precision, engine, ", ".join(supported)))


def study(engine, spec, checkpoint, config, precision="float32", device=None):
    check_precision(engine, precision)
    return load(engine).study(spec, checkpoint, config, precision=precision, device=device)


def classifier(engine, spec, checkpoint, device=None):
    return load(engine).classifier(spec, checkpoint, device=device)


def attack_model(engine, spec, checkpoint, precision="float32", device=None):
    check_precision(engine, precision)
    return load(engine).attack_model(spec, checkpoint, precision=precision, device=device)


def per_channel(engine, metric, reference, perturbed, **options):
    """One metric for every channel of two (N, C, H, W) arrays → (N, C) float64, by ``engine``'s kernels."""
    return load(engine).per_channel(metric, reference, perturbed, **options)


def describe(engine, precision="float32", device=None):
    """What the manifest records about how the numbers were computed: engine, version, device, precision."""
    return dict(load(engine).describe(device), engine=engine, precision=precision)


def add_arguments(parser, precision=True):
    """``--engine``, ``--device`` and (for the attack) ``--precision``: one definition for every command."""
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                        help="what computes the models: tensorflow (the reference, tensorpack graphs) or torch "
                             "(PyTorch, held to the reference by parity tests; GPUs)")
    parser.add_argument("--device", default=None,
                        help="torch engine: cpu, cuda, cuda:1, … (default: the first GPU if any, else the CPU); "
                             "the TensorFlow engine places ops itself")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                            help="arithmetic of the attack loop: float32 with TF32 off (default), tf32, or bf16 "
                                 "(torch engine); the tapped forward pass and the metrics stay float32/float64")
