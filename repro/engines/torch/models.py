"""The zoo's three architectures in PyTorch, built from the same zoo tables and holding exactly the released
checkpoints' variables.

Every parameter and buffer is named after its tensorpack variable (``group0/block0/conv1/bn/mean/EMA`` is
``group0.block0.conv1.bn.mean_EMA``), so strict loading is a name-by-name check against the checkpoint
with the same messages as the TensorFlow engine (`repro.checkpoints.check_variables`). What TensorFlow
does implicitly is done explicitly here, because it changes numbers:
- ``SAME`` padding is asymmetric when the padding is odd (the extra row and column go after): a 7×7/2
  convolution on 224 pads 2 before and 3 after, the strided 3×3 pads 0 and 1, the stem max-pool pads 0
  and 1 with −∞;
- BatchNorm in inference mode uses the checkpoint's ``mean/EMA`` and ``variance/EMA`` with ε = 1e-5
  (SPEC §1);
- the non-local blocks evaluate their products in the same order as `repro.engines.tensorflow.models.blocks`.
Convolution weights are stored in PyTorch's (out, in/groups, kh, kw) layout; the loader converts from
tensorpack's (kh, kw, in/groups, out).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BN_EPSILON = 1e-5


def torch_key(tensorpack_name):
    """``group0/block0/conv1/bn/mean/EMA`` → ``group0.block0.conv1.bn.mean_EMA`` (a module path)."""
    return tensorpack_name.replace("/mean/EMA", "/mean_EMA").replace("/variance/EMA", "/variance_EMA").replace("/", ".")


def tensorpack_name(torch_key_):
    return torch_key_.replace(".mean_EMA", ".mean/EMA").replace(".variance_EMA", ".variance/EMA").replace(".", "/")


def same_padding(size, kernel, stride):
    """(before, after) of TensorFlow's SAME padding along one axis: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class BatchNorm(nn.Module):
    """Inference-mode BatchNorm over channels (NCHW) with tensorpack's variables."""

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean_EMA", torch.zeros(channels))
        self.register_buffer("variance_EMA", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.mean_EMA, self.variance_EMA, self.gamma, self.beta, training=False,
                            eps=BN_EPSILON)


class Conv(nn.Module):
    """tensorpack's Conv2D without bias, SAME padding, optional BatchNorm (``bn``) and ReLU after it."""

    def __init__(self, channels_in, channels_out, kernel, stride=1, groups=1, bn=True, relu=False):
        super().__init__()
        self.W = nn.Parameter(torch.empty(channels_out, channels_in // groups, kernel, kernel))
        nn.init.kaiming_normal_(self.W, mode="fan_out", nonlinearity="relu")
        self.stride, self.groups, self.relu = stride, groups, relu
        self.bn = BatchNorm(channels_out) if bn else None

    def forward(self, x):
        kernel = self.W.shape[-1]
        (top, bottom), (left, right) = (same_padding(x.shape[2], kernel, self.stride),
                                        same_padding(x.shape[3], kernel, self.stride))
        if top == bottom and left == right:
            x = F.conv2d(x, self.W, stride=self.stride, padding=(top, left), groups=self.groups)
        else:
            x = F.conv2d(F.pad(x, (left, right, top, bottom)), self.W, stride=self.stride, groups=self.groups)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


def max_pool_same(x, kernel=3, stride=2):
    """The stem's 3×3/2 SAME max-pool: padded with −∞ where TensorFlow pads."""
    (top, bottom), (left, right) = same_padding(x.shape[2], kernel, stride), same_padding(x.shape[3], kernel, stride)
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), kernel, stride)


class Bottleneck(nn.Module):
    """The residual bottleneck of `repro.engines.tensorflow.models.blocks.bottleneck` (stride on the 3×3; ResNeXt groups),
    followed (ResNeXtDenoiseAll) by its ``non_local`` denoising block, which `ZooNet` applies."""

    def __init__(self, channels_in, channels, stride, groups=1, width_per_group=64, denoise=False):
        super().__init__()
        inner = channels * groups * width_per_group // 64
        self.conv1 = Conv(channels_in, inner, 1, relu=True)
        self.conv2 = Conv(inner, inner, 3, stride=stride, groups=groups, relu=True)
        self.conv3 = Conv(inner, channels * 4, 1)
        self.convshortcut = Conv(channels_in, channels * 4, 1, stride=stride) if channels_in != channels * 4 else None
        self.non_local = Denoising(channels * 4, embed=False, softmax=False) if denoise else None

    def forward(self, x):
        """The block's output (``block_output``), before any denoising."""
        residual = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(residual + (x if self.convshortcut is None else self.convshortcut(x)))


