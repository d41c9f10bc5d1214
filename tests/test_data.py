"""Tests of mri_translate.data: each source stored once (RAS, in-plane resampled, cropped to the head), usable
slices drawn in proportion to their foreground, slabs cut lazily, left-right flips only, seeded augmentation,
2D sources, the skull-stripping check, and the unpaired, seeded slab dataset."""

from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from mri_translate.config import RunConfig
from mri_translate.data import (SAMPLE, Slices, SourceVolume, UnpairedSlabDataset, effective_k, expand_sources,
                                head_area_cm2, load_slices, loader_workers, make_loader, skull_stripping_mismatch)
from mri_translate.errors import InputError
from mri_translate.io import load_volume
from mri_translate.standardize import LandmarkStandardizer
from mri_translate.transforms import (RobustNormalize, foreground_mask, inplane_shape, resample_inplane, resample_onto,
                                     to_canonical)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_load_slices_stores_each_volume_once_and_keeps_its_usable_slices(synthetic_4mm):
    path = synthetic_4mm["t1"][0]
    slices = load_slices([path], k=3, min_foreground=0.05, spacing=4.0)  # the grid's own spacing: no resampling
    (volume,) = slices.volumes
    full = RobustNormalize()(to_canonical(load_volume(path)))
    normalized = full.as_tensor()[0]  # (X, Y, Z), axial through-plane axis
    fraction = foreground_mask(normalized + 1).flatten(0, 1).float().mean(0)
    expected = torch.nonzero(fraction >= 0.05).flatten().tolist()
    assert 0 < len(expected) < 48
    assert slices.names == [f"{path.name}[{i}]" for i in expected] and len(slices) == len(expected)
    assert volume.axis == 2 and volume.slices.dtype == torch.float16
    # stored once: only the slices within k // 2 of a usable one, cropped to the head (at most 50 x 59)
    assert volume.slices.shape[0] == expected[-1] - expected[0] + 3
    assert volume.slices.shape[1] <= 50 and volume.slices.shape[2] <= 59
    assert volume.slices.numel() < normalized.numel()
    # a slab is cut on demand: k neighbouring slices of the normalised volume, float32
    middle = expected[len(expected) // 2]
    slab, axis = slices.slab(len(expected) // 2)
    assert slab.shape == (3, *volume.slices.shape[1:]) and slab.dtype == torch.float32 and axis == 2
    top, left = _offset(normalized[..., middle], slab[1])
    for c, z in enumerate((middle - 1, middle, middle + 1)):
        torch.testing.assert_close(slab[c], normalized[top: top + slab.shape[1], left: left + slab.shape[2], z],
                                   atol=1e-3, rtol=0)  # float16 storage
    assert slices.typical_range() == pytest.approx(full.meta["intensity_range"])


def _offset(image: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """Where ``crop`` sits inside ``image`` (exhaustive search, small images only)."""
    h, w = crop.shape
    errors = {(t, l): float((image[t: t + h, l: l + w] - crop).abs().max())
              for t in range(image.shape[0] - h + 1) for l in range(image.shape[1] - w + 1)}
    return min(errors, key=errors.get)


def test_load_slices_with_planes_stores_a_near_isotropic_volume_along_all_three_axes(synthetic_4mm):
    """data.planes: the 4 mm isotropic volume is stored axial (as without planes), coronal and sagittal, each plane
    the normalised volume's slices along its axis, and each plane gets a third of the volume's sampling weight."""
    path = synthetic_4mm["t1"][0]
    one = load_slices([path], spacing=4.0)
    three = load_slices([path], spacing=4.0, planes=True)
    assert [v.axis for v in three.volumes] == [2, 1, 0]
    assert [v.name for v in three.volumes] == [path.name, f"{path.name} (coronal)", f"{path.name} (sagittal)"]
    assert {v.path for v in three.volumes} == {str(path)}
    torch.testing.assert_close(three.volumes[0].slices, one.volumes[0].slices)
    total = float(one.volumes[0].weights.sum())
    for volume in three.volumes:
        assert float(volume.weights.sum()) == pytest.approx(total / 3, rel=0.1)  # foreground voxels / 3
    assert len(three) == sum(len(v.kept) for v in three.volumes) > 2 * len(one)
    normalized = RobustNormalize()(to_canonical(load_volume(path))).as_tensor()[0]  # (X, Y, Z)
    coronal = three.volumes[1]
    position = int(coronal.kept[len(coronal.kept) // 2])
    slab = coronal.slab(position, 3)
    y = coronal.first + position
    top, left = _offset(normalized[:, y, :], slab[1])  # coronal slices are (X, Z): left-right first
    for c in range(3):
        torch.testing.assert_close(slab[c], normalized[top: top + slab.shape[1], y + c - 1, left: left + slab.shape[2]],
                                   atol=1e-3, rtol=0)


def test_load_slices_with_planes_keeps_thick_slices_to_their_own_plane(synthetic_4mm, tmp_path):
    """A scan whose slices are twice as thick as its pixels is no near-isotropic volume: one plane only."""
    image = nib.load(str(synthetic_4mm["t1"][0]))
    affine = image.affine.copy()
    affine[:3, 2] *= 2  # 4 x 4 x 8 mm voxels
    path = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(path))
    (volume,) = load_slices([path], spacing=4.0, planes=True).volumes
    assert volume.axis == 2 and volume.name == "thick.nii.gz"


def test_load_slices_resamples_in_plane_to_the_training_spacing(synthetic_4mm):
    path = synthetic_4mm["t2"][0]
    coarse = load_slices([path], spacing=4.0).volumes[0]
    fine = load_slices([path], spacing=2.0).volumes[0]
    assert fine.slices.shape[0] == coarse.slices.shape[0]        # through-plane axis left as it is
    assert fine.slices.shape[1] == pytest.approx(2 * coarse.slices.shape[1], abs=18)  # margin of 8 px each side
    # sampling weights are foreground areas in pixels: 4x as many at 2 mm
    assert float(fine.weights.sum()) == pytest.approx(4 * float(coarse.weights.sum()), rel=0.1)
    assert fine.head_area_cm2 == pytest.approx(coarse.head_area_cm2, rel=0.1)
    native = load_slices([path]).volumes[0]  # spacing None: each source's own pixels
    assert torch.equal(native.slices, coarse.slices)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_resample_inplane_and_back_onto_the_input_grid(axis):
    shape, spacing = [30, 41, 23], [0.43, 0.5, 0.9]
    spacing[axis] = 3.0
    ramp = torch.linspace(0, 1, shape[(axis + 1) % 3]).reshape([-1 if i == (axis + 1) % 3 else 1 for i in range(3)])
    volume = ramp.expand(*shape).contiguous()
    resampled = resample_inplane(volume, spacing, axis, 1.0)
    assert resampled.shape == inplane_shape(shape, spacing, axis, 1.0)
    assert resampled.shape[axis] == shape[axis]
    assert [resampled.shape[i] for i in range(3) if i != axis] == [round(shape[i] * spacing[i]) for i in range(3)
                                                                   if i != axis]
    back = resample_onto(resampled, shape, axis)
    assert back.shape == volume.shape and back.dtype == torch.float32
    assert float((back - volume).abs()[1:-1, 1:-1, 1:-1].mean()) < 0.01  # a smooth ramp survives the round trip
    torch.testing.assert_close(resample_onto(volume, shape, axis), volume)
    with pytest.raises(ValueError, match="through-plane"):
        resample_onto(volume, [s + (i == axis) for i, s in enumerate(shape)], axis)


def test_several_sources_of_different_sizes_are_kept_apart(synthetic_4mm):
    both = load_slices(synthetic_4mm["t2"], k=5, spacing=4.0)
    one = [load_slices([p], k=5, spacing=4.0) for p in synthetic_4mm["t2"]]
    assert len(both) == sum(len(s) for s in one) and len(both.volumes) == 2
    assert both.names == one[0].names + one[1].names
    low, high = both.typical_range()
    assert low == pytest.approx(np.median([r[0] for r in both.ranges]))
    assert high == pytest.approx(np.median([r[1] for r in both.ranges]))
    sample = both.slabs  # the bounded sample used for statistics and montages
    assert sample.shape[1] == 5 and len(sample) == min(SAMPLE, len(both))
    assert sample.min() >= -1 and sample.max() <= 1


def test_standardized_loading_fits_or_applies_landmarks(synthetic_4mm):
    fitted = load_slices(synthetic_4mm["t1"], spacing=4.0, standardize=True)
    assert isinstance(fitted.standardizer, LandmarkStandardizer)
    for volume in fitted.volumes:
        assert volume.slices.min() >= -1 and volume.slices.max() <= 1
        assert volume.range[1] > volume.range[0]
    applied = load_slices(synthetic_4mm["t1"][:1], spacing=4.0, standardize=fitted.standardizer)
    assert applied.standardizer is fitted.standardizer
    torch.testing.assert_close(applied.volumes[0].slices, fitted.volumes[0].slices, atol=2e-3, rtol=0)
    assert load_slices(synthetic_4mm["t1"][:1], spacing=4.0).standardizer is None


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


def test_load_slices_on_a_folder_of_pngs_normalises_each_image_as_convert_does(tmp_path):
    folder = tmp_path / "T1 #a"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"slice {i}.png", disc_image(value=100 + 50 * i))
    slices = load_slices([folder], k=3)
    assert slices.names == ["slice 0.png[0]", "slice 1.png[0]", "slice 2.png[0]"]
    for i, volume in enumerate(slices.volumes):
        slab, _ = slices.slab(i)
        assert slab.shape[0] == 3
        torch.testing.assert_close(slab[0], slab[1])  # a single slice: k identical channels (hence effective_k)
        # per image RobustNormalize, exactly as convert/Translator normalise a 2D input: every disc maps to +1
        assert float(volume.slices.max()) == 1.0 and float(volume.slices.min()) == -1.0
    normalized = RobustNormalize()(to_canonical(load_volume(folder / "slice 2.png")))[0, ..., 0]
    assert torch.equal(slices.volumes[2].slices[0].float().unique(), normalized.unique().half().float())


def test_effective_k_for_2d_sources(tmp_path, synthetic_4mm):
    folder = tmp_path / "pngs"
    folder.mkdir()
    png = write_png(folder / "a.png", disc_image())
    assert effective_k([folder], [png], 3)[0] == 1
    assert "every source is a 2D image" in effective_k([folder], [png], 3)[1]
    assert effective_k([folder], [png], 1) == (1, None)
    assert effective_k(synthetic_4mm["t1"], synthetic_4mm["t2"], 5) == (5, None)
    with pytest.raises(InputError) as info:
        effective_k(synthetic_4mm["t1"], [folder], 3)
    assert str(info.value).startswith(str(png)) and "\n" not in str(info.value) and "k = 3" in str(info.value)
    assert effective_k(synthetic_4mm["t1"], [folder], 1) == (1, None)


def test_load_slices_on_all_black_pngs_raises_a_one_line_input_error(tmp_path):
    folder = tmp_path / "black"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"b{i}.png", np.zeros((32, 32)))
    with pytest.raises(InputError, match="no usable slices") as info:
        load_slices([folder])
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_load_slices_skips_a_black_png_among_good_ones(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_png(folder / "a.png", disc_image())
    write_png(folder / "b.png", np.zeros((40, 48)))
    assert load_slices([folder]).names == ["a.png[0]"]


def test_load_slices_raises_when_every_slice_is_below_the_foreground_threshold(synthetic_4mm):
    with pytest.raises(InputError, match="no usable slices"):
        load_slices([synthetic_4mm["t1"][0]], min_foreground=0.99)


def test_load_slices_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        load_slices([tmp_path / "missing.nii.gz"])


def test_head_area_of_a_disc():
    yy, xx = np.indices((100, 100))
    disc = torch.as_tensor(((yy - 50) ** 2 + (xx - 50) ** 2 < 40 ** 2)[..., None].repeat(5, -1))
    assert head_area_cm2(disc, (1.0, 1.0, 3.0)) == pytest.approx(np.pi * 40 ** 2 / 100, rel=0.02)
    assert head_area_cm2(disc, (0.5, 0.5, 3.0)) == pytest.approx(np.pi * 40 ** 2 / 400, rel=0.02)
    ring = disc & ~torch.as_tensor(((yy - 50) ** 2 + (xx - 50) ** 2 < 30 ** 2)[..., None].repeat(5, -1))
    assert head_area_cm2(ring, (1.0, 1.0, 3.0)) == head_area_cm2(disc, (1.0, 1.0, 3.0))  # holes filled


def test_skull_stripped_and_whole_head_domains_are_told_apart(shared_data):
    real = shared_data / "volumes" / "train_real"
    stripped = load_slices([real / "brats18_tcia04_192_T1w.nii.gz"])
    whole = load_slices([real / "torchio_fpg_T2w.nii.gz", real / "brainix_T2w.nii.gz"])
    assert stripped.volumes[0].skull_stripped and stripped.volumes[0].head_area_cm2 < 200
    assert not any(v.skull_stripped for v in whole.volumes) and min(v.head_area_cm2 for v in whole.volumes) > 240
    message = skull_stripping_mismatch(stripped, whole)
    assert message.startswith("domain A (T1w) looks skull-stripped") and "\n" not in message
    assert skull_stripping_mismatch(whole, stripped).startswith("domain B (T2w)")
    assert skull_stripping_mismatch(whole, whole) is None


# UnpairedSlabDataset ------------------------------------------------------------------------------------


def labelled(n, k=1, size=40, offset=0.0, weights=None):
    """One source whose slice i is constant ``offset + i / 100`` (identifiable after any crop or flip)."""
    stack = (offset + torch.arange(n, dtype=torch.float32) / 100)[:, None, None].expand(n, size, size)
    weights = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    return Slices([SourceVolume("s", stack.half().contiguous(), 0, 2, torch.arange(n), weights, (0.0, 1.0),
                                100.0)], k)


@pytest.fixture(scope="module")
def real_slices(synthetic_4mm):
    return load_slices([synthetic_4mm["t1"][0]], spacing=4.0), load_slices([synthetic_4mm["t2"][1]], spacing=4.0)


def test_dataset_items_have_the_crop_shape(real_slices):
    a, b = real_slices
    for crop, augment in ((32, True), (96, False)):  # 96 > the stored slices: padded with background first
        dataset = UnpairedSlabDataset(a, b, crop=crop, seed=0, augment=augment)
        assert len(dataset) == max(len(a), len(b))
        item = dataset[0]
        assert set(item) == {"A", "B", "paired"} and item["paired"] == 0
        assert item["A"].shape == item["B"].shape == (3, crop, crop)
        assert item["A"].dtype == torch.float32
        assert item["A"].min() >= -1 and item["A"].max() <= 1
    assert len(UnpairedSlabDataset(a, b, length=7)) == 7


def test_dataset_is_deterministic_for_seed_epoch_index_whatever_the_workers(real_slices):
    a, b = real_slices
    first = UnpairedSlabDataset(a, b, crop=32, seed=3, augment=True, length=4)
    second = UnpairedSlabDataset(a, b, crop=32, seed=3, augment=True, length=4)
    for index in (0, 3):
        for domain in "AB":
            torch.testing.assert_close(first[index][domain], second[index][domain], rtol=0, atol=0)
    first.set_epoch(2)
    second.set_epoch(2)
    torch.testing.assert_close(first[1]["A"], second[1]["A"], rtol=0, atol=0)
    loaded = next(iter(torch.utils.data.DataLoader(first, batch_size=4, num_workers=2)))
    torch.testing.assert_close(loaded["A"], torch.stack([second[i]["A"] for i in range(4)]), rtol=0, atol=0)


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


def test_augmentation_changes_tissue_but_keeps_the_background(real_slices):
    a, b = real_slices
    plain = UnpairedSlabDataset(a, b, crop=48, flip=False, seed=5, length=20)
    augmented = UnpairedSlabDataset(a, b, crop=48, flip=False, seed=5, length=20, augment=True)
    changed = 0
    for i in range(20):
        x, y = plain[i]["A"], augmented[i]["A"]
        changed += not torch.allclose(x, y, atol=1e-3)
        assert y.min() >= -1 and y.max() <= 1
        near_tissue = torch.nn.functional.max_pool2d((x > -1).float(), 17, stride=1, padding=8) > 0
        assert torch.all(y[~near_tissue] == -1)  # background stays -1 (the affine moves tissue by < 8 px)
    assert changed >= 10  # three transforms at probability 1/2: most items are changed


def test_slices_are_drawn_in_proportion_to_their_foreground():
    weights = [1.0, 0.0, 3.0, 6.0]
    a = labelled(4, weights=weights)
    dataset = UnpairedSlabDataset(a, a, crop=32, flip=False, seed=0, length=1000)
    counts = Counter(round(float(dataset[i]["A"][0, 0, 0]) * 100) for i in range(len(dataset)))
    assert counts[1] == 0
    for i, w in enumerate(weights):
        assert counts[i] / 1000 == pytest.approx(w / 10, abs=0.05)


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


def write_phantom(path, through_plane: int) -> None:
    """A 32^3 RAS head whose left side (low X) and front (high Y) carry distinct markers; the thickest voxels
    (3 mm) along ``through_plane`` make it the slicing axis."""
    volume = np.zeros((32, 32, 32), np.float32)
    volume[4:28, 4:28, 4:28] = 100
    volume[4:10, 4:28, 4:28] = 200   # left
    volume[4:28, 22:28, 4:28] = 300  # anterior
    spacing = [1.0, 1.0, 1.0]
    spacing[through_plane] = 3.0
    nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), str(path))


@pytest.mark.parametrize("through_plane", [0, 1, 2])
def test_flips_are_left_right_only(tmp_path, through_plane):
    write_phantom(tmp_path / "phantom.nii.gz", through_plane)
    slices = load_slices([tmp_path / "phantom.nii.gz"], k=1, spacing=1.0)
    assert slices.volumes[0].axis == through_plane
    dataset = UnpairedSlabDataset(slices, slices, crop=32, flip=True, seed=0, length=40)
    left = anterior = 0
    for i in range(len(dataset)):
        image = dataset[i]["A"][0]  # (H, W): (X, Y), (X, Z) or (Y, Z)
        levels = image.unique().tolist()
        marker = image == levels[-1]   # the brightest: anterior (300)
        side = image == levels[-2]     # next: left (200)
        if through_plane == 0:         # sagittal (Y, Z): no left-right axis, never flipped
            rows = torch.nonzero(marker.any(1)).flatten()
            assert rows.float().mean() > 16  # anterior stays at high Y
            anterior += 1
        elif len(levels) >= 3:         # axial (X, Y) / coronal (X, Z): X first, flipped with probability 1/2
            rows = torch.nonzero(side.any(1)).flatten().float().mean()
            left += bool(rows < 16)
            anterior += 1
            if through_plane == 2:
                assert torch.nonzero(marker.any(0)).flatten().float().mean() > 16  # never flipped front-back
    if through_plane == 0:
        assert anterior == 40
    else:
        assert anterior > 20 and 0.2 < left / anterior < 0.8  # both orientations occur


def test_a_real_thin_pixel_volume_is_stored_at_1_mm(shared_data):
    path = shared_data / "volumes" / "train_real" / "brainix_T2w.nii.gz"  # 512 x 512 x 22, 0.45 mm pixels, 6 mm slices
    (volume,) = load_slices([path], spacing=1.0).volumes
    assert volume.axis == 2 and volume.slices.shape[0] == len(volume.kept) == 22
    assert volume.slices.shape[1] <= 231 and volume.slices.shape[2] <= 231     # 512 * 0.45 mm = 230 pixels at 1 mm
    assert volume.slices.shape[1] >= 150 and volume.slices.shape[2] >= 150     # the head itself (~17-20 cm) is kept
    assert volume.slices.numel() * 2 < 512 * 512 * 22 * 4 / 8                  # float16 at 1 mm: < 1/8 of the source


@pytest.mark.parametrize("planes", [False, True])
def test_paired_items_are_one_subject_aligned_in_both_contrasts(tmp_path, planes):
    """A co-registered synthetic subject stored in both domains (each cropped to its own head; with planes along
    all three axes): a paired item is the same slab of both, aligned voxel for voxel (the heads' outlines
    coincide), while unpaired items of two different subjects do not line up; paired_volumes refuses a file that
    is not loaded."""
    from mri_translate.data import paired_volumes
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path, n_subjects=2, resolution=4.0)
    pair = (data["t1"][0], data["t2"][0])
    a = load_slices([pair[0], data["t1"][1]], k=3, spacing=None, planes=planes)
    b = load_slices([pair[1]], k=3, spacing=None, planes=planes)
    pairs = paired_volumes(a, b, [pair])
    # with planes the subject is paired along each of its three planes, each a third of its paired draws
    assert [(p.a.axis, p.b.axis, p.share) for p in pairs] == \
        ([(2, 2, 1 / 3), (1, 1, 1 / 3), (0, 0, 1 / 3)] if planes else [(2, 2, 1.0)])
    dataset = UnpairedSlabDataset(a, b, crop=32, seed=0, length=40, augment=True, pairs=pairs, paired_fraction=0.5)
    overlap = {0.0: [], 1.0: []}
    for i in range(40):
        item = dataset[i]
        head_a, head_b = item["A"] > -0.9, item["B"] > -0.9
        union = int((head_a | head_b).sum())
        if union:
            overlap[float(item["paired"])].append(int((head_a & head_b).sum()) / union)
    assert len(overlap[1.0]) >= 10 and len(overlap[0.0]) >= 10
    assert np.median(overlap[1.0]) > 0.9, overlap[1.0]   # same slice, same crop, same flip (the two contrasts'
    assert np.median(overlap[0.0]) < 0.8, overlap[0.0]   # outlines differ a little at the top of the head)
    with pytest.raises(InputError, match="cannot be trained as a pair"):
        paired_volumes(a, b, [(data["t1"][1], data["t2"][1])])


