"""The engines that compute the study: TensorFlow (`repro.engines.tensorflow`, the reference: tensorpack graphs)
and PyTorch (`repro.engines.torch`). Each lives in its own package, the only place that imports its framework.

Everything else — zoo, checkpoint reading and checks, data, draws, the batch flow (`repro.protocol.StudyFlow`),
work directory, tables, figures, the scheduler, the commands — is the engine-neutral core, which reaches an
engine only through this registry (`load`), so ``--engine torch`` never imports TensorFlow and the other way round
(``tests/test_engines.py`` walks the package's source to check it). An engine only builds the model and computes,
for one batch, the attack, the tapped forward pass with the metrics, and clean logits.

What an engine's package provides (its ``__init__`` is this face, nothing else):
- ``PRECISIONS`` (those of `PRECISIONS` it runs) and ``precision_unavailable(precision)`` → why this machine
  cannot run it, or None; ``device_unavailable(device, hardware=True)`` → why ``--device`` cannot be used (an
  unknown name, or with ``hardware`` a device this machine lacks), or None;
- ``study(spec, checkpoint, config, precision, device, deterministic)`` → an object with ``taps``, ``checkpoint``,
  ``run_batch``,
  ``clean_logits_of``, ``close``: a `repro.protocol.StudyFlow` subclass providing ``attack_steps``, ``measure``
  and ``clean_logits`` (see there);
- ``classifier(spec, checkpoint, device)`` → ``predict_logits(images_bgr, batch_size)``, ``features(images_bgr,
  names)``, ``close``;
- ``attack_model(spec, checkpoint, precision, device, deterministic, attack)`` → ``clean_predictions(images_bgr)``,
  ``adversarial_predictions(clean, start, targets, steps, epsilon, step_size)``, ``close`` (for `repro.robustness`);
- ``per_channel(metric, reference, perturbed, **options)``: one metric on (N, C, H, W) arrays → (N, C) float64;
- ``describe(device, deterministic)`` → what the manifest records (framework and version, device, TF32, whether
  GPU kernels are deterministic);
- ``out_of_memory(error, device)`` → a description of the device's free memory when ``error`` is the framework
  running out of memory, else None (`repro.scheduler` then retries the batch in halves);
- optionally ``load_model(...)``: the framework's own model object (torch: an ``nn.Module``);
- optionally library models (`repro.external`; torch): ``external_spec(source, model, weights, taps, input_size,
  mean, std)`` → an `repro.external.ExternalSpec`, ``weights_for(spec)`` → its weights checked against the
  architecture (``.sha256``), ``tap_lines(source, model, size)`` → what ``--list-taps`` prints. ``study``,
  ``classifier`` and ``attack_model`` then take such a spec (its weights are named by it).
``checkpoint`` is a path or a `repro.checkpoints.Checkpoint` (already read and checked); ``spec`` a `repro.zoo`
entry. Restoring must be strict: `repro.checkpoints.check_variables` with the model's (name, shape) list.

Adding an engine: a package ``repro/engines/<name>/`` with that face, its name in `ENGINES` and `_MODULES` below
(and what to install in `load`'s message), and the parity tests of ``tests/test_torch.py`` run against it:
the same variables as the checkpoint manifest, logits and taps, one PGD step, the metrics and a miniature study
equal to the TensorFlow engine's within their tolerances.
"""
import importlib
import sys

ENGINES = ("tensorflow", "torch")
DEFAULT_ENGINE = "tensorflow"
PRECISIONS = ("float32", "tf32", "bf16", "fp16")
"""Arithmetic of the attack loop: float32 with TF32 off (the default, everywhere), TF32 matmuls and
convolutions (Ampere and newer GPUs), bfloat16, or float16 with a constant loss scale (`FP16_LOSS_SCALE`;
TensorFlow engine: GPUs only). The tapped forward pass stays float32 with TF32 off, the clean predictions
float32 and the metrics float64 whatever is chosen."""

FP16_LOSS_SCALE = 2.0 ** 10
"""The float16 attack's loss is multiplied by this before its input gradient is taken; a positive factor leaves
the sign step as it is. Chosen from the miniature models' float32 gradients: unscaled, 2–7% of the input
gradient's entries lie below float16's smallest normal number 2⁻¹⁴, and up to 10% of the nonzero gradients of
inner tensors (ResNeXtDenoiseAll) below its smallest subnormal 2⁻²⁴, which flushes them to zero; scaled by 2¹⁰,
≤ 0.01% and ≤ 0.3% (by the original code's 128: 0.05% and 0.9%). No tensor's gradient exceeds ~1.1 (the
logits' gradient, softmax − one-hot, is at most 1), so ×2¹⁰ stays 2⁶ below float16's largest number 65504.
bfloat16 has float32's exponent range and needs no scale."""


def loss_scale(precision):
    """The factor on the attack's loss for ``precision``: `FP16_LOSS_SCALE` for fp16, else None (no scaling)."""
    return FP16_LOSS_SCALE if precision == "fp16" else None


_MODULES = {"tensorflow": "repro.engines.tensorflow", "torch": "repro.engines.torch"}


