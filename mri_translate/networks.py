"""Networks of the CycleGAN: the 2.5D modified U-Net generator and the PatchGAN discriminator."""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn


class ModifiedUNet(nn.Module):
    """2.5D generator: k neighbouring slices in, the same k slices translated out.

    A MONAI ``UNet`` (residual units, instance norm, LeakyReLU, strided convolutions down, transposed up,
    skip connections by concatenation) with a tanh head, so outputs live in [-1, 1] like the
    normalised inputs.

    Args:
        k: slices per slab (input and output channels).
        channels: feature widths per level; each level halves the resolution, so H and W must be
            multiples of ``2 ** (len(channels) - 1)``.
        res_units: residual units per block.
    """

    def __init__(self, k: int = 3, channels=(32, 64, 128, 256), res_units: int = 2):
        super().__init__()
        self.k = k
        self.unet = UNet(spatial_dims=2, in_channels=k, out_channels=k, channels=tuple(channels),
                         strides=(2,) * (len(channels) - 1), num_res_units=res_units, norm="INSTANCE",
                         act=("LEAKYRELU", {"negative_slope": 0.2}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: ``(B, k, H, W)`` in [-1, 1]."""
        return torch.tanh(self.unet(x))


class PatchGAN(nn.Module):
    """70x70 PatchGAN (3 layers): one real/fake score per overlapping patch, no final activation.

    Wraps MONAI's ``PatchDiscriminator`` (instance norm) and returns only its last output.
    """

    def __init__(self, k: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=k, out_channels=1,
                                      num_layers_d=layers, norm="INSTANCE")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(B, k, H, W)`` in [-1, 1]. Returns: patch scores ``(B, 1, H', W')``."""
        return self.net(x)[-1]


def build_networks(model) -> dict[str, nn.Module]:
    """The four networks of a CycleGAN from a :class:`~mri_translate.config.ModelConfig`.

    Names follow the paper: ``G_AB`` translates A (T1w) to B (T2w), ``G_BA`` back; ``D_A`` judges domain A
    and ``D_B`` domain B.
    """
    return {
        "G_AB": ModifiedUNet(model.k, model.channels, model.res_units),
        "G_BA": ModifiedUNet(model.k, model.channels, model.res_units),
        "D_A": PatchGAN(model.k, model.disc_channels, model.disc_layers),
        "D_B": PatchGAN(model.k, model.disc_channels, model.disc_layers),
    }
