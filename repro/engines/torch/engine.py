"""The PyTorch engine: the study, the classifier and the evaluation attack on a restored `ZooNet`.

Same interface as `repro.engines.tensorflow` (see `repro.engines`): the batch's flow is the shared
`repro.protocol.StudyFlow`; here only the three computations differ — PGD steps, the tapped forward pass
with the metrics (float64 on the device), and clean logits. Float32 with TF32 off everywhere by default;
``precision='tf32'``, ``'bf16'`` or ``'fp16'`` (autocast, the loss scaled) applies to the attack loop only — its
forward and backward passes. On GPUs the kernels are deterministic unless asked otherwise (`set_determinism`).
Memory: the tapped forward pass measures each block as soon as its map exists and lets the map go
(`TorchStudy.measure`), and the metrics take float64 copies of a few channels at a time
(`repro.engines.torch.metrics.metric_values`), so a batch needs little more than a plain forward pass of it.
"""
import contextlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from repro import checkpoints
from repro.engines import loss_scale
from repro.engines.torch import metrics as torch_metrics
from repro.engines.torch.models import build, restore
from repro.protocol import CW_KAPPA, PERTURBATIONS, StudyFlow
from repro.taps import taps_for

PRECISIONS = ("float32", "tf32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
IMAGE_SCALE = 2.0 / 255


def resolve_device(device=None):
    """``device`` as a torch.device; default the first GPU where there is one, else the CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = device_unavailable(device)
    if reason:
        from repro.engines import DeviceUnavailable
        raise DeviceUnavailable(reason)
    return torch.device(device)


def device_unavailable(device, hardware=True):
    """Why ``device`` cannot run the study here, or None: a name PyTorch does not parse, a kind other than the CPU,
    CUDA GPUs and Apple's MPS, or (``hardware``) a device this machine lacks."""
    if device in (None, "auto"):
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return "unknown --device {!r}: choose cpu, cuda or cuda:N (N from 0)".format(device)
    if parsed.type not in ("cpu", "cuda", "mps"):
        return "--device {} is not supported by the study: choose cpu, cuda or cuda:N".format(device)
    if not hardware:
        return None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "--device {} asked for, but PyTorch sees no CUDA device here: use --device cpu".format(device)
        if parsed.index is not None and parsed.index >= count:
            return "--device {} asked for, but this machine has {} CUDA device(s) (cuda:0{}): choose one of them".format(
                device, count, "" if count == 1 else "…cuda:{}".format(count - 1))
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        return "--device mps asked for, but PyTorch sees no MPS device (Apple GPUs) here: use --device cpu or cuda"
    return None


def precision_unavailable(precision):
    """None: autocast runs bfloat16 and float16 on the CPU (slowly: its speed-up needs a GPU) and on GPUs."""
    return None


def set_tf32(enabled):
    """PyTorch's TF32 switches (matmuls and cuDNN convolutions); off is true float32."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def set_determinism(deterministic, device):
    """On a GPU, deterministic kernels (the same batch gives the same bits on every run: cuDNN and cuBLAS pick
    fixed algorithms, atomics-based backward kernels are replaced), or PyTorch's fastest ones. cuBLAS needs its
    workspace fixed before its first use (CUBLAS_WORKSPACE_CONFIG). CPU kernels are deterministic either way."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic kernel warns (naming itself) instead of stopping the run; the GPU
    # check (tests/test_gpu.py) holds the same batch to the same bits.
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False


def out_of_memory(error, device=None):
    """A description of ``device``'s memory when ``error`` is PyTorch running out of it, else None."""
    text = str(error)
    if not (isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text))):
        return None
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        return "{} ({}): {:.1f} GiB free of {:.1f} GiB".format(device, torch.cuda.get_device_name(device),
                                                              free / 2 ** 30, total / 2 ** 30)
    from repro.engines import host_memory
    return "cpu: {}".format(host_memory())


def attack_loss(logits, targets, attack="targeted"):
    """The summed loss PGD descends (as `repro.engines.tensorflow.attacks.attack_loss`): cross-entropy to the
    targets, its negative for the true labels (untargeted), or the Carlini–Wagner margin (cw)."""
    if attack == "targeted":
        return F.cross_entropy(logits, targets, reduction="sum")
    if attack == "untargeted":
        return -F.cross_entropy(logits, targets, reduction="sum")
    if attack == "cw":
        mask = F.one_hot(targets, logits.shape[1]).bool()
        target_logit = logits.masked_fill(~mask, 0.0).sum(dim=1)
        best_other = logits.masked_fill(mask, -math.inf).amax(dim=1)
        return torch.clamp(best_other - target_logit, min=-CW_KAPPA).sum()
    raise ValueError("unknown attack {!r}".format(attack))


