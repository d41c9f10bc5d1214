"""The CycleGAN objective and one optimisation step, in plain torch (no I/O, no hidden state).

Symbols as in Zhu et al. 2017: ``G_AB`` = G (A -> B), ``G_BA`` = F (B -> A), ``D_A`` = D_X, ``D_B`` = D_Y.
Least-squares adversarial loss (LSGAN), cycle L1 weighted by lambda, identity L1 weighted by
``identity * lambda``, an optional L1 pull towards a contrast prior (:mod:`~mri_translate.contrast_prior`), and
a history pool of past fakes for the discriminators.
"""

from __future__ import annotations

import contextlib
import random

import torch
import torch.distributed as dist
from monai.losses import PatchAdversarialLoss
from torch import nn

from .config import LossConfig


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): with probability 0.5 a discriminator sees an
    older fake instead of the newest one. A fake that is not finite (an fp16 overflow, whose update the grad scaler
    leaves out) is passed through but never stored. Local to a process; rank 0's is checkpointed
    (:meth:`state_dict`)."""

    def __init__(self, size: int = 50, rng: random.Random | None = None):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = rng or random.Random(0)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, k, H, W)`` (detached). Returns: a batch of the same shape."""
        if self.size == 0:
            return images
        out = []
        finite = torch.isfinite(images.flatten(1)).all(1).tolist()
        for image, usable in zip(images, finite):
            image = image[None]
            if not usable:
                out.append(image)
            elif len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict:
        """The stored fakes and the random generator's state (plain tensors, ints and tuples: ``weights_only``)."""
        return {"images": list(self.images), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: the next :meth:`query` draws as it would have without the interruption."""
        self.images = list(state["images"])
        self.rng.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["rng"]))


class CycleGANLoss:
    """Loss terms of the CycleGAN; weights come from a :class:`~mri_translate.config.LossConfig`."""

    def __init__(self, lambda_cycle: float = LossConfig.lambda_cycle, identity: float = LossConfig.identity,
                 paired: float = LossConfig.paired, adversarial: float = LossConfig.adversarial,
                 paired_focus: float = LossConfig.paired_focus, paired_region: float = LossConfig.paired_region):
        self.lambda_adversarial = adversarial
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = identity * lambda_cycle
        self.lambda_paired = paired
        self.paired_focus = paired_focus
        self.paired_region = paired_region
        # LSGAN: MSE against 1/0 on raw scores; MONAI would otherwise put a LeakyReLU in front.
        self.adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.l1 = nn.L1Loss()

    def supervised(self, fake: torch.Tensor, real: torch.Tensor, paired: torch.Tensor,
                   focus: torch.Tensor | None = None) -> torch.Tensor:
        """``lambda_paired`` * mean |fake - real| over the batch items marked ``paired`` (``(B,)`` of 0/1) in the
        global batch (:func:`paired_weights`, a collective under ``torch.distributed``): the L1 to the
        co-registered truth; 0 when no item is paired. ``focus`` (``(B, k, H, W)``, >= 0, e.g.
        :func:`focus_weights`) weights each item's pixels in a weighted mean instead of a plain one."""
        error = (fake.float() - real.float()).abs().flatten(1)
        if focus is None:
            per_item = error.mean(1)
        else:
            weight = focus.detach().float().flatten(1)
            per_item = (weight * error).sum(1) / weight.sum(1).clamp_min(1e-8)
        return self.lambda_paired * (paired_weights(paired) * per_item).sum()

    def generator(self, score_fake: torch.Tensor) -> torch.Tensor:
        """``lambda_adversarial`` * (D(G(x)) - 1)^2: the generator wants its fakes judged real."""
        return self.lambda_adversarial * self.adversarial(score_fake, target_is_real=True, for_discriminator=False)

    def discriminator(self, score_real: torch.Tensor, score_fake: torch.Tensor) -> torch.Tensor:
        """0.5 * [(D(y) - 1)^2 + D(G(x))^2], halved to slow D relative to G as in the reference code."""
        real = self.adversarial(score_real, target_is_real=True, for_discriminator=True)
        fake = self.adversarial(score_fake, target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)


def pixel_weights(loss: CycleGANLoss, prior, source: torch.Tensor, truth: torch.Tensor,
                  region: torch.Tensor | None = None) -> torch.Tensor | None:
    """The supervised L1's pixel weights ``(B, k, H, W)`` for translating ``source`` into ``truth``:
    :func:`focus_weights` with ``loss.paired_focus`` (when on and a ``prior`` is given; else 1) plus
    ``loss.paired_region`` inside ``region`` (``(B, k, H, W)`` 0/1, e.g. lesion masks); ``None`` when both are
    off (a plain mean)."""
    focus = loss.paired_focus > 0 and prior is not None
    extra = loss.paired_region > 0 and region is not None
    if not (focus or extra):
        return None
    weights = focus_weights(prior, source, truth, loss.paired_focus) if focus else torch.ones_like(truth.float())
    return weights + loss.paired_region * region.to(weights) if extra else weights


def focus_weights(prior, source: torch.Tensor, truth: torch.Tensor, focus: float) -> torch.Tensor:
    """Pixel weights ``1 + focus * prior.miss(truth, source)`` of the supervised L1, ``(B, k, H, W)``, no gradient
    (:meth:`~mri_translate.contrast_prior.ContrastPrior.miss`: brain-weighted), so pixels where the no-learning
    inverted map misses the co-registered truth (lesions, cysts: what the source contrast does not show the
    target's way) count up to ``1 + 2 * focus`` times a pixel the map gets right."""
    return 1 + focus * prior.miss(truth.detach(), source)


def paired_weights(paired: torch.Tensor) -> torch.Tensor:
    """Per-item weights ``(B,)`` that make the supervised L1 (:meth:`CycleGANLoss.supervised`) the mean over the
    paired items of the global batch: ``paired`` (``(B,)`` of 0/1) divided by their count ``n`` (1 when none).

    Under ``torch.distributed`` (``DistributedDataParallel`` averages the gradients of its ``W`` ranks) ``n`` is
    summed over the ranks and the weights are multiplied by ``W``, so the gradient is the one of a single process
    stepping on the whole global batch, however the paired items fall on the ranks. A collective: every rank
    calls it in the same step.
    """
    count = paired.sum()
    ranks = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        ranks = dist.get_world_size()
    return paired * ranks / count.clamp_min(1)


def set_requires_grad(networks, flag: bool) -> None:
    """Freeze or unfreeze the parameters of ``networks``."""
    for net in networks:
        for p in net.parameters():
            p.requires_grad_(flag)


def cyclegan_step(nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                  real_a: torch.Tensor, real_b: torch.Tensor, loss: CycleGANLoss,
                  pools: dict[str, ImagePool], autocast=None, scaler=None, priors=None,
                  prior_weight: float = 0.0, paired: torch.Tensor | None = None,
                  region: torch.Tensor | None = None) -> dict[str, float]:
    """One CycleGAN iteration: update both generators, then both discriminators.

    Args:
        nets: ``G_AB``, ``G_BA``, ``D_A``, ``D_B`` (see :func:`~mri_translate.networks.build_networks`).
        optimizers: ``G`` (both generators) and ``D`` (both discriminators).
        real_a, real_b: unpaired batches ``(B, k, H, W)`` in [-1, 1] from domains A (T1w) and B (T2w).
        loss: the objective.
        pools: history pools ``A`` and ``B`` of fakes.
        autocast: a context-manager factory for mixed precision (``None`` = full precision).
        scaler: a ``torch.amp.GradScaler`` for fp16, or ``None``.
        priors: ``{"AB": ContrastPrior, "BA": ContrastPrior}`` (:mod:`~mri_translate.contrast_prior`), pulling
            ``G_AB(x)`` towards the prior's map inside the brain (its brain-weighted L1 ``loss``) with
            ``prior_weight``, and ``G_BA`` likewise.
        paired: ``(B,)`` 1 where ``real_a[i]`` and ``real_b[i]`` are one subject's co-registered slab, else 0:
            those items add the supervised L1 (:meth:`CycleGANLoss.supervised`) in both directions, averaged over
            the paired items of the global batch (:func:`paired_weights`; under ``torch.distributed`` every rank
            passes ``paired`` or none does).
        region: ``(B, k, H, W)`` 1 inside a paired item's region mask (e.g. its lesions), else 0: those pixels of
            the supervised L1 weigh ``loss.paired_region`` more (:func:`pixel_weights`).

    Returns:
        Loss values as floats: ``G`` (total), ``G_adv_AB``, ``G_adv_BA``, ``cycle_A``, ``cycle_B``, ``idt_A``,
        ``idt_B``, ``prior_A``, ``prior_B``, ``paired_A``, ``paired_B``, ``D_A``, ``D_B``. Under
        ``torch.distributed`` they are this rank's: ``paired_*`` is its share of the global term times the
        number of ranks (their mean over the ranks is the global term).
    """
    autocast = autocast or contextlib.nullcontext
    g_ab, g_ba, d_a, d_b = nets["G_AB"], nets["G_BA"], nets["D_A"], nets["D_B"]

    # Generators: adversarial + cycle + identity, discriminators frozen.
    set_requires_grad((d_a, d_b), False)
    optimizers["G"].zero_grad(set_to_none=True)
    with autocast():
        fake_b = g_ab(real_a)                                   # G(x)
        fake_a = g_ba(real_b)                                   # F(y)
        adv_ab = loss.generator(d_b(fake_b))                    # L_GAN(G, D_Y)
        adv_ba = loss.generator(d_a(fake_a))                    # L_GAN(F, D_X)
        cycle_a = loss.l1(g_ba(fake_b), real_a) * loss.lambda_cycle  # ||F(G(x)) - x||_1
        cycle_b = loss.l1(g_ab(fake_a), real_b) * loss.lambda_cycle  # ||G(F(y)) - y||_1
        idt_a = idt_b = torch.zeros((), device=real_a.device)
        if loss.lambda_identity > 0:
            idt_a = loss.l1(g_ba(real_a), real_a) * loss.lambda_identity  # ||F(x) - x||_1
            idt_b = loss.l1(g_ab(real_b), real_b) * loss.lambda_identity  # ||G(y) - y||_1
        prior_b = prior_a = paired_b = paired_a = torch.zeros((), device=real_a.device)
        if priors is not None and prior_weight > 0:
            prior_b = priors["AB"].loss(fake_b, real_a) * prior_weight
            prior_a = priors["BA"].loss(fake_a, real_b) * prior_weight
        if paired is not None:  # also on a rank without a pair: the pairs are counted over all the ranks
            paired = paired.to(real_a.device, torch.float32)
            region = None if region is None else region.to(real_a.device)
            focus_b = pixel_weights(loss, priors and priors["AB"], real_a, real_b, region)
            focus_a = pixel_weights(loss, priors and priors["BA"], real_b, real_a, region)
            paired_b = loss.supervised(fake_b, real_b, paired, focus_b)  # ||G(x) - y||_1 on pairs
            paired_a = loss.supervised(fake_a, real_a, paired, focus_a)  # ||F(y) - x||_1 on pairs
        total_g = adv_ab + adv_ba + cycle_a + cycle_b + idt_a + idt_b + prior_a + prior_b + paired_a + paired_b
    _backward_step(total_g, optimizers["G"], scaler)

    # Discriminators: real vs (pooled) fake, each domain on its own.
    set_requires_grad((d_a, d_b), True)
    optimizers["D"].zero_grad(set_to_none=True)
    pooled_b = pools["B"].query(fake_b.detach())
    pooled_a = pools["A"].query(fake_a.detach())
    with autocast():
        loss_d_b = loss.discriminator(d_b(real_b), d_b(pooled_b))
        loss_d_a = loss.discriminator(d_a(real_a), d_a(pooled_a))
    _backward_step(loss_d_a + loss_d_b, optimizers["D"], scaler)
    if scaler is not None:
        scaler.update()

    values = {"G": total_g, "G_adv_AB": adv_ab, "G_adv_BA": adv_ba, "cycle_A": cycle_a, "cycle_B": cycle_b,
              "idt_A": idt_a, "idt_B": idt_b, "prior_A": prior_a, "prior_B": prior_b, "paired_A": paired_a,
              "paired_B": paired_b, "D_A": loss_d_a, "D_B": loss_d_b}
    return {name: float(value.detach()) for name, value in values.items()}


def _backward_step(total: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward (under ``DistributedDataParallel`` this also averages the gradients over the ranks), step."""
    (total if scaler is None else scaler.scale(total)).backward()
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
