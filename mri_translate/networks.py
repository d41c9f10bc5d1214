"""Networks of the CycleGAN: the 2.5D modified U-Net generator and the PatchGAN discriminator."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.nets import PatchDiscriminator
from torch import nn

from .contrast_prior import ContrastPrior


class ModifiedUNet(nn.Module):
    """2.5D generator: k neighbouring slices in, the same k slices translated out.

    A U-Net built from MONAI blocks. Encoder: one ``ResidualUnit`` per level (instance norm as
    :func:`channel_group_norms` computes it, LeakyReLU),
    each halving the resolution. Decoder: bilinear ``UpSample`` + convolution (``nontrainable`` mode, which
    avoids the checkerboard artefacts of transposed convolutions), concatenation with the skip connection of
    the same resolution (at the top: the input slices themselves), and a ``ResidualUnit`` to fuse; a final
    3x3 convolution and tanh give outputs in [-1, 1] like the normalised inputs.

    Args:
        k: slices per slab (input and output channels).
        channels: feature widths per level; level i works at 1 / 2 ** (i + 1) of the input size, so H and W
            must be multiples of ``2 ** len(channels)``.
        res_units: convolutions per residual unit.
    """

    def __init__(self, k: int = 3, channels=(32, 64, 128, 256), res_units: int = 2):
        super().__init__()
        self.k = k
        widths = (k, *channels)
        block = dict(spatial_dims=2, subunits=res_units, norm="INSTANCE", act=("LEAKYRELU", {"negative_slope": 0.2}))
        self.down = nn.ModuleList(ResidualUnit(in_channels=widths[i], out_channels=widths[i + 1], strides=2, **block)
                                  for i in range(len(channels)))
        stages = []
        for i in range(len(channels)):  # stage i brings level i + 1 to the resolution of widths[i] (0 = input)
            up_width = max(widths[i], 16)
            up = UpSample(2, widths[i + 1], up_width, scale_factor=2, mode="nontrainable", interp_mode="bilinear",
                          align_corners=False)
            fuse = (Convolution(2, up_width + k, k, kernel_size=3, conv_only=True) if i == 0 else
                    ResidualUnit(in_channels=up_width + widths[i], out_channels=widths[i], **block))
            stages.append(_DecoderStage(up, fuse))
        self.stages = nn.ModuleList(reversed(stages))  # deepest first
        channel_group_norms(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the tanh: ``(B, k, H, W)`` for ``x`` ``(B, k, H, W)`` in [-1, 1]."""
        skips = [x]
        for level in self.down:
            skips.append(level(skips[-1]))
        y = skips.pop()
        for stage in self.stages:
            y = stage(y, skips.pop())
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: ``(B, k, H, W)`` in [-1, 1]."""
        return torch.tanh(self.logits(x))


class PriorResidualUNet(ModifiedUNet):
    """A :class:`ModifiedUNet` that learns a correction of the contrast prior's map instead of the whole image:
    ``tanh(atanh(prior(x)) + logits(x))``, with ``prior`` the brain-weighted inverted quantile map
    (:class:`~mri_translate.contrast_prior.ContrastPrior`; the input itself outside the brain). The last
    convolution starts at zero, so an untrained generator IS the prior's no-learning translation and training
    only has to learn what the map gets wrong (lesions, partial volume, texture). The map's tables are buffers:
    they travel in the generator's weights (``prior.*``) to checkpoints, ``model.pt`` and inference.

    Args:
        k, channels, res_units: as :class:`ModifiedUNet`. levels: entries of the map's quantile tables.
    """

    #: |prior| is clipped below 1 before atanh, so a prior at the background value stays finite.
    LIMIT = 0.995
    #: Edge (pixels) of the map's foreground weight: only the outermost pixel keeps the input's value.
    BASE_EDGE = 1

    def __init__(self, k: int = 3, channels=(32, 64, 128, 256), res_units: int = 2, levels: int = 256):
        super().__init__(k, channels, res_units)
        ramp = torch.linspace(-1, 1, levels)  # until set_prior: the plain inversion inside the brain
        self.prior = ContrastPrior(ramp, ramp, self.BASE_EDGE)
        last = self.stages[-1].fuse.conv
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def set_prior(self, prior: ContrastPrior) -> None:
        """Take the tables of a prior built from the training domains. The map is applied over the whole
        foreground (an edge of :data:`BASE_EDGE` pixels), not only inside the prior loss's brain region: on a
        skull-stripped scan the outer rim is cortex, and on a whole-head scan the correction learns the scalp."""
        self.prior = ContrastPrior(prior.source, prior.target, self.BASE_EDGE).to(self.prior.source.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: ``(B, k, H, W)`` in [-1, 1]; the prior's map where the
        correction is zero."""
        base = self.prior(x).float().clamp(-self.LIMIT, self.LIMIT)
        return torch.tanh(torch.atanh(base) + self.logits(x))


