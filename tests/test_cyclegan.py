"""Tests of mri_translate.cyclegan: one optimisation step, the LSGAN objective, the identity weight and the
history pool of fakes."""

import copy
import math
import random

import pytest
import torch

from mri_translate.config import ModelConfig
from mri_translate.cyclegan import (CycleGANLoss, ImagePool, cyclegan_step, focus_weights, pixel_weights,
                                    set_requires_grad)
from mri_translate.networks import build_networks

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LOSS_KEYS = {"G", "G_adv_AB", "G_adv_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "prior_A", "prior_B", "paired_A", "paired_B", "D_A", "D_B"}


def tiny_setup(seed: int = 0, lr: float = 2e-4):
    torch.manual_seed(seed)
    nets = build_networks(ModelConfig(k=3, channels=(8, 16), res_units=1, disc_channels=8, disc_layers=2))
    adam = dict(lr=lr, betas=(0.5, 0.999))
    optimizers = {
        "G": torch.optim.Adam([*nets["G_AB"].parameters(), *nets["G_BA"].parameters()], **adam),
        "D": torch.optim.Adam([*nets["D_A"].parameters(), *nets["D_B"].parameters()], **adam),
    }
    return nets, optimizers


def batches(seed: int = 1, batch: int = 2, size: int = 32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1,
            torch.rand(batch, 3, size, size, generator=gen) * 2 - 1)


def test_step_returns_all_losses_and_updates_all_four_networks():
    nets, optimizers = tiny_setup()
    before = {name: copy.deepcopy(net.state_dict()) for name, net in nets.items()}
    real_a, real_b = batches()
    pools = {"A": ImagePool(50), "B": ImagePool(50)}
    losses = cyclegan_step(nets, optimizers, real_a, real_b, CycleGANLoss(identity=0.5), pools)
    assert set(losses) == LOSS_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    assert all(v >= 0 for v in losses.values())
    parts = ("G_adv_AB", "G_adv_BA", "cycle_A", "cycle_B", "idt_A", "idt_B")
    assert losses["G"] == pytest.approx(sum(losses[p] for p in parts), rel=1e-5)
    assert losses["idt_A"] > 0 and losses["idt_B"] > 0
    assert losses["prior_A"] == losses["prior_B"] == 0.0  # no contrast prior given
    for name, net in nets.items():
        changed = any(not torch.equal(before[name][key], value) for key, value in net.state_dict().items())
        assert changed, f"{name} was not updated"
    # discriminators are trainable again after the step; the fakes went into the pools
    assert all(p.requires_grad for net in nets.values() for p in net.parameters())
    assert len(pools["A"].images) == len(pools["B"].images) == 2


def test_identity_zero_switches_the_identity_terms_off():
    nets, optimizers = tiny_setup()
    real_a, real_b = batches()
    loss = CycleGANLoss(lambda_cycle=10.0, identity=0.0)
    assert loss.lambda_identity == 0
    losses = cyclegan_step(nets, optimizers, real_a, real_b, loss, {"A": ImagePool(0), "B": ImagePool(0)})
    assert losses["idt_A"] == 0.0 and losses["idt_B"] == 0.0
    assert losses["G"] == pytest.approx(losses["G_adv_AB"] + losses["G_adv_BA"] + losses["cycle_A"]
                                        + losses["cycle_B"], rel=1e-5)


def test_cycle_and_identity_weights():
    loss = CycleGANLoss(lambda_cycle=4.0, identity=0.25)
    assert loss.lambda_cycle == 4.0 and loss.lambda_identity == pytest.approx(1.0)


def test_loss_defaults_are_the_configuration_defaults():
    """One home for the loss weights: CycleGANLoss() weighs as LossConfig() says."""
    from mri_translate.config import LossConfig

    config, loss = LossConfig(), CycleGANLoss()
    assert loss.lambda_cycle == config.lambda_cycle
    assert loss.lambda_identity == pytest.approx(config.identity * config.lambda_cycle)
    assert loss.lambda_adversarial == config.adversarial and loss.lambda_paired == config.paired
    assert loss.paired_focus == config.paired_focus == 0 and loss.paired_region == config.paired_region == 0


def test_adversarial_weight_scales_only_the_generators_term():
    ones, half = torch.ones(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    weak = CycleGANLoss(adversarial=0.2)
    assert float(weak.generator(half)) == pytest.approx(0.2 * 0.25)
    assert float(weak.discriminator(ones, half)) == pytest.approx(float(CycleGANLoss().discriminator(ones, half)))


def test_lsgan_generator_and_discriminator_values():
    loss = CycleGANLoss()
    ones, zeros, half = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert float(loss.generator(ones)) == pytest.approx(0.0)
    assert float(loss.generator(half)) == pytest.approx(0.25)            # (0.5 - 1)^2, no activation first
    assert float(loss.generator(-ones)) == pytest.approx(4.0)            # (-1 - 1)^2: raw negative scores
    assert float(loss.discriminator(ones, zeros)) == pytest.approx(0.0)
    assert float(loss.discriminator(half, half)) == pytest.approx(0.25)  # 0.5 * (0.25 + 0.25)
    assert float(loss.discriminator(zeros, ones)) == pytest.approx(1.0)  # 0.5 * (1 + 1)


def test_set_requires_grad():
    nets, _ = tiny_setup()
    set_requires_grad([nets["D_A"]], False)
    assert not any(p.requires_grad for p in nets["D_A"].parameters())
    assert all(p.requires_grad for p in nets["D_B"].parameters())
    set_requires_grad([nets["D_A"]], True)
    assert all(p.requires_grad for p in nets["D_A"].parameters())


def test_cycle_loss_goes_down_on_a_fixed_pair_of_batches():
    """On image-like (spatially smooth) batches; white noise has no structure a U-Net could carry through."""
    nets, optimizers = tiny_setup(lr=2e-3)
    real_a, real_b = (torch.nn.functional.avg_pool2d(b, 5, 1, 2).mul(3).clamp(-1, 1) for b in batches())
    pools = {"A": ImagePool(0), "B": ImagePool(0)}
    history = [cyclegan_step(nets, optimizers, real_a, real_b, CycleGANLoss(), pools) for _ in range(20)]
    cycle = [h["cycle_A"] + h["cycle_B"] for h in history]
    assert sum(cycle[-5:]) / 5 < 0.9 * sum(cycle[:5]) / 5, cycle


# ImagePool ----------------------------------------------------------------------------------------------


def numbered(values, size=4):
    """A batch whose image i is constant ``values[i]`` (so pooled images can be identified)."""
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


def ids(batch):
    return [float(image[0, 0, 0]) for image in batch]


def test_pool_of_size_zero_passes_through():
    pool = ImagePool(0)
    batch = numbered([1, 2, 3])
    assert pool.query(batch) is batch
    assert pool.images == []


def test_pool_fills_up_to_its_size_then_returns_old_or_new_images():
    pool = ImagePool(3, random.Random(0))
    out = pool.query(numbered([1, 2]))
    assert ids(out) == [1, 2] and len(pool.images) == 2  # filling: the new images come back
    out = pool.query(numbered([3, 4]))
    assert out.shape == (2, 3, 4, 4)
    assert ids(out)[0] == 3 and len(pool.images) == 3     # 3 fills the pool; 4 is new or swapped in
    seen = set()
    for start in range(10, 60, 2):
        out = pool.query(numbered([start, start + 1]))
        assert out.shape == (2, 3, 4, 4)
        assert len(pool.images) == 3                       # never grows beyond its size
        seen.update(ids(out))
    older = {v for v in seen if v < 10}
    assert older, "a full pool never returned an older image"
    assert seen - older, "a full pool never returned the newest image"


def test_pool_is_deterministic_for_a_seeded_rng():
    def run(seed):
        pool = ImagePool(2, random.Random(seed))
        return [ids(pool.query(numbered([i, i + 100]))) for i in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_pool_never_stores_a_non_finite_fake():
    """The fake of an fp16 overflow (NaN; the grad scaler leaves its step's updates out) comes back as it is but is
    never stored, so no later discriminator step draws it from the pool."""
    pool = ImagePool(1, random.Random(0))
    overflow = torch.full((1, 3, 4, 4), float("nan"))
    assert torch.isnan(pool.query(overflow)).all() and pool.images == []
    fine = numbered([1])
    pool.query(fine)
    for _ in range(20):
        assert torch.isnan(pool.query(torch.cat([overflow, overflow]))).all()
    assert len(pool.images) == 1 and torch.equal(pool.images[0], fine)


@pytest.mark.parametrize("focus, region", [(0.0, 0.0), (4.0, 0.0), (4.0, 3.0)])
def test_the_losses_of_a_batch_of_8_are_the_mean_of_its_items_one_at_a_time(focus, region):
    """Every term is a per-item mean and the networks normalise each item on its own (instance norm), so a batch
    of 8 gives the mean of the 8 items stepped one at a time: batches train the same objective, only faster.
    Learning rate 0 and no pool keep the networks and the discriminators' inputs equal across the calls."""
    from mri_translate.contrast_prior import ContrastPrior

    real_a, real_b = batches(seed=5, batch=8)
    paired = torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 0])
    prior = ContrastPrior(torch.linspace(-1, 1, 101), torch.linspace(1, -1, 101))
    priors = {"AB": prior, "BA": prior}
    masks = (torch.rand(real_a.shape, generator=torch.Generator().manual_seed(2)) < 0.2).float()
    loss = CycleGANLoss(identity=0.5, paired_focus=focus, paired_region=region)

    def step(a, b, pairs, mask):
        nets, optimizers = tiny_setup(seed=3, lr=0.0)
        pools = {"A": ImagePool(0), "B": ImagePool(0)}
        return cyclegan_step(nets, optimizers, a, b, loss, pools, priors=priors, prior_weight=2.0, paired=pairs,
                             region=mask)

    whole = step(real_a, real_b, paired, masks)
    items = [step(real_a[i: i + 1], real_b[i: i + 1], paired[i: i + 1], masks[i: i + 1]) for i in range(8)]
    assert whole["G"] == pytest.approx(sum(v for k, v in whole.items() if k not in ("G", "D_A", "D_B")), rel=1e-5)
    for name in LOSS_KEYS - {"G", "paired_A", "paired_B"}:
        assert whole[name] == pytest.approx(sum(item[name] for item in items) / 8, rel=1e-4, abs=1e-6), name
    for name in ("paired_A", "paired_B"):  # the mean over the paired items only
        paired_items = [item[name] for item, flag in zip(items, paired) if flag]
        assert whole[name] == pytest.approx(sum(paired_items) / len(paired_items), rel=1e-4), name
        assert whole[name] > 0


def brain_slab(size: int = 48) -> torch.Tensor:
    """``(1, 1, size, size)``: a disc of value 0 (brain) on background -1, deep enough for the prior's brain weight."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2
    return torch.where(disc, 0.0, -1.0)[None, None]


def test_focus_weights_rise_where_the_inverted_map_misses_the_truth_inside_the_brain():
    from mri_translate.contrast_prior import ContrastPrior, weight_map

    prior = ContrastPrior(torch.linspace(-1, 1, 101), torch.linspace(-1, 1, 101), edge=2)  # mapped(x) == -x
    source = brain_slab()
    truth = -source
    assert torch.equal(focus_weights(prior, source, truth, 3.0), torch.ones_like(source))  # the map is right
    truth[..., 24, 24] += 0.5                            # a "lesion" at the centre, deep in the brain
    truth[..., 0, 0] += 0.5                              # and a miss on the background, outside the brain
    weights = focus_weights(prior, source, truth, 3.0)
    assert weight_map(source, 2)[..., 24, 24] == 1
    assert weights[..., 24, 24].item() == pytest.approx(1 + 3.0 * 0.5)
    assert weights[..., 0, 0].item() == 1                # the brain weight is 0 there
    assert int((weights != 1).sum()) == 1


def test_pixel_weights_add_the_region_weight_on_top_of_the_focus():
    from mri_translate.contrast_prior import ContrastPrior

    prior = ContrastPrior(torch.linspace(-1, 1, 101), torch.linspace(-1, 1, 101), edge=2)  # mapped(x) == -x
    source = brain_slab()
    truth = -source
    truth[..., 24, 24] += 0.5                            # a miss of the map, deep in the brain
    region = torch.zeros_like(source)
    region[..., 20:23, 20:23] = 1                        # a region mask beside it
    assert pixel_weights(CycleGANLoss(), prior, source, truth, region) is None  # both off: a plain mean
    assert pixel_weights(CycleGANLoss(paired_focus=3.0), None, source, truth, None) is None  # no prior, no mask
    only_region = pixel_weights(CycleGANLoss(paired_region=5.0), prior, source, truth, region)
    assert torch.equal(only_region, 1 + 5 * region)
    both = pixel_weights(CycleGANLoss(paired_focus=3.0, paired_region=5.0), prior, source, truth, region)
    assert torch.equal(both, focus_weights(prior, source, truth, 3.0) + 5 * region)
    assert both[..., 24, 24].item() == pytest.approx(1 + 3 * 0.5) and both[..., 21, 21].item() == 6


def test_supervised_focus_is_a_weighted_mean_of_each_items_error():
    loss = CycleGANLoss(paired=2.0)
    fake, real = torch.zeros(2, 1, 2, 2), torch.tensor([[[[1.0, 0], [0, 0]]], [[[0, 0], [0, 3.0]]]])
    paired = torch.tensor([1.0, 1.0])
    assert loss.supervised(fake, real, paired).item() == pytest.approx(2.0 * (0.25 + 0.75) / 2)
    assert loss.supervised(fake, real, paired, torch.ones_like(real)).item() == pytest.approx(1.0)
    focus = torch.tensor([[[[3.0, 1], [1, 1]]], [[[1, 1], [1, 1.0]]]])  # the first item's error weighs 3 of 6
    assert loss.supervised(fake, real, paired, focus).item() == pytest.approx(2.0 * (3 / 6 + 0.75) / 2)