@pytest.mark.parametrize("planes", [False, True])
def test_a_region_mask_is_cut_with_its_pair_and_is_empty_elsewhere(tmp_path, planes):
    """A region mask on the T1w's grid (here the T1w's brightest half of the head, so the mask can be read off the
    slab itself) comes with every paired item, cut with the same slice, crop and flip as the slabs, along each
    plane; unpaired items carry an empty one; a mask on another grid is refused naming the mask."""
    from mri_translate.data import paired_volumes
    from mri_translate.synthetic import write_dataset

    data = write_dataset(tmp_path, n_subjects=2, resolution=4.0)
    pair = (data["t1"][0], data["t2"][0])
    image = nib.load(pair[0])
    raw = image.get_fdata()
    threshold = np.quantile(raw[raw > raw.max() * 0.1], 0.5)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((raw > threshold).astype(np.uint8), image.affine), mask)
    a = load_slices([pair[0], data["t1"][1]], k=3, spacing=None, planes=planes)
    b = load_slices([pair[1]], k=3, spacing=None, planes=planes)
    pairs = paired_volumes(a, b, [pair], {pair[0]: mask}, spacing=None, planes=planes)
    assert all(p.region is not None and p.region.shape == p.a.slices.shape and p.region.dtype == torch.uint8
               for p in pairs)
    assert len({p.a.axis for p in pairs}) == (3 if planes else 1)
    dataset = UnpairedSlabDataset(a, b, crop=32, seed=0, length=40, pairs=pairs, paired_fraction=0.5)
    agreement, unpaired = [], 0
    for i in range(40):
        item = dataset[i]
        region = item["region"]
        assert region.shape == item["A"].shape and set(region.unique().tolist()) <= {0.0, 1.0}
        if float(item["paired"]) == 0:
            assert not region.any()
            unpaired += 1
        elif region.any():  # the mask's pixels are the T1w's bright ones, in this item's own crop and flip
            bright = item["A"] > float(item["A"][region > 0].min()) - 0.05
            agreement.append(float((bright == (region > 0)).float().mean()))
    assert unpaired >= 10 and len(agreement) >= 10
    assert np.median(agreement) > 0.9, agreement
    nib.save(nib.Nifti1Image((raw > threshold).astype(np.uint8)[::2], image.affine), tmp_path / "coarse.nii.gz")
    with pytest.raises(InputError, match=r"coarse\.nii\.gz.*not on the grid of"):
        paired_volumes(a, b, [pair], {pair[0]: tmp_path / "coarse.nii.gz"}, spacing=None, planes=planes)


