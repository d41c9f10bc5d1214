"""Tests of mri_translate.contrast_prior: the inverted quantile map between two domains' foreground
intensities, its use as a fading L1 pull on the generators, and its schedule."""

import pytest
import torch

from mri_translate.config import RunConfig
from mri_translate.contrast_prior import FOREGROUND, ContrastPrior, foreground_quantiles
from mri_translate.cyclegan import CycleGANLoss, ImagePool, cyclegan_step
from mri_translate.engine import CycleGANTrainer, Plan

from test_cyclegan import batches, tiny_setup

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_inverted_quantile_map_reverses_the_tissue_order_and_keeps_the_background():
    prior = ContrastPrior(torch.linspace(-0.5, 1.0, 101), torch.linspace(-0.6, 0.8, 101))
    x = torch.tensor([-1.0, -0.9, -0.5, 0.25, 1.0, 0.1])
    y = prior(x)
    assert torch.equal(y[:2], x[:2])                             # background untouched
    assert y[2:5].tolist() == pytest.approx([0.8, 0.1, -0.6], abs=1e-5)  # darkest -> brightest, median -> median
    assert y[5] > y[3]                                          # darker in, brighter out
    assert float(prior(torch.tensor([5.0]))) == pytest.approx(-0.6)  # beyond the table: its end


def test_prior_keeps_shape_device_dtype_and_carries_no_gradient():
    prior = ContrastPrior(torch.linspace(-0.5, 1.0, 11), torch.linspace(-0.6, 0.8, 11))
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_()
    y = prior(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert not y.requires_grad


def test_quantiles_come_from_the_foreground_only():
    slabs = torch.full((4, 3, 16, 16), -1.0)
    slabs[..., 4:12, 4:12] = torch.linspace(0.0, 1.0, 64).reshape(8, 8)
    q = foreground_quantiles(slabs, levels=5)
    assert q.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="no foreground"):
        foreground_quantiles(torch.full((1, 1, 4, 4), FOREGROUND - 0.1))


def test_between_maps_one_domain_onto_the_other_s_distribution():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(20, 3, 16, 16, generator=gen) * 1.5 - 0.5
    b = torch.rand(20, 3, 16, 16, generator=gen) ** 2 * 1.4 - 0.6
    mapped = ContrastPrior.between(a, b)(a)
    # the mapped A has B's quantiles, in reverse order of A's
    assert torch.quantile(mapped.flatten(), torch.tensor([0.1, 0.5, 0.9])).tolist() == pytest.approx(
        torch.quantile(b.flatten(), torch.tensor([0.1, 0.5, 0.9])).tolist(), abs=0.02)
    assert torch.corrcoef(torch.stack([a.flatten(), mapped.flatten()]))[0, 1] < -0.9


def test_prior_term_enters_the_generator_loss():
    nets, optimizers = tiny_setup()
    real_a, real_b = batches()
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
