"""Tests of the synthetic white-matter lesions painted into paired training items (mri_translate.lesion_synthesis)."""

import numpy as np
import pytest
import torch

from mri_translate.data import UnpairedSlabDataset, load_slices, paired_volumes
from mri_translate.lesion_synthesis import SyntheticLesions

WM_T1, GM_T1, CSF_T1 = 0.8, 0.5, 0.1   # intensities + 1 of a constructed slab (background 0)
WM_T2, GM_T2, CSF_T2 = 0.3, 0.6, 1.6


def phantom(k: int = 3, size: int = 64):
    """``(k, size, size)`` T1w and T2w slabs in [-1, 1]: a disc of grey matter around white matter around a
    ventricle, with 2 % multiplicative noise; and the three tissues' masks ``(size, size)``."""
    y, x = np.mgrid[:size, :size] - size / 2
    r = np.hypot(y, x)
    csf, wm, gm = r < 5, (r >= 5) & (r < 18), (r >= 18) & (r < 28)
    noise = 1 + 0.02 * np.random.default_rng(0).standard_normal((k, size, size))
    t1 = (csf * CSF_T1 + wm * WM_T1 + gm * GM_T1) * noise
    t2 = (csf * CSF_T2 + wm * WM_T2 + gm * GM_T2) * noise
    return torch.tensor(t1 - 1, dtype=torch.float32), torch.tensor(t2 - 1, dtype=torch.float32), (csf, wm, gm)


def test_lesions_darken_the_t1w_and_brighten_the_t2w_of_the_white_matter_only():
    """Over 20 draws: the T1w only gets darker and the T2w only brighter, nothing changes outside the head, the
    painted pixels lie mostly in white matter, at the middle of a lesion the two contrasts sit at factors of the
    white matter inside the configured ranges, and a ventricle that a lesion touches keeps its T2w (it is brighter
    than the cap, 1.25 x the largest lesion factor x the white matter) while its T1w darkens. The weight returned
    is 0 outside the head and nonzero wherever the T1w darkened."""
    t1, t2, (csf, wm, gm) = phantom()
    synth = SyntheticLesions(prob=1.0)
    painted_in_wm, t1_ratios, t2_ratios, ventricle_touched = [], [], [], 0
    for seed in range(20):
        a, b, weight = synth(t1, t2, torch.Generator().manual_seed(seed))
        assert a.shape == t1.shape and b.shape == t2.shape and weight.shape == t1.shape and a.dtype == torch.float32
        assert (a <= t1 + 1e-6).all() and (b >= t2 - 1e-6).all()
        outside = torch.from_numpy(~(csf | wm | gm))
        assert (a[:, outside] == -1).all() and (b[:, outside] == -1).all() and (weight[:, outside] == 0).all()
        assert 0 <= weight.min() and weight.max() <= 1 and (weight[a < t1 - 1e-4] > 0).all()
        drop = 1 - (a[1] + 1) / (t1[1] + 1).clamp(min=1e-6)   # 1 - the T1w factor of the middle slice
        changed = (drop.numpy() > 0.02) & (csf | wm | gm)
        assert changed.any()
        painted_in_wm.append(changed[wm].sum() / changed.sum())
        core = changed & (drop.numpy() > drop[changed].max().item() - 0.01)   # the lesions' middles: the full factor
        t1_ratios.append(float(((a[1] + 1) / (t1[1] + 1))[torch.from_numpy(core & wm)].mean()))
        t2_ratios.append(float(((b[1] + 1) / WM_T2)[torch.from_numpy(core & wm)].mean()))
        ventricle = torch.from_numpy(csf)   # brighter than 1.25 x 2.4 x WM_T2: the cap leaves it as it was
        assert torch.allclose(b[:, ventricle], t2[:, ventricle])
        ventricle_touched += int((a[1][ventricle] < t1[1][ventricle] - 0.01).any())
    assert np.median(painted_in_wm) > 0.7, painted_in_wm
    assert 0.55 - 0.02 <= min(t1_ratios) and max(t1_ratios) <= 0.95 + 0.02, t1_ratios
    assert 1.3 * 0.95 <= min(t2_ratios) and max(t2_ratios) <= 2.4 * 1.05, t2_ratios
    assert np.std(t2_ratios) > 0.1   # the contrast is drawn per item, not fixed
    assert ventricle_touched >= 1


