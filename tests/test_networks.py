"""Tests of mri_translate.networks: the 2.5D generator (k slices in, k out, tanh range), the PatchGAN
discriminator's patch grid, the four CycleGAN networks and the size of the default generator."""

import pytest
import torch

from mri_translate.config import ModelConfig
from mri_translate.contrast_prior import ContrastPrior
from mri_translate.networks import (ChannelNorm, ModifiedUNet, PatchGAN, PriorResidualUNet, build_generator,
                                   build_networks)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_generator_maps_k_slices_to_k_slices_within_minus_one_one(k):
    torch.manual_seed(0)
    net = ModifiedUNet(k, channels=(8, 16, 32), res_units=1)
    x = torch.randn(2, k, 32, 48) * 50  # far outside [-1, 1]: only the tanh head can keep the output bounded
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, k, 32, 48)
    assert torch.isfinite(y).all()
    assert y.abs().max() <= 1.0
    assert y.std() > 0  # not a constant map
    assert net.k == k


def test_generator_output_depends_on_every_input_slice():
    """2.5D: each output slice sees its neighbours, so the gradient w.r.t. every input channel is non-zero."""
    torch.manual_seed(0)
    net = ModifiedUNet(3, channels=(8, 16), res_units=1)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    net(x)[0, 1].sum().backward()  # centre output slice
    per_channel = x.grad.abs().sum(dim=(0, 2, 3))
    assert (per_channel > 0).all()


@pytest.mark.parametrize("size, layers, expected", [(64, 2, 14), (64, 3, 6), (256, 3, 30)])
def test_patchgan_returns_one_score_per_patch(size, layers, expected):
    torch.manual_seed(0)
    net = PatchGAN(k=3, channels=8, layers=layers)
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, expected, expected)  # 256 px, 3 layers: the 30 x 30 grid of the 70x70 PatchGAN
    assert torch.isfinite(out).all()


def test_patchgan_has_no_final_activation():
    """LSGAN scores are raw: neither squashed into (0, 1) nor clipped at 0."""
    torch.manual_seed(0)
    net = PatchGAN(k=1, channels=8, layers=2)
    with torch.no_grad():
        out = net(torch.randn(4, 1, 64, 64) * 3)
    assert out.min() < 0


def test_build_networks_names_and_kinds():
    nets = build_networks(ModelConfig(k=5, channels=(8, 16), res_units=1, disc_channels=8, disc_layers=2))
    assert set(nets) == {"G_AB", "G_BA", "D_A", "D_B"}
    assert isinstance(nets["G_AB"], ModifiedUNet) and isinstance(nets["G_BA"], ModifiedUNet)
    assert isinstance(nets["D_A"], PatchGAN) and isinstance(nets["D_B"], PatchGAN)
    assert nets["G_AB"] is not nets["G_BA"] and nets["D_A"] is not nets["D_B"]
    # no shared parameters between the two generators or the two discriminators
    assert not {id(p) for p in nets["G_AB"].parameters()} & {id(p) for p in nets["G_BA"].parameters()}
    assert not {id(p) for p in nets["D_A"].parameters()} & {id(p) for p in nets["D_B"].parameters()}
    x = torch.zeros(1, 5, 32, 32)
    with torch.no_grad():
        assert nets["G_AB"](x).shape == (1, 5, 32, 32)
        assert nets["D_B"](x).shape[:2] == (1, 1)


def test_default_generator_size():
    config = ModelConfig()
    assert tuple(config.channels) == (32, 64, 128, 256) and config.res_units == 2
    count = sum(p.numel() for p in ModifiedUNet(config.k, config.channels, config.res_units).parameters())
    assert 1e6 < count < 3e6


def test_prior_residual_generator_starts_as_the_prior_and_carries_its_map():
    """Untrained, the residual generator's output IS the prior's map (its last convolution starts at zero);
    the map's tables and edge are buffers, so a generator rebuilt from the configuration and loaded from the
    state dict translates identically; it still learns (gradients reach the last convolution)."""
    torch.manual_seed(0)
    model = ModelConfig(k=3, channels=(8, 16), res_units=1, prior_residual=True)
    net = build_generator(model)
    assert isinstance(net, PriorResidualUNet)
    assert not isinstance(build_generator(ModelConfig(channels=(8, 16))), PriorResidualUNet)
    prior = ContrastPrior(torch.linspace(-0.7, 1.0, 256), torch.linspace(-0.9, 0.6, 256), edge=6)
    net.set_prior(prior)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x[:, :, :6] = -1.0  # background
    whole = ContrastPrior(prior.source, prior.target, edge=PriorResidualUNet.BASE_EDGE)  # over all the foreground
    expected = whole(x).clamp(-PriorResidualUNet.LIMIT, PriorResidualUNet.LIMIT)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-6)
    rebuilt = build_generator(model)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.prior.edge == PriorResidualUNet.BASE_EDGE == 1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)
    net(x).mean().backward()
    assert net.stages[-1].fuse.conv.weight.grad.abs().sum() > 0


def instance_norm_twin(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` with every one-group-per-channel group norm turned back into the instance norm that MONAI
    builds (``InstanceNorm2d``, no affine, no running statistics)."""
    import copy

    twin = copy.deepcopy(net)
    for module in list(twin.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm) and child.num_groups == child.num_channels:
                setattr(module, name, torch.nn.InstanceNorm2d(child.num_channels, child.eps))
    return twin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(26, 30), (40, 40)])  # below and above PyTorch's 1024-pixel switch
def test_channel_norm_is_an_instance_norm_in_either_layout(size, dtype):
    """ChannelNorm normalises each item's channels over H and W whatever the layout and map size (a small
    channels_last map goes through a contiguous copy) and gives a channels_last input back channels_last."""
    torch.manual_seed(0)
    x = (torch.randn(2, 64, *size) * 3 + 1).to(dtype)
    norm = ChannelNorm(64)
    expected = torch.nn.functional.instance_norm(x.float(), eps=norm.eps)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = norm(x.contiguous(memory_format=layout))
        assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
        torch.testing.assert_close(out.float(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 3e-2)


@pytest.mark.parametrize("make", [lambda: ModifiedUNet(3, channels=(8, 16, 32), res_units=2), lambda: PatchGAN(3, 16)])
def test_norms_are_instance_norms_that_keep_channels_last(make):
    """The generator and discriminator normalise each item's channels over H and W like MONAI's instance norm,
    with no parameters of their own (0.5.0's model files load unchanged), give the same numbers in fp32, and keep
    a channels_last input in that layout through every norm."""
    torch.manual_seed(0)
    net = make().eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, ChannelNorm) and m.num_groups == m.num_channels and not m.affine
                         for m in norms)
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())
    twin = instance_norm_twin(net)
    assert twin.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(2, 3, 64, 64) * 0.5
    layouts = []
    for m in norms:
        m.register_forward_hook(lambda _, __, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        assert (net(x) - twin(x)).abs().max() < 1e-5
        net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert len(layouts) == 2 * len(norms) and all(layouts[len(norms):])
