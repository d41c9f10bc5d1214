"""scripts/strip_pairs.py: the intracranial mask of a whole-head T1w/T2w pair, on a phantom head."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from strip_pairs import intracranial_mask  # noqa: E402


def phantom_head(size: int = 64, seed: int = 0):
    """``(t1, t2, radius)``: brain (r < 18) in CSF (r < 21) in a dark skull (r < 25) in scalp (r < 29), a
    2-voxel bar of scalp-bright tissue crossing the skull into the brain; 1 mm voxels, a little noise."""
    grid = np.indices((size, size, size)) - (size - 1) / 2
    radius = np.sqrt((grid ** 2).sum(0))
    t1, t2 = np.zeros(radius.shape), np.zeros(radius.shape)
    for (inner, outer), (a, b) in {(0, 18): (0.8, 0.4), (18, 21): (0.15, 1.0), (21, 25): (0.03, 0.03),
                                   (25, 29): (0.9, 0.6)}.items():
        shell = (radius >= inner) & (radius < outer)
        t1[shell], t2[shell] = a, b
    bridge = (np.abs(grid[0]) <= 1) & (np.abs(grid[1]) <= 1) & (grid[2] > 0) & (radius < 29)
    t1[bridge], t2[bridge] = 0.9, 0.6
    rng = np.random.default_rng(seed)
    head = radius < 29
    t1[head] += rng.normal(0, 0.01, head.sum())
    t2[head] += rng.normal(0, 0.01, head.sum())
    return np.clip(t1, 0.001, None) * head, np.clip(t2, 0.001, None) * head, radius


def test_the_mask_is_the_brain_and_csf_inside_the_skull():
    """Scalp, skull and the bar across the skull are left out; brain and CSF (dark in the T1w, bright in the
    T2w) are kept whole."""
    t1, t2, radius = phantom_head()
    mask = intracranial_mask(t1, t2, (1.0, 1.0, 1.0))
    inside = radius < 21
    dice = 2 * (mask & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.97, dice
    assert not mask[radius >= 22].any()  # no skull, scalp or bar
    assert mask[radius < 20].all()  # CSF and the brain's core, no holes


def test_anisotropic_voxels_are_eroded_in_millimetres():
    """The same head sampled every 2 mm along Z (every other slice): the mask is the same sphere."""
    t1, t2, radius = phantom_head()
    mask = intracranial_mask(t1[::2], t2[::2], (1.0, 1.0, 2.0))
    inside = radius[::2] < 21
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.95
    assert not mask[radius[::2] >= 22].any()


def test_fat_bright_in_both_contrasts_is_left_out():
    """A block of fat (2.5 times the brain's T1w, brighter than the brain in the T2w) at the brain's edge, as
    orbital fat or marrow is in a real scan, is cut out of the mask; the brain and CSF around it are kept."""
    t1, t2, radius = phantom_head()
    grid = np.indices(t1.shape) - (t1.shape[0] - 1) / 2
    fat = (np.abs(grid[0]) <= 3) & (np.abs(grid[1]) <= 3) & (grid[2] >= 14) & (grid[2] <= 20)
    t1[fat], t2[fat] = 2.0, 0.9
    mask = intracranial_mask(t1, t2, (1.0, 1.0, 1.0))
    assert mask[fat].mean() < 0.05
    inside = (radius < 21) & ~fat
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.97
    kept_before = intracranial_mask(t1, t2, (1.0, 1.0, 1.0), fat=np.inf)
    assert kept_before[fat].mean() > 0.9  # without the rule the block was in the mask


def test_a_few_outliers_do_not_move_the_threshold():
    """Otsu's threshold of two intensity classes stays between them when 0.05 % of the voxels are 1000 times
    brighter (resampling can make such outliers); on the full range they would squeeze both classes into one bin."""
    from strip_pairs import _otsu

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.03, 50000), rng.normal(0.8, 0.05, 50000)])
    clean = _otsu(values)
    spiked = _otsu(np.concatenate([values, np.full(50, 800.0)]))
    assert 0.3 < clean < 0.7 and abs(spiked - clean) < 0.02