def test_nothing_is_painted_without_white_matter_or_when_not_drawn():
    t1, t2, _ = phantom()
    rng = torch.Generator().manual_seed(0)
    empty = -torch.ones_like(t1)
    flat = torch.where(t1 > -1, 0.0, -1.0)   # a head of one intensity: no pixel brighter than the rest on the T1w
    for prob, (a, b) in ((0.0, (t1, t2)), (1.0, (empty, empty)), (1.0, (flat, flat))):
        painted_a, painted_b, weight = SyntheticLesions(prob=prob)(a, b, rng)
        assert painted_a is a and painted_b is b and weight.shape == a.shape and not weight.any()


def test_a_dataset_paints_only_its_paired_items_and_stays_reproducible(tmp_path):
    """The same seeded dataset with and without lesions: unpaired items are identical; paired items have the same
    slab (same subject, slice, crop), only darker on the T1w and brighter on the T2w in places, and a region that
    covers where it was painted (zero in unpaired items); asking again gives the same painted item."""
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path, n_subjects=1, resolution=4.0)
    pair = (data["t1"][0], data["t2"][0])
    a, b = load_slices([pair[0]], k=3, spacing=None), load_slices([pair[1]], k=3, spacing=None)
    pairs = paired_volumes(a, b, [pair])
    plain, painted = (UnpairedSlabDataset(a, b, crop=32, seed=0, length=30, pairs=pairs, paired_fraction=0.5,
                                          lesions=lesions) for lesions in (None, SyntheticLesions(prob=1.0)))
    changed = 0
    for i in range(30):
        before, after = plain[i], painted[i]
        assert "region" not in before and after["region"].shape == after["A"].shape
        if float(before["paired"]) == 0:
            assert all(torch.equal(before[key], after[key]) for key in ("A", "B")) and not after["region"].any()
            continue
        assert (after["A"] <= before["A"] + 1e-6).all() and (after["B"] >= before["B"] - 1e-6).all()
        assert (after["region"][after["A"] < before["A"] - 1e-4] > 0).all()
        changed += int(not torch.equal(before["A"], after["A"]))
        assert all(torch.equal(after[key], painted[i][key]) for key in ("A", "B"))
    assert changed >= 5


def test_make_loader_paints_the_share_its_configuration_asks_for(tmp_path):
    """data.synthetic_lesions reaches the training loader: 0 paints nothing, 1 paints (darkens the T1w of) paired
    batches, and unpaired ones stay as they were."""
    from mri_translate.config import RunConfig
    from mri_translate.data import make_loader
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path, n_subjects=1, resolution=4.0)
    pair = (data["t1"][0], data["t2"][0])
    a, b = load_slices([pair[0]], k=3, spacing=None), load_slices([pair[1]], k=3, spacing=None)
    batches = {}
    for share in (0.0, 1.0):
        config = RunConfig.from_dict({"data": {"crop": 32, "batch_size": 1, "augment": False,
                                               "synthetic_lesions": share}, "train": {"epoch_length": 20}})
        loader = make_loader(a, b, config, pairs=paired_volumes(a, b, [pair]))
        assert (loader.dataset.lesions is None) == (share == 0)
        batches[share] = list(loader)
    darker = 0
    for plain, painted in zip(batches[0.0], batches[1.0]):
        if float(plain["paired"]) == 0:
            assert torch.equal(plain["A"], painted["A"])
        else:
            darker += int(bool((painted["A"] < plain["A"] - 0.01).any()))
    assert darker >= 3