class EngineUnavailable(RuntimeError):
    """The engine's framework is not installed here; the message says which and what to do."""


class DeviceUnavailable(ValueError):
    """``--device`` names a device the engine does not know, or this machine lacks; the message says what to
    choose instead."""


class PrecisionUnavailable(ValueError):
    """``--precision`` names arithmetic the engine, or this machine, does not offer; the message says what to
    choose instead."""


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


def check_precision(engine, precision, *, this_machine=True):
    """Refuse, in one line and before any work, a precision that ``engine`` lacks or this machine cannot run.

    this_machine=False (a Ray cluster elsewhere computes): only what the engine offers is checked here; whether
    the machines can run it is checked by each worker when it builds its graph (`study`, below)."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailable("unknown precision {!r}: choose one of {}".format(precision, ", ".join(PRECISIONS)))
    module = load(engine)
    if precision not in module.PRECISIONS:
        raise PrecisionUnavailable("--precision {} is not available with --engine {} (it offers {})".format(
            precision, engine, ", ".join(module.PRECISIONS)))
    reason = module.precision_unavailable(precision) if this_machine else None
    if reason:
        raise PrecisionUnavailable(reason)


def check_device(engine, device, *, this_machine=True):
    """Refuse, in one line and before any work, a ``--device`` that ``engine`` does not know or (``this_machine``)
    this machine lacks. A Ray cluster elsewhere (this_machine=False) is checked by its workers."""
    reason = load(engine).device_unavailable(device, hardware=this_machine)
    if reason:
        raise DeviceUnavailable(reason)


def study(engine, spec, checkpoint, config, precision="float32", device=None, deterministic=True):
    check_precision(engine, precision)
    check_device(engine, device)
    return load(engine).study(spec, checkpoint, config, precision=precision, device=device,
                              deterministic=deterministic)


def classifier(engine, spec, checkpoint, device=None, deterministic=True):
    check_device(engine, device)
    return load(engine).classifier(spec, checkpoint, device=device, deterministic=deterministic)


def attack_model(engine, spec, checkpoint, precision="float32", device=None, deterministic=True, attack="targeted"):
    check_precision(engine, precision)
    check_device(engine, device)
    return load(engine).attack_model(spec, checkpoint, precision=precision, device=device,
                                     deterministic=deterministic, attack=attack)


def out_of_memory(engine, error, device=None):
    """A description of the device's free memory when ``error`` is ``engine``'s framework running out of memory
    (torch's OutOfMemoryError, TensorFlow's ResourceExhaustedError, an allocation that failed on the host), else
    None. Imports no framework that is not loaded yet: an engine never used cannot have raised."""
    if _MODULES[engine] not in sys.modules:
        return None
    return load(engine).out_of_memory(error, device)


def per_channel(engine, metric, reference, perturbed, **options):
    """One metric for every channel of two (N, C, H, W) arrays → (N, C) float64, by ``engine``'s kernels."""
    return load(engine).per_channel(metric, reference, perturbed, **options)


def host_memory():
    """The host's available and total memory, from /proc/meminfo (Linux), for out-of-memory messages."""
    try:
        with open("/proc/meminfo") as stream:
            fields = dict(line.split(":", 1) for line in stream)
        return "{:.1f} GiB available of {:.1f} GiB".format(int(fields["MemAvailable"].split()[0]) / 2 ** 20,
                                                           int(fields["MemTotal"].split()[0]) / 2 ** 20)
    except (OSError, KeyError, ValueError):
        return "free memory unknown"


def describe(engine, precision="float32", device=None, deterministic=True):
    """What the manifest records about how the numbers were computed: engine, version, device, precision, and
    whether GPU kernels were deterministic."""
    return dict(load(engine).describe(device, deterministic=deterministic), engine=engine, precision=precision)


def add_arguments(parser, precision=True, engine_default=DEFAULT_ENGINE):
    """``--engine``, ``--device`` and (for the attack) ``--precision``: one definition for every command.
    ``engine_default=None``: the command chooses after parsing (torch for library models, `repro.external`)."""
    parser.add_argument("--engine", choices=ENGINES, default=engine_default,
                        help="what computes the models: tensorflow (the reference, tensorpack graphs) or torch "
                             "(PyTorch, held to the reference by parity tests; GPUs){}".format(
                                 "" if engine_default else "; default: tensorflow, torch for library models"))
    parser.add_argument("--device", default=None,
                        help="torch engine: cpu, cuda, cuda:1, … (default: the first GPU if any, else the CPU); "
                             "the TensorFlow engine places ops itself (CUDA_VISIBLE_DEVICES chooses its GPUs) and "
                             "refuses --device")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="allow PyTorch's and TensorFlow's fastest GPU kernels, some of which are not deterministic "
                             "(re-runs then agree to round-off, not bit for bit); the default is deterministic kernels")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                            help="arithmetic of the attack loop, for speed on GPUs: float32 with TF32 off "
                                 "(default), tf32, bf16, or fp16 with a constant loss scale (TensorFlow engine: GPUs "
                                 "only); the tapped forward pass, clean predictions and metrics stay float32/float64")
