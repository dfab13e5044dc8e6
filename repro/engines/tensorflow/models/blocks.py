"""tensorpack building blocks of the ImageNet ResNet/ResNeXt family and the non-local denoising block.

The variable scopes and layer names below *are* the checkpoint format: they reproduce the names and
shapes of the released tensorpack checkpoints (`checkpoint_manifest.json`). Graph-building only: no
session, no file I/O.
"""
import math

from repro.engines.tensorflow.tfcompat import tf  # before tensorpack: TensorFlow's environment and native-log filter
from tensorpack.models import BatchNorm, BNReLU, Conv2D, FullyConnected, GlobalAvgPooling, MaxPooling
from tensorpack.tfutils.argscope import argscope



def batch_norm(x, name=None):
    """BatchNorm as the activation of a convolution, scoped ``bn`` (variables gamma, beta, mean/EMA,
    variance/EMA). Whether it uses batch or moving statistics is decided by the tensorpack
    TowerContext; the study always builds in inference mode (SPEC §1, epsilon 1e-5)."""
    return BatchNorm("bn", x)


def residual_batch_norm(x, name=None):
    """The last BatchNorm of a residual branch, γ initialised to 0 so every branch starts as the
    identity — ImageNet in 1 Hour (Goyal et al.), Sec. 5.1. Only matters when training from scratch
    (the dot-product non-local branch, cubic in x, overflows at initialisation otherwise)."""
    return BatchNorm("bn", x, gamma_initializer=tf.zeros_initializer())


def shortcut(x, channels_out, stride):
    """Identity, or a strided 1×1 projection + BN when the channel count changes ("option B" of He et
    al., Deep Residual Learning, Sec. 3.3)."""
    channels_in = x.shape.as_list()[1]
    if channels_in == channels_out:
        return x
    return Conv2D("convshortcut", x, channels_out, 1, strides=stride, activation=batch_norm)


def bottleneck(x, channels, stride, groups=1, width_per_group=64):
    """Residual bottleneck block; its output op is named ``block_output`` (SPEC §4 taps it).

    ``groups``/``width_per_group`` give ResNeXt (Xie et al., Aggregated Residual Transformations, Sec. 3.3):
    the inner width is ``channels * groups * width_per_group / 64``, so 1×64d is the plain ResNet and
    32×8d is the ResNeXt-101 of the CAAD 2018 entry. The output always has ``4 * channels`` channels.
    """
    inner = channels * groups * width_per_group // 64
    residual = Conv2D("conv1", x, inner, 1, strides=1, activation=BNReLU)
    # ImageNet in 1 Hour (Goyal et al.), Sec. 5.1: the stride-2 convolution is the 3×3, not the 1×1.
    residual = Conv2D("conv2", residual, inner, 3, strides=stride, activation=BNReLU, split=groups)
    residual = Conv2D("conv3", residual, channels * 4, 1, activation=residual_batch_norm)
    total = residual + shortcut(x, channels * 4, stride)
    return tf.nn.relu(total, name="block_output")


def power_of_two(value):
    return math.frexp(value)[0] == 0.5


