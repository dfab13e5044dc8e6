"""The TensorFlow engine (the reference): tensorpack graphs in TF1 graph mode.

Its face is the interface `repro.engines` documents; the pieces behind it:
- ``tfcompat``: TensorFlow in graph mode (import it before tensorpack), its native logs filtered;
- ``models/``: the tensorpack blocks and the three networks (the variable names are the checkpoint format);
- ``session``: session options, TF32, the strict restore of a checkpoint into a graph;
- ``attacks``: targeted PGD and random noise as graph ops, the attack's model in ``--precision``'s dtype;
- ``taps``: the block outputs of a built graph, by op name;
- ``metrics``: the per-channel metrics as XLA-compiled graph functions;
- ``study_graph`` (`StudyGraph`), ``classifier_graph`` (`Classifier`), ``attack_graph`` (`AttackGraph`): one graph and session
  each;
- ``synthetic``: synthetic checkpoints with the real names and shapes, BatchNorm statistics calibrated in a graph.
"""
from repro.engines.tensorflow.tfcompat import tf as _tf  # first: TensorFlow's environment and native-log filter

PRECISIONS = ("float32", "tf32", "bf16", "fp16")


def precision_unavailable(precision):
    """The CPU build runs bfloat16 NCHW convolutions (grouped ones too), but float16 ones only on AVX-512
    machines and then only NHWC: float16 needs a GPU."""
    if precision == "fp16" and not _tf.config.list_physical_devices("GPU"):
        return ("--precision fp16 needs a GPU (TensorFlow has no float16 convolution on CPU); use bf16 or "
                "float32")
    return None


def device_unavailable(device, hardware=True):
    """TensorFlow places every op itself (on the first GPU where there is one): ``--device`` would be ignored, so
    it is refused rather than silently dropped."""
    if device in (None, "auto"):
        return None
    return ("--device {} applies to --engine torch: the TensorFlow engine places ops itself (on the first GPU if "
            "any); choose its GPUs with CUDA_VISIBLE_DEVICES (empty: the CPU), or use --engine torch".format(device))


def study(spec, checkpoint, config, precision="float32", device=None, deterministic=True):
    from repro.engines.tensorflow.session import set_determinism, set_tf32
    from repro.engines.tensorflow.study_graph import StudyGraph
    set_tf32(False)
    set_determinism(deterministic)
    return StudyGraph(spec, checkpoint, config, precision=precision)


def classifier(spec, checkpoint, device=None, deterministic=True):
    from repro.engines.tensorflow.classifier_graph import Classifier
    from repro.engines.tensorflow.session import set_determinism, set_tf32
    set_tf32(False)
    set_determinism(deterministic)
    return Classifier(spec, checkpoint)


def attack_model(spec, checkpoint, precision="float32", device=None, deterministic=True, attack="targeted"):
    from repro.engines.tensorflow.attack_graph import AttackGraph
    from repro.engines.tensorflow.session import set_determinism
    set_determinism(deterministic)
    return AttackGraph(spec, checkpoint, precision, attack)


def out_of_memory(error, device=None):
    """A description of the memory when ``error`` is TensorFlow running out of it (ResourceExhaustedError)."""
    if not isinstance(error, _tf.errors.ResourceExhaustedError):
        return None
    from repro.engines import host_memory
    gpus = _tf.config.list_physical_devices("GPU")
    if gpus:
        used = _tf.config.experimental.get_memory_info("GPU:0")
        return "GPU:0 ({} GPU(s)): {:.1f} GiB in use by TensorFlow, peak {:.1f} GiB".format(
            len(gpus), used["current"] / 2 ** 30, used["peak"] / 2 ** 30)
    return "cpu: " + host_memory()


def per_channel(metric, reference, perturbed, **options):
    from repro.engines.tensorflow.metrics import per_channel as graph_per_channel
    return graph_per_channel(metric, reference, perturbed, **options)


def describe(device=None, deterministic=True):
    import tensorflow
    gpus = [gpu.name for gpu in _tf.config.list_physical_devices("GPU")]
    return {"framework": "tensorflow " + tensorflow.__version__,
            "device": ", ".join(gpus) if gpus else "cpu",
            "tf32": bool(_tf.config.experimental.tensor_float_32_execution_enabled()),
            "deterministic": bool(deterministic or not gpus)}