class Denoising(nn.Module):
    """y = x + BN(conv1×1(nonlocal(x))), Feature Denoising Sec. 4; see `repro.engines.tensorflow.models.blocks.non_local_means`."""

    def __init__(self, channels, embed, softmax):
        super().__init__()
        self.softmax = softmax
        if embed:
            self.embedding_theta = Conv(channels, channels // 2, 1, bn=False)
            self.embedding_phi = Conv(channels, channels // 2, 1, bn=False)
        self.embed = embed
        self.conv = Conv(channels, channels, 1)

    def non_local(self, x):
        n, channels, height, width = x.shape
        positions = height * width
        theta, phi = (self.embedding_theta(x), self.embedding_phi(x)) if self.embed else (x, x)
        theta_flat, phi_flat = theta.reshape(n, -1, positions), phi.reshape(n, -1, positions)
        values = x.reshape(n, channels, positions)
        if self.softmax:
            # softmax_j(θ_iᵀφ_j / √d) x_j is attention with queries θ, keys φ, values x (scale 1/√d, the default),
            # one head: PyTorch's fused kernel on 4-D (N, heads, HW, d) tensors. On a GPU its memory-efficient
            # backend never holds the HW×HW affinities, but takes only inputs whose last dimension is contiguous
            # (strided ones fall back to the math path, which holds them: 0.72 GB for 8 images at 56×56 on an H200,
            # 0.03 GB with the efficient kernel for the same shapes in float32). On the CPU the inputs stay as they
            # were, so the numbers are bit for bit those of the 3-D call.
            queries, keys, values_ = (tensor.transpose(1, 2)[:, None] for tensor in (theta_flat, phi_flat, values))
            if x.is_cuda:
                queries, keys, values_ = (tensor.contiguous() for tensor in (queries, keys, values_))
            result = F.scaled_dot_product_attention(queries, keys, values_)[:, 0].transpose(1, 2)   # [N, C, HW_i]
        elif channels > positions:
            affinity = theta_flat.transpose(1, 2) @ phi_flat                      # [N, HW_i, HW_j]
            result = values @ affinity.transpose(1, 2)                           # [N, C, HW_i]
        else:
            gram = phi_flat @ values.transpose(1, 2)                             # [N, C, C]
            result = gram.transpose(1, 2) @ theta_flat                           # [N, C, HW_i]
        if not self.softmax:
            result = result / float(positions)
        return result.reshape(x.shape)

    def forward(self, x):
        return x + self.conv(self.non_local(x))


def tap_receiver(taps, on_tap, tapped):
    """What a forward pass hands each tappable tensor to: one named in ``taps`` is kept in ``tapped``, or with
    ``on_tap`` given to it at once (the study measures it and lets it go)."""
    def receive(name, value):
        if name in taps:
            if on_tap is None:
                tapped[name] = value
            else:
                on_tap(name, value)
    return receive


class ZooNet(nn.Module):
    """A zoo network: BGR model-space NCHW images in [-1, 1] → logits, and on request the tapped maps.

    ``forward(x, taps=names)`` returns ``(logits, {name: tensor})`` for tap names as in the TensorFlow
    graph: ``groupG/blockB/block_output``, ``groupG_denoise/add``, ``groupG/blockB/non_local/add``. With
    ``on_tap`` each tapped map is handed to ``on_tap(name, tensor)`` as soon as it exists instead, and only the
    logits are returned: the study measures a block and lets its map go before the next one is computed, so
    the tapped forward pass holds no more maps than a plain one.
    """

    def __init__(self, spec):
        super().__init__()
        arch = self.arch = spec.arch
        self.spec = spec
        self.conv0 = Conv(3, arch.stem_channels, arch.stem_kernel, stride=arch.stem_stride, relu=True)
        channels_in = arch.stem_channels
        denoise_all = arch.family == "resnext_denoise_all"
        for index, (count, channels, stride) in enumerate(zip(arch.blocks_per_group, arch.group_channels,
                                                              arch.group_strides)):
            group = nn.Module()
            for block in range(count):
                group.add_module("block{}".format(block), Bottleneck(
                    channels_in, channels, stride if block == 0 else 1, arch.resnext_groups, arch.resnext_width,
                    denoise=denoise_all))
                channels_in = channels * 4
            self.add_module("group{}".format(index), group)
            if arch.family == "resnet_denoise":
                self.add_module("group{}_denoise".format(index), Denoising(channels_in, embed=True, softmax=True))
        self.linear = nn.Module()
        self.linear.W = nn.Parameter(torch.randn(channels_in, arch.num_classes) * 0.01)
        self.linear.b = nn.Parameter(torch.zeros(arch.num_classes))

    def forward(self, x, taps=(), on_tap=None):
        tapped = {}
        tap = tap_receiver(taps, on_tap, tapped)
        x = self.conv0(x)
        if self.arch.stem_pool:
            x = max_pool_same(x)
        for index, count in enumerate(self.arch.blocks_per_group):
            group = getattr(self, "group{}".format(index))
            for block in range(count):
                module = getattr(group, "block{}".format(block))
                x = module(x)
                name = "group{}/block{}/".format(index, block)
                tap(name + "block_output", x)
                if module.non_local is not None:
                    x = module.non_local(x)
                    tap(name + "non_local/add", x)
            denoise = getattr(self, "group{}_denoise".format(index), None)
            if denoise is not None:
                x = denoise(x)
                tap("group{}_denoise/add".format(index), x)
        logits = torch.addmm(self.linear.b, x.mean(dim=(2, 3)), self.linear.W)
        return (logits, tapped) if taps and on_tap is None else logits

    def variables(self):
        """(tensorpack name, tensorpack shape) of every parameter and buffer, in definition order."""
        return [(tensorpack_name(key), _tensorpack_shape(key, tuple(value.shape)))
                for key, value in self.state_dict().items()]


def _tensorpack_shape(key, shape):
    if key.endswith(".W") and len(shape) == 4:
        out, inner, kh, kw = shape
        return (kh, kw, inner, out)
    return shape


def _torch_value(name, array):
    array = np.asarray(array, dtype=np.float32)
    if name.endswith("/W") and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def build(spec):
    """The network of ``spec`` (a `repro.zoo.ModelSpec`) with initial weights, in eval mode."""
    return ZooNet(spec).eval()


def restore(model, checkpoint, spec=None):
    """Load ``checkpoint`` (`repro.checkpoints.Checkpoint`) into ``model`` strictly: the architecture is
    recognised, every variable must be present with its shape and finite (the TensorFlow engine's checks
    and messages); extra keys are warned about. Returns the extra keys."""
    from repro import checkpoints
    if spec is not None:
        checkpoints.check_architecture(checkpoint, spec)
    extra = checkpoints.check_variables(checkpoint, model.variables())
    state = {torch_key(name): _torch_value(name, checkpoint.arrays[name]) for name, _ in model.variables()}
    model.load_state_dict(state, strict=True)
    return extra


class RGBInput(nn.Module):
    """Wraps a zoo network to take RGB images in [0, 1] (NCHW), the convention of PyTorch robustness
    tools: model space is BGR in [-1, 1], x_bgr = 2 · rgb[:, ::-1] − 1 (SPEC §2)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, rgb, **kwargs):
        return self.model(rgb.flip(1) * 2.0 - 1.0, **kwargs)


def load_model(name, checkpoint=None, zoo="imagenet", input="bgr", device=None, depth=None, tf32=False):
    """A zoo model with its checkpoint restored strictly, as an ``nn.Module`` in eval mode.

    ``checkpoint``: a path (default: the zoo's file, as the command-line tools find it). ``input``:
    ``"bgr"`` — NCHW BGR in [-1, 1], the released models' own input (SPEC §2) — or ``"rgb01"`` — NCHW
    RGB in [0, 1]. Raises `repro.checkpoints.CheckpointError` for a missing, damaged or mismatched file.

    ``tf32``: PyTorch runs cuDNN convolutions in TF32 on Ampere and newer GPUs by default, which changes feature
    maps by about 1e-3 relative; loading a model switches TF32 off (true float32, what the study's numbers use)
    for the whole process unless ``tf32=True`` (PyTorch's switches: ``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``).
    """
    from repro import checkpoints, cli, zoo as zoo_module
    if input not in ("bgr", "rgb01"):
        raise ValueError("input must be 'bgr' (BGR in [-1, 1]) or 'rgb01' (RGB in [0, 1]), got {!r}".format(input))
    spec = zoo_module.get_model(name, zoo, depth)
    path = cli.checkpoint_path(spec, checkpoint)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    model = build(spec)
    restore(model, checkpoints.read_checkpoint(path), spec)
    model = RGBInput(model).eval() if input == "rgb01" else model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device) if device is not None else model