def test_persistent_loader_workers_return_the_slabs_of_the_main_process_in_every_epoch(real_slices):
    """make_loader with 2 persistent workers: the same batches, bit for bit, as the main process for a fixed seed,
    and new ones in the next epoch although the workers never hear of it (the sampler tags each index with it)."""
    a, b = real_slices
    config = RunConfig.from_dict({"data": {"crop": 32, "batch_size": 4},
                                  "train": {"epoch_length": 2, "seed": 7}})
    epochs = {}
    for workers in (0, 2):
        config.data.num_workers = workers
        loader = make_loader(a, b, config)
        assert loader.persistent_workers == (workers > 0) and not loader.pin_memory
        for epoch in (1, 2):
            loader.sampler.set_epoch(epoch)
            epochs[workers, epoch] = list(loader)
    for epoch in (1, 2):
        for main, worker in zip(epochs[0, epoch], epochs[2, epoch]):
            for key in ("A", "B", "paired"):
                torch.testing.assert_close(main[key], worker[key], rtol=0, atol=0)
    assert not torch.equal(epochs[2, 1][0]["A"], epochs[2, 2][0]["A"])


def test_loader_workers_are_none_on_a_cpu_and_some_on_a_gpu_unless_set():
    assert loader_workers(None, torch.device("cpu")) == 0
    assert 0 <= loader_workers(None, torch.device("cuda", 0)) <= 4
    assert loader_workers(3, torch.device("cpu")) == 3