@contextlib.contextmanager
def attack_precision(precision, device):
    """The attack loop's arithmetic, around its forward and backward passes; everything outside it stays float32
    with TF32 off."""
    if precision == "tf32":
        set_tf32(True)
        try:
            yield
        finally:
            set_tf32(False)
    elif precision in AUTOCAST_DTYPES:
        with torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision]):
            yield
    else:
        yield


class RestoredNet:
    """A zoo network restored strictly from a checkpoint, on a device, without parameter gradients."""

    def __init__(self, spec, checkpoint, precision="float32", device=None, deterministic=True):
        threads = os.environ.get("REPRO_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        set_tf32(False)
        self.spec, self.precision, self.device = spec, precision, resolve_device(device)
        self.deterministic = deterministic
        set_determinism(deterministic, self.device)
        if getattr(spec, "taps", None) is not None:     # a library model (repro.external)
            from repro.engines.torch import external
            self.model, self.checkpoint = external.restore(spec)
        else:
            self.checkpoint = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) \
                else checkpoints.read_checkpoint(checkpoint)
            self.model = build(spec)
            restore(self.model, self.checkpoint, spec)
        self.model.to(self.device)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def tensor(self, array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def pgd(self, clean, adversarial, targets, steps, epsilon_pixels, step_pixels, attack="targeted"):
        """``steps`` targeted PGD steps (SPEC §3) from ``adversarial``; tensors in, (tensor, finite) out. As
        `repro.engines.tensorflow.attacks.pgd_targeted`: the gradient of the summed cross-entropy to the targets
        w.r.t. the input, adv ← clip(adv − α·sign(∇), lo, hi), lo/hi = clip(x ∓ ε, −1, 1); the start is projected
        only after the first step, and the result once more at the end (so 0 steps give the projected start). In
        float16 the loss is scaled first (`repro.engines.FP16_LOSS_SCALE`), which leaves the signs as they are.
        ``finite`` is False when a loss or gradient was NaN or infinite at any step (checked on the device, read
        once at the end): clipping would otherwise turn NaN into a bound and hide it."""
        scale = loss_scale(self.precision)
        epsilon, step = epsilon_pixels * IMAGE_SCALE, step_pixels * IMAGE_SCALE
        low, high = torch.clamp(clean - epsilon, -1.0, 1.0), torch.clamp(clean + epsilon, -1.0, 1.0)
        finite = torch.isfinite(adversarial).all()
        for _ in range(steps):
            adversarial = adversarial.detach().requires_grad_(True)
            with attack_precision(self.precision, self.device):
                logits = self.model(adversarial)
                loss = attack_loss(logits.float(), targets, attack)
                if scale is not None:
                    loss = loss * scale
                gradient, = torch.autograd.grad(loss, adversarial)
            finite = finite & torch.isfinite(loss) & torch.isfinite(gradient).all()
            adversarial = torch.minimum(torch.maximum(adversarial.detach() - step * torch.sign(gradient), low), high)
        return torch.minimum(torch.maximum(adversarial.detach(), low), high), bool(finite)

    def close(self):
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class TorchStudy(StudyFlow, RestoredNet):
    """The study of one model in PyTorch (the flow is `StudyFlow`'s)."""

    def __init__(self, spec, checkpoint, config, precision="float32", device=None, deterministic=True):
        RestoredNet.__init__(self, spec, checkpoint, precision, device, deterministic)
        self.config = config
        self.taps = taps_for(spec, config.tap)

    def clean_logits(self, clean):
        with torch.no_grad():
            return self.model(self.tensor(clean)).cpu().numpy()

    def attack_steps(self, clean, adversarial, targets, steps):
        config = self.config
        result, finite = self.pgd(self.tensor(clean), self.tensor(adversarial),
                                  torch.from_numpy(np.asarray(targets, np.int64)).to(self.device), steps,
                                  config.epsilon, config.step_size, config.attack)
        return result.cpu().numpy(), finite

    def measure(self, clean, random_noise, adversarial, feature_blocks=()):
        """The tapped forward pass of [clean; random; adversarial]: each block's metrics are computed as soon as
        its map exists (`ZooNet.forward`'s ``on_tap``), moved to the host, and the map let go — kept only for the
        ``feature_blocks`` of the figure — so memory is that of a plain forward pass plus one block's metrics."""
        config, n = self.config, len(clean)
        names = {tap.name: tap for tap in self.taps}
        values, features, clean_finite = {}, {}, []
        whole_map = [metric for metric in config.metrics if metric in torch_metrics.WHOLE_MAP]
        per_channel = [metric for metric in config.metrics if metric not in torch_metrics.WHOLE_MAP]

        def measure_block(name, maps):
            tap = names[name]
            parts = maps.split(n)
            clean_finite.append(torch.isfinite(parts[0]).flatten(1).all(dim=1))
            for perturbation, perturbed in zip(PERTURBATIONS, parts[1:]):
                computed = torch_metrics.metric_values(parts[0], perturbed, config.metrics,
                                                       data_range=config.ssim_data_range)
                for group in (per_channel, whole_map):       # one transfer per shape, not per metric
                    if group:
                        moved = torch.stack([computed[metric] for metric in group]).cpu().numpy()
                        for metric, value in zip(group, moved):
                            values[(perturbation, metric, tap.block_index)] = value
            if tap.block_index in feature_blocks:
                features[tap.block_index] = maps.cpu().numpy()

        with torch.no_grad():
            clean_t = self.tensor(clean)
            randomised = torch.clamp(clean_t + self.tensor(random_noise) * (config.epsilon * IMAGE_SCALE), -1.0, 1.0)
            logits = self.model(torch.cat([clean_t, randomised, self.tensor(adversarial)]), taps=set(names),
                                on_tap=measure_block)
            predictions = logits.argmax(dim=1).cpu().numpy()
            finite = torch.stack([torch.isfinite(logits[:n]).all(dim=1)] + clean_finite).all(dim=0)
        return {"predictions": {name: predictions[i * n:(i + 1) * n] for i, name in enumerate(("clean",) + PERTURBATIONS)},
                "values": values, "clean_finite": finite.cpu().numpy(), "features": features}


class TorchClassifier(RestoredNet):
    def predict_logits(self, images_bgr, batch_size=16):
        from repro.data import to_model_space
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images_bgr), batch_size):
                outputs.append(self.model(self.tensor(to_model_space(images_bgr[start:start + batch_size]))).cpu().numpy())
        if not outputs:
            return np.zeros((0, self.spec.arch.num_classes), np.float32)
        return np.concatenate(outputs).astype(np.float32)

    def features(self, images_bgr, names, batch_size=16):
        """{tap name: (N, C, H, W) float32} of the named taps (as `repro.engines.tensorflow.classifier_graph.Classifier.features`)."""
        from repro.data import to_model_space
        from repro.taps import taps_for
        kinds = ("block_output",) if getattr(self.spec, "taps", None) is not None else ("block_output", "denoised")
        known = {t.name for kind in kinds for t in taps_for(self.spec, kind)}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError("{} has no tensor {!r}: ask for block outputs (groupG/blockB/block_output) or, in "
                             "denoising models, denoised outputs".format(self.spec.name, unknown[0]))
        parts = []
        with torch.no_grad():
            for start in range(0, len(images_bgr), batch_size):
                _, maps = self.model(self.tensor(to_model_space(images_bgr[start:start + batch_size])), taps=set(names))
                parts.append({name: value.cpu().numpy() for name, value in maps.items()})
        return {name: np.concatenate([part[name] for part in parts]) for name in names}


