"""Tests of mri_translate.data: usable slices of a domain (empty slices skipped), folders of 2D images, and
the unpaired, seeded slab dataset."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from mri_translate.data import Slices, UnpairedSlabDataset, expand_sources, load_slices, prepare_volume
from mri_translate.errors import InputError
from mri_translate.io import load_volume
from mri_translate.transforms import RobustNormalize, foreground_mask

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def foreground_fraction(slices: torch.Tensor) -> torch.Tensor:
    """Per slice ``(N, H, W)`` in [-1, 1]: the fraction load_slices thresholds."""
    return foreground_mask(slices + 1).flatten(1).float().mean(1)


def test_load_slices_skips_empty_slices_of_a_volume(synthetic_4mm):
    path = synthetic_4mm["t1"][0]
    slices = load_slices([path], k=3, min_foreground=0.05)
    all_slabs, layout, _ = prepare_volume(load_volume(path), 3, RobustNormalize())
    n_slices = layout.shape[layout.axis]
    assert n_slices == len(all_slabs) == 48  # 4 mm synthetic grid, axial through-plane axis
    assert 0 < len(slices.slabs) < n_slices
    assert len(slices.names) == len(slices.slabs)
    assert all(name.startswith(path.name + "[") for name in slices.names)
    assert slices.slabs.shape[1:] == (3, 64, 64)  # 50 x 59 in-plane padded to multiples of 16
    assert slices.slabs.min() >= -1 and slices.slabs.max() <= 1
    assert slices.slabs.min() == -1 and slices.slabs.max() == 1
    # the kept ones are exactly those whose centre slice has >= 5 % foreground
    fraction = foreground_fraction(all_slabs[:, 1])
    kept = [int(name.split("[")[1].rstrip("]")) for name in slices.names]
    assert kept == torch.nonzero(fraction >= 0.05).flatten().tolist()
    assert (foreground_fraction(slices.slabs[:, 1]) >= 0.05).all()
    torch.testing.assert_close(slices.slabs, all_slabs[kept])
    assert slices.ranges and slices.typical_range()[1] > slices.typical_range()[0]


def test_load_slices_stacks_several_sources(synthetic_4mm):
    both = load_slices(synthetic_4mm["t2"], k=5)
    one = [load_slices([p], k=5) for p in synthetic_4mm["t2"]]
    assert len(both.slabs) == sum(len(s.slabs) for s in one)
    assert both.slabs.shape[1] == 5 and len(both.ranges) == 2
    low, high = both.typical_range()
    assert low == pytest.approx(np.median([r[0] for r in both.ranges]))
    assert high == pytest.approx(np.median([r[1] for r in both.ranges]))


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def disc_image(size=(40, 48), value=200):
    image = np.zeros(size, np.uint8)
    yy, xx = np.indices(size)
    image[(yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < (min(size) / 3) ** 2] = value
    return image


def test_expand_sources_turns_a_folder_of_pngs_into_its_files(tmp_path):
    folder = tmp_path / "T1 slices #2"
    folder.mkdir()
    files = [write_png(folder / f"Image #{i}.png", disc_image()) for i in (3, 1, 2)]
    (folder / "notes.txt").write_text("not an image")
    volume = tmp_path / "scan.nii.gz"
    assert expand_sources([folder, volume]) == [*sorted(files), volume]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert expand_sources([empty]) == [empty]  # not a folder of images: kept as given (e.g. DICOM series)


def test_load_slices_on_a_folder_of_pngs(tmp_path):
    folder = tmp_path / "T1 #a"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"slice {i}.png", disc_image(value=100 + 50 * i))
    slices = load_slices([folder], k=3)
    assert slices.slabs.shape == (3, 3, 48, 48)  # 40 x 48 padded to 48 x 48; one slab per image
    assert slices.names == ["slice 0.png[0]", "slice 1.png[0]", "slice 2.png[0]"]
    for slab in slices.slabs:  # a single slice: edge replication gives k identical channels
        torch.testing.assert_close(slab[0], slab[1])


def test_load_slices_on_all_black_pngs_raises_input_error(tmp_path):
    folder = tmp_path / "black"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"b{i}.png", np.zeros((32, 32)))
    with pytest.raises(InputError) as info:
        load_slices([folder])
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_load_slices_on_all_black_pngs_says_no_usable_slices(tmp_path):
    folder = tmp_path / "black"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"b{i}.png", np.zeros((32, 32)))
    with pytest.raises(InputError, match="no usable slices"):
        load_slices([folder])


def test_load_slices_skips_a_black_png_among_good_ones(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_png(folder / "a.png", disc_image())
    write_png(folder / "b.png", np.zeros((40, 48)))
    slices = load_slices([folder])
    assert slices.names == ["a.png[0]"]


def test_load_slices_raises_when_every_slice_is_below_the_foreground_threshold(synthetic_4mm):
    with pytest.raises(InputError, match="no usable slices"):
        load_slices([synthetic_4mm["t1"][0]], min_foreground=0.99)


def test_load_slices_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        load_slices([tmp_path / "missing.nii.gz"])


# UnpairedSlabDataset ------------------------------------------------------------------------------------


def labelled(n, k=3, size=40, offset=0.0):
    """Slices whose slab i is constant ``offset + i / 100`` (identifiable after any crop or flip)."""
    slabs = (offset + torch.arange(n, dtype=torch.float32) / 100)[:, None, None, None].expand(n, k, size, size)
    return Slices(slabs.clone(), [f"s[{i}]" for i in range(n)], [(0.0, 1.0)] * n)


@pytest.fixture(scope="module")
def real_slices(synthetic_4mm):
    return load_slices([synthetic_4mm["t1"][0]]), load_slices([synthetic_4mm["t2"][1]])


def test_dataset_items_have_the_crop_shape(real_slices):
    a, b = real_slices
    for crop, k in ((32, 3), (96, 3)):  # 96 > 64: padded with background first
        dataset = UnpairedSlabDataset(a, b, crop=crop, seed=0)
        assert len(dataset) == max(len(a.slabs), len(b.slabs))
        item = dataset[0]
        assert set(item) == {"A", "B"}
        assert item["A"].shape == item["B"].shape == (k, crop, crop)
        assert item["A"].min() >= -1 and item["A"].max() <= 1
    assert len(UnpairedSlabDataset(a, b, length=7)) == 7


def test_dataset_is_deterministic_for_seed_epoch_index(real_slices):
    a, b = real_slices
    first = UnpairedSlabDataset(a, b, crop=32, seed=3)
    second = UnpairedSlabDataset(a, b, crop=32, seed=3)
    for index in (0, 5, 17):
        for domain in "AB":
            torch.testing.assert_close(first[index][domain], second[index][domain], rtol=0, atol=0)
    first.set_epoch(2)
    second.set_epoch(2)
    torch.testing.assert_close(first[4]["A"], second[4]["A"], rtol=0, atol=0)


def test_dataset_changes_with_epoch_seed_and_index(real_slices):
    a, b = real_slices
    dataset = UnpairedSlabDataset(a, b, crop=32, seed=3)
    epoch0 = [dataset[i]["A"] for i in range(6)]
    dataset.set_epoch(1)
    epoch1 = [dataset[i]["A"] for i in range(6)]
    assert any(not torch.equal(x, y) for x, y in zip(epoch0, epoch1))
    other_seed = UnpairedSlabDataset(a, b, crop=32, seed=4)
    assert any(not torch.equal(x, other_seed[i]["A"]) for i, x in enumerate(epoch0))
    assert any(not torch.equal(epoch0[0], x) for x in epoch0[1:])


def test_domains_are_drawn_independently():
    a, b = labelled(10), labelled(10, offset=1.0)
    dataset = UnpairedSlabDataset(a, b, crop=32, flip=False, seed=0, length=400)
    pairs = []
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["A"].unique().numel() == 1 and item["B"].unique().numel() == 1
        pairs.append((round(float(item["A"][0, 0, 0]) * 100), round((float(item["B"][0, 0, 0]) - 1) * 100)))
    count_a, count_b = Counter(p[0] for p in pairs), Counter(p[1] for p in pairs)
    assert set(count_a) == set(count_b) == set(range(10))  # every slab of each domain is drawn
    assert max(count_a.values()) < 80                        # roughly uniform (expected 40 each)
    assert sum(x == y for x, y in pairs) < 100               # not the same index in A and B (expected ~40)
    assert len(set(pairs)) > 70                              # many combinations: no fixed pairing
    assert abs(np.corrcoef(np.asarray(pairs).T)[0, 1]) < 0.2


def test_flip_is_left_right_and_random():
    n, size = 1, 32
    ramp = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size) / size  # varies along dim -2
    slices = Slices(ramp[None, None].expand(n, 3, size, size).clone(), ["r[0]"], [(0.0, 1.0)])
    dataset = UnpairedSlabDataset(slices, slices, crop=size, flip=True, seed=0, length=64)
    flipped = 0
    for i in range(len(dataset)):
        out = dataset[i]["A"]
        if torch.equal(out, ramp.flip(0).expand(3, size, size)):
            flipped += 1
        else:
            assert torch.equal(out, ramp.expand(3, size, size))
    assert 10 < flipped < 54
    no_flip = UnpairedSlabDataset(slices, slices, crop=size, flip=False, seed=0, length=16)
    assert all(torch.equal(no_flip[i]["A"], ramp.expand(3, size, size)) for i in range(16))