#: below this many pixels per map PyTorch's CPU group norm on a channels_last tensor takes its per-group path, which
#: is unvectorised when a group is one channel (:class:`ChannelNorm`)
SMALL_MAP_PIXELS = 1024


class ChannelNorm(nn.GroupNorm):
    """Instance norm as a group norm of one group per ``num_channels`` channel, no affine: each item's channels
    normalised over H and W, ``channels_last`` kept. PyTorch's CPU kernel for a ``channels_last`` map of fewer than
    :data:`SMALL_MAP_PIXELS` pixels loops over each channel's pixels one strided element at a time when a group is
    one channel, 15x slower than its contiguous kernel on (8, 64, 26, 30) bf16 here, so such a map is normalised in a
    contiguous copy and returned ``channels_last``. TorchScript-able (the bundle's ``ckpt_export``)."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(num_channels, num_channels, eps, affine=False)
        self.small_map_pixels = SMALL_MAP_PIXELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, H, W)``; returns its instance norm in x's layout."""
        if (x.device.type == "cpu" and x.dim() == 4 and x.shape[2] * x.shape[3] < self.small_map_pixels
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            normed = nn.functional.group_norm(x.contiguous(), self.num_groups, None, None, self.eps)
            return normed.contiguous(memory_format=torch.channels_last)
        return nn.functional.group_norm(x, self.num_groups, None, None, self.eps)


def channel_group_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every parameter-free instance norm of ``module`` (``InstanceNorm2d``, no affine, no
    running statistics) with a :class:`ChannelNorm`: the same function (each item's channels normalised over H and
    W), the same state dict (neither has parameters or buffers), but a kernel that keeps ``channels_last`` tensors
    in that layout, where PyTorch's instance norm reshapes to ``(1, B * C, H, W)`` and copies twice per layer. On
    this project's CPU the shipped generator's bf16 pass over 8 slabs of 256 px took 0.43 s before and 0.17 s after
    (one thread), and ``convert``'s network stage 14.5 s and 12.3 s on two cores (docs/benchmarks.md); in fp32 the
    outputs agree to float rounding (1e-6)."""
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d) and not child.affine and not child.track_running_stats:
            setattr(module, name, ChannelNorm(child.num_features, child.eps))
        else:
            channel_group_norms(child)
    return module


class _DecoderStage(nn.Module):
    """Upsample, concatenate the skip connection, fuse."""

    def __init__(self, up: nn.Module, fuse: nn.Module):
        super().__init__()
        self.up, self.fuse = up, fuse

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(y), skip], dim=1))


class PatchGAN(nn.Module):
    """70x70 PatchGAN (3 layers): one real/fake score per overlapping patch, no final activation.

    Wraps MONAI's ``PatchDiscriminator`` (instance norm) and returns only its last output.
    """

    def __init__(self, k: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=k, out_channels=1,
                                      num_layers_d=layers, norm="INSTANCE")
        channel_group_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: patch scores ``(B, 1, H', W')``."""
        return self.net(x)[-1]


def build_generator(model) -> ModifiedUNet:
    """One generator from a :class:`~mri_translate.config.ModelConfig`: a :class:`PriorResidualUNet` when
    ``model.prior_residual``, else a :class:`ModifiedUNet`."""
    kind = PriorResidualUNet if model.prior_residual else ModifiedUNet
    return kind(model.k, model.channels, model.res_units)


def build_networks(model) -> dict[str, nn.Module]:
    """The four networks of a CycleGAN from a :class:`~mri_translate.config.ModelConfig`.

    Names follow the paper: ``G_AB`` translates A (T1w) to B (T2w), ``G_BA`` back; ``D_A`` judges domain A
    and ``D_B`` domain B.
    """
    return {
        "G_AB": build_generator(model),
        "G_BA": build_generator(model),
        "D_A": PatchGAN(model.k, model.disc_channels, model.disc_layers),
        "D_B": PatchGAN(model.k, model.disc_channels, model.disc_layers),
    }