class TorchAttackModel(RestoredNet):
    attack = "targeted"

    def clean_predictions(self, images_bgr):
        from repro.data import to_model_space
        with torch.no_grad():
            return self.model(self.tensor(to_model_space(images_bgr))).argmax(dim=1).cpu().numpy()

    def adversarial_predictions(self, clean, start, targets, steps, epsilon, step_size):
        adversarial, finite = self.pgd(self.tensor(clean), self.tensor(start),
                                       torch.from_numpy(np.asarray(targets, np.int64)).to(self.device), steps, epsilon,
                                       step_size, self.attack)
        with torch.no_grad():
            return self.model(adversarial).argmax(dim=1).cpu().numpy(), finite


def study(spec, checkpoint, config, precision="float32", device=None, deterministic=True):
    return TorchStudy(spec, checkpoint, config, precision, device, deterministic)


def classifier(spec, checkpoint, device=None, deterministic=True):
    return TorchClassifier(spec, checkpoint, device=device, deterministic=deterministic)


def attack_model(spec, checkpoint, precision="float32", device=None, deterministic=True, attack="targeted"):
    model = TorchAttackModel(spec, checkpoint, precision, device, deterministic)
    model.attack = attack
    return model


def per_channel(metric, reference, perturbed, **options):
    with torch.no_grad():
        values = torch_metrics.metric_values(torch.as_tensor(np.asarray(reference)), torch.as_tensor(np.asarray(perturbed)),
                                             (metric,), **options)
    return values[metric].numpy()


def describe(device=None, deterministic=True):
    device = resolve_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"framework": "torch " + torch.__version__, "device": "{} ({})".format(device, name),
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
            "threads": torch.get_num_threads(),
            "deterministic": bool(deterministic or device.type != "cuda")}
