"""scripts/bench_case_study.py: the unpaired folders of 2D slices are paired for scoring by mutual information."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_case_study import slice_pairs  # noqa: E402


def phantom_slice(seed: int, size=(64, 72)) -> np.ndarray:
    """A head-like slice: a disc of three tissue classes laid out by ``seed``, values 0-3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(size)
    labels = np.zeros(size, np.uint8)
    labels[(yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < 28 ** 2] = 1
    for _ in range(6):  # blobs of the other two tissues at places that differ per slice
        cy, cx, radius = rng.integers(16, 48), rng.integers(16, 56), rng.integers(4, 9)
        labels[(labels > 0) & ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2)] = rng.integers(2, 4)
    return labels


def test_each_t1_slice_finds_the_t2_slice_of_its_position(tmp_path):
    """Five slices of one phantom, T1-like and T2-like (tissue brightness reversed, noise of their own), the T2
    folder named in another order and holding one extra slice: every T1 is paired with its own position's T2."""
    t1_values, t2_values = np.array([0, 200, 120, 60]), np.array([0, 60, 140, 230])
    rng = np.random.default_rng(0)
    (tmp_path / "T1").mkdir()
    (tmp_path / "T2").mkdir()
    names = {}
    for position in range(6):
        labels = phantom_slice(position)
        for folder, values, name in (("T1", t1_values, f"Image #{position}.png"),
                                     ("T2", t2_values, f"Image #{90 - 7 * position}.png")):
            if folder == "T1" and position == 5:
                continue  # a T2 slice with no T1 partner
            image = np.clip(values[labels] + rng.normal(0, 8, labels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / folder / name)
        names[f"Image #{position}.png"] = f"Image #{90 - 7 * position}.png"
    pairs = slice_pairs(tmp_path / "T1", tmp_path / "T2")
    assert {a.name: b.name for a, b, _, _ in pairs} == {k: v for k, v in names.items() if k != "Image #5.png"}
    assert all(best > second for _, _, best, second in pairs)
