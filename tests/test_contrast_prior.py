"""Tests of mri_translate.contrast_prior: the inverted quantile map between two domains' foreground
intensities, its use as a fading L1 pull on the generators, and its schedule."""

import pytest
import torch

from mri_translate.config import RunConfig
from mri_translate.contrast_prior import EDGE, FOREGROUND, ContrastPrior, foreground_quantiles, weight_map
from mri_translate.cyclegan import CycleGANLoss, ImagePool, cyclegan_step
from mri_translate.engine import CycleGANTrainer, Plan

from test_cyclegan import batches, tiny_setup

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def disc_slab(size=96, radius=40, value=0.25):
    """``(1, 1, size, size)``: background -1, a disc of ``value``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius ** 2
    return torch.where(disc, torch.tensor(value), torch.tensor(-1.0))[None, None]


def test_inverted_quantile_map_reverses_the_tissue_order():
    prior = ContrastPrior(torch.linspace(-0.5, 1.0, 101), torch.linspace(-0.6, 0.8, 101))
    x = torch.tensor([-0.5, 0.25, 1.0, 0.1])
    y = prior.mapped(x)
    assert y[:3].tolist() == pytest.approx([0.8, 0.1, -0.6], abs=1e-5)  # darkest -> brightest, median -> median
    assert y[3] > y[1]                                                  # darker in, brighter out
    assert float(prior.mapped(torch.tensor([5.0]))) == pytest.approx(-0.6)  # beyond the table: its end


def test_weight_map_is_zero_outside_the_foreground_and_continuous_at_its_edge():
    x = disc_slab().expand(2, 3, 96, 96)
    w = weight_map(x)
    assert w.shape == x.shape and not w.requires_grad
    assert torch.all(w[x <= FOREGROUND] == 0)                    # nothing outside the head
    assert float(w[0, 0, 48, 48]) == 1.0                         # full weight deep inside
    step = max(float((w[..., 1:, :] - w[..., :-1, :]).abs().max()), float((w[..., 1:] - w[..., :-1]).abs().max()))
    assert step <= 1 / (2 * EDGE + 1) + 1e-6                     # no jump anywhere, the edge included
    rim = (x > FOREGROUND) & (w == 0)
    assert rim[0, 0].sum() > 2 * torch.pi * (40 - EDGE) * EDGE   # the outer rim (scalp, skull) gets nothing


def test_prior_target_and_loss_leave_skull_and_background_alone():
    prior = ContrastPrior(torch.linspace(-0.5, 1.0, 101), torch.linspace(-0.6, 0.8, 101))
    x = disc_slab(value=0.25)
    target = prior(x)
    w = weight_map(x)
    assert torch.equal(target[w == 0], x[w == 0])                      # outside the brain: the input itself
    assert float(target[0, 0, 48, 48]) == pytest.approx(0.1, abs=1e-5)  # inside: the mapped value
    output = torch.where(w > 0, prior.mapped(x), torch.rand_like(x))     # anything outside the brain
    assert float(prior.loss(output, x)) == pytest.approx(0.0, abs=1e-7)
    assert float(prior.loss(x, x)) > 0


def test_prior_loss_is_continuous_where_a_voxel_crosses_the_background_threshold():
    prior = ContrastPrior(torch.linspace(-0.8, 1.0, 101), torch.linspace(-0.8, 1.0, 101))
    x = disc_slab(value=0.5)
    output = torch.zeros_like(x)
    edge = torch.nonzero((x[0, 0] > FOREGROUND) & (weight_map(x)[0, 0] == 0))[0].tolist()
    below, above = x.clone(), x.clone()
    below[0, 0, edge[0], edge[1]], above[0, 0, edge[0], edge[1]] = -0.81, -0.79
    assert abs(float(prior.loss(output, below)) - float(prior.loss(output, above))) < 1e-3
    assert torch.equal(prior(below)[0, 0, edge[0], edge[1]], below[0, 0, edge[0], edge[1]])  # no jump to +0.93
    assert float(prior(above)[0, 0, edge[0], edge[1]]) == pytest.approx(-0.79)


def test_prior_keeps_shape_device_dtype_and_carries_no_gradient():
    prior = ContrastPrior(torch.linspace(-0.5, 1.0, 11), torch.linspace(-0.6, 0.8, 11))
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_()
    y = prior(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert not y.requires_grad


def test_quantiles_come_from_the_brain_only():
    slabs = torch.full((4, 3, 64, 64), -1.0)
    slabs[..., 8:56, 8:56] = torch.linspace(-0.5, 1.0, 48)     # a ramp across the head, its rim included
    q = foreground_quantiles(slabs, levels=5)
    inner = slabs[weight_map(slabs) > 0.5]
    assert q.tolist() == pytest.approx(torch.quantile(inner, torch.linspace(0, 1, 5)).tolist(), abs=1e-6)
    assert q[0] > -0.5 + 6 * 1.5 / 47 and q[-1] < 1.0 - 6 * 1.5 / 47  # the outer columns are left out
    small = slabs[..., 20:44, 20:44].clone()
    small[..., :4, :] = small[..., -4:, :] = -1.0                 # a head too small for the brain weight: all of it
    assert foreground_quantiles(small, levels=3).tolist() == pytest.approx(
        torch.quantile(small[small > FOREGROUND], torch.tensor([0.0, 0.5, 1.0])).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="no foreground"):
        foreground_quantiles(torch.full((1, 1, 4, 4), FOREGROUND - 0.1))


def test_between_maps_one_domain_onto_the_other_s_distribution():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(20, 3, 48, 48, generator=gen) * 1.5 - 0.5
    b = torch.rand(20, 3, 48, 48, generator=gen) ** 2 * 1.4 - 0.6
    mapped = ContrastPrior.between(a, b).mapped(a)
    # the mapped A has B's quantiles, in reverse order of A's
    assert torch.quantile(mapped.flatten(), torch.tensor([0.1, 0.5, 0.9])).tolist() == pytest.approx(
        torch.quantile(b.flatten(), torch.tensor([0.1, 0.5, 0.9])).tolist(), abs=0.02)
    assert torch.corrcoef(torch.stack([a.flatten(), mapped.flatten()]))[0, 1] < -0.9


def test_prior_term_enters_the_generator_loss():
    nets, optimizers = tiny_setup()
    real_a, real_b = (x.abs() for x in batches())  # all foreground: the prior acts everywhere but the rim
    priors = {"AB": ContrastPrior.between(real_a, real_b), "BA": ContrastPrior.between(real_b, real_a)}
    pools = {"A": ImagePool(0), "B": ImagePool(0)}
    losses = cyclegan_step(nets, optimizers, real_a, real_b, CycleGANLoss(identity=0.0), pools,
                           priors=priors, prior_weight=10.0)
    assert losses["prior_A"] > 0 and losses["prior_B"] > 0
    assert losses["G"] == pytest.approx(sum(losses[p] for p in ("G_adv_AB", "G_adv_BA", "cycle_A", "cycle_B",
                                                                "prior_A", "prior_B")), rel=1e-5)
    off = cyclegan_step(nets, optimizers, real_a, real_b, CycleGANLoss(identity=0.0), pools, priors=priors,
                        prior_weight=0.0)
    assert off["prior_A"] == off["prior_B"] == 0.0


def test_prior_weight_fades_to_zero_over_its_fraction_of_the_run():
    config = RunConfig.from_dict({"loss": {"prior": 10.0, "prior_fraction": 0.25}, "train": {"iterations": 100}})
    trainer = CycleGANTrainer.__new__(CycleGANTrainer)
    trainer.config, trainer.plan = config, Plan(config.train.iterations)
    assert trainer.prior_weight(1) == pytest.approx(10.0)
    assert trainer.prior_weight(13.5) == pytest.approx(5.0)
    assert trainer.prior_weight(26) == 0.0 and trainer.prior_weight(100) == 0.0
    config.loss.prior_fraction = 0.0
    assert trainer.prior_weight(1) == 0.0
    config.loss.prior_fraction = float("inf")  # ".inf" in a YAML preset: the weight never fades
    assert trainer.prior_weight(1) == trainer.prior_weight(100) == pytest.approx(10.0)
