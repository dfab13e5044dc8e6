"""The three networks of the study, each a few lines composing the shared blocks.

Every builder maps an NCHW image in [-1, 1] to logits and must be called inside a tensorpack
TowerContext (``repro.engines.tensorflow.models.build_logits`` sets one up in inference mode).
"""
import functools

from repro.engines.tensorflow.models.blocks import backbone, bottleneck, denoising_block, residual_group


def resnet(image, arch):
    """Baseline ResNet (He et al. 2016) with bottleneck blocks; ResNet-152 in the ImageNet zoo."""
    return backbone(image, arch, residual_group, bottleneck)


def resnet_denoise(image, arch):
    """ResNet with one Gaussian (softmax, embedded) denoising block after each residual group.

    Feature Denoising (Xie et al. 2019), Sec. 6: "we add 4 denoising blocks to a ResNet: each is added
    after the last residual block of res2, res3, res4, and res5, respectively."
    """
    def group_then_denoise(name, x, *args):
        x = residual_group(name, x, *args)
        return denoising_block(name + "_denoise", x, embed=True, softmax=True)

    return backbone(image, arch, group_then_denoise, bottleneck)


def resnext_denoise_all(image, arch):
    """ResNeXt 32×8d with a dot-product denoising block after every residual block.

    Feature Denoising, Sec. 6.2: the CAAD 2018 winner was "based on our method by using a
    ResNeXt101-32×8 backbone with non-local denoising blocks added to all residual blocks".
    The block's ``block_output`` is the bottleneck's output, before the denoising (``non_local/add``).
    """
    grouped_bottleneck = functools.partial(
        bottleneck, groups=arch.resnext_groups, width_per_group=arch.resnext_width)

    def bottleneck_then_denoise(x, channels, stride):
        x = grouped_bottleneck(x, channels, stride)
        return denoising_block("non_local", x, embed=False, softmax=False)

    return backbone(image, arch, residual_group, bottleneck_then_denoise)


BUILDERS = {
    "resnet": resnet,
    "resnet_denoise": resnet_denoise,
    "resnext_denoise_all": resnext_denoise_all,
}