def non_local_means(x, embed, softmax):
    """Non-local means over all spatial positions, y_i = 1/C(x) Σ_j f(x_i, x_j) · x_j.

    Feature Denoising (Xie et al. 2019), Sec. 4 and Fig. 5:
    - Gaussian (``softmax=True``): f = exp(θ(x_i)ᵀφ(x_j) / √d), C = Σ_j f — a softmax over j; with
      ``embed`` θ and φ are 1×1 convolutions to half the channels, d is their channel count.
    - Dot product (``softmax=False``, no embedding): f = x_iᵀx_j, C = H·W.
    The dot-product sum is evaluated in whichever order is cheaper (HW×HW affinity when C > HW,
    else C×C); both orders give the same result.
    """
    channels, height, width = x.shape.as_list()[1:]
    positions = height * width
    if embed:
        theta = Conv2D("embedding_theta", x, channels // 2, 1, strides=1,
                       kernel_initializer=tf.random_normal_initializer(stddev=0.01))
        phi = Conv2D("embedding_phi", x, channels // 2, 1, strides=1,
                     kernel_initializer=tf.random_normal_initializer(stddev=0.01))
    else:
        theta, phi = x, x
    values = x
    theta_flat = tf.reshape(theta, [-1, theta.shape.as_list()[1], positions])
    phi_flat = tf.reshape(phi, [-1, phi.shape.as_list()[1], positions])
    values_flat = tf.reshape(values, [-1, channels, positions])
    if softmax or channels > positions:
        root = math.sqrt(theta.shape.as_list()[1])
        scale_theta = softmax and embed and power_of_two(root)
        if scale_theta:
            # √d a power of two: dividing by it is exact, so dividing θ (d × HW values) gives the affinity θᵀφ/√d bit
            # for bit, where dividing the affinity (HW × HW values) and its gradient took 6% of the miniature
            # ResNetDenoise's attack. Only for an embedded θ: were θ = x, the extra op would change the order in
            # which x's gradient sums its three parts (tests/test_models.py). A Python scale keeps the dtype
            # (float32, or the attack's bfloat16/float16).
            theta_flat = theta_flat * (1.0 / root)
        affinity = tf.matmul(theta_flat, phi_flat, transpose_a=True)        # [N, HW_i, HW_j]
        if softmax:
            affinity = tf.nn.softmax(affinity if scale_theta else affinity / root, axis=-1)
        result = tf.matmul(values_flat, affinity, transpose_b=True)         # [N, C, HW_i]
    else:
        gram = tf.matmul(phi_flat, values_flat, transpose_b=True)           # [N, C, C]
        result = tf.matmul(gram, theta_flat, transpose_a=True)              # [N, C, HW_i]
    if not softmax:
        result = result / float(positions)
    return tf.reshape(result, tf.shape(x))


def denoising_block(name, x, embed, softmax):
    """Denoising block y = x + BN(conv1×1(nonlocal(x))) (Feature Denoising, Sec. 4 and Fig. 4); the sum
    is the op ``<name>/add`` that SPEC §4 offers as the "denoised" tap."""
    with tf.variable_scope(name):
        denoised = non_local_means(x, embed=embed, softmax=softmax)
        denoised = Conv2D("conv", denoised, x.shape.as_list()[1], 1, strides=1, activation=residual_batch_norm)
        return tf.add(x, denoised, name="add")


def residual_group(name, x, block_fn, channels, count, stride):
    """``count`` blocks under ``<name>/block<i>``; only the first one strides."""
    with tf.variable_scope(name):
        for index in range(count):
            with tf.variable_scope("block{}".format(index)):
                x = block_fn(x, channels, stride if index == 0 else 1)
    return x


def stem_max_pool(x):
    """3×3/2 SAME max-pooling of the stem, computed in NHWC.

    TensorFlow's CPU build has no NCHW max-pooling gradient, which the attack needs (SPEC §8); the
    transposes around the pool change no variable and no result.
    """
    x = tf.transpose(x, [0, 2, 3, 1])
    x = MaxPooling("pool0", x, pool_size=3, strides=2, padding="SAME", data_format="NHWC")
    return tf.transpose(x, [0, 3, 1, 2])


def backbone(image, arch, group_fn, block_fn):
    """Stem, four residual groups, global average pooling and the linear classifier.

    ``image`` is NCHW in [-1, 1]. ``arch`` (a ``repro.zoo.Architecture``) gives the blocks per group,
    the widths, the number of classes and the stem. Convolutions have no bias; the classifier has one.
    """
    with argscope([Conv2D, MaxPooling, GlobalAvgPooling, BatchNorm], data_format="channels_first"), \
            argscope(Conv2D, use_bias=False,
                     kernel_initializer=tf.variance_scaling_initializer(scale=2.0, mode="fan_out")):
        x = Conv2D("conv0", image, arch.stem_channels, arch.stem_kernel, strides=arch.stem_stride,
                   activation=BNReLU)
        if arch.stem_pool:
            x = stem_max_pool(x)
        for index, (count, channels, stride) in enumerate(
                zip(arch.blocks_per_group, arch.group_channels, arch.group_strides)):
            x = group_fn("group{}".format(index), x, block_fn, channels, count, stride)
        x = GlobalAvgPooling("gap", x)
        # ImageNet in 1 Hour, Sec. 5.1: the classifier's weights start from N(0, 0.01²).
        return FullyConnected("linear", x, arch.num_classes,
                              kernel_initializer=tf.random_normal_initializer(stddev=0.01))
