"""Tests of mri_translate.slabs: slab layout, replicated edges, padding, exact identity round trip and the
averaging of the k predictions every slice receives."""

import numpy as np
import pytest
import torch

from mri_translate.slabs import SlabLayout, SliceAverage, pad_slices, slab_index, through_plane_axis

SHAPE = (19, 13, 11)  # odd sizes, none a multiple of 16, all different


def volume_to_slabs(volume, k=3, axis=2, **padding):
    """Every slab of a volume at once: the slices of pad_slices indexed by slab_index for every centre."""
    slices, layout = pad_slices(volume, k, axis, **padding)
    return slices[slab_index(torch.arange(len(slices)), len(slices), k)], layout


def slabs_to_volume(predictions, layout):
    """The predictions of every slab (one per slice, in order) averaged by one SliceAverage."""
    average = SliceAverage(layout)
    average.add(torch.arange(layout.shape[layout.axis]), predictions)
    return average.volume()


def random_volume(shape=SHAPE, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


@pytest.mark.parametrize("spacing, axis", [
    ((1.0, 1.0, 1.0), 2),
    ((2.0, 2.0, 2.0), 2),
    ((0.9, 0.9, 5.5), 2),
    ((0.89843749, 0.89843751, 5.4999975), 2),  # tcga_fg_6692_native as loaded
    ((5.0, 1.0, 1.0), 0),
    ((1.0, 3.0, 1.0), 1),
    ((1.0, 1.0000001, 1.0), 2),  # rounding noise is a tie: the last axis wins
    ((3.0, 3.0, 1.0), 1),  # tie between thick axes: the last of them
])
def test_through_plane_axis(spacing, axis):
    assert through_plane_axis(spacing) == axis
    assert through_plane_axis(np.asarray(spacing)) == axis


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_slab_shapes_and_content(axis, k):
    volume = random_volume()
    slabs, layout = volume_to_slabs(volume, k=k, axis=axis)
    slices = volume.movedim(axis, 0)
    n, h, w = slices.shape
    assert isinstance(layout, SlabLayout)
    assert layout.shape == SHAPE and layout.axis == axis and layout.k == k
    assert slabs.dtype == torch.float32
    assert slabs.ndim == 4 and slabs.shape[:2] == (n, k)
    hp, wp = slabs.shape[2:]
    assert hp % 16 == 0 and wp % 16 == 0 and h <= hp < h + 16 and w <= wp < w + 16
    (top, bottom), (left, right) = layout.pad
    assert top + bottom == hp - h and left + right == wp - w
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1  # centred

    half = k // 2
    interior = slabs[:, :, top: top + h, left: left + w]
    for i in range(n):
        assert torch.equal(interior[i, half], slices[i])  # centre channel is slice i
        for offset in range(-half, half + 1):
            neighbour = min(max(i + offset, 0), n - 1)  # edges replicated
            assert torch.equal(interior[i, half + offset], slices[neighbour])
    assert torch.equal(interior[0, 0], slices[0])
    assert torch.equal(interior[n - 1, k - 1], slices[n - 1])

    outside = torch.ones(hp, wp, dtype=torch.bool)
    outside[top: top + h, left: left + w] = False
    assert bool((slabs[:, :, outside] == -1).all())  # padding value


def test_slab_accepts_channel_first_and_pad_value():
    volume = random_volume((5, 7, 3))
    slabs, layout = volume_to_slabs(volume[None], k=3, axis=2, multiple=8, pad_value=0.25)
    assert tuple(slabs.shape) == (3, 3, 8, 8)
    assert layout.shape == (5, 7, 3)
    assert float(slabs[0, 1, 0, 0]) == 0.25
    assert torch.equal(slabs_to_volume(slabs, layout), volume)


def test_no_padding_when_already_a_multiple():
    volume = random_volume((32, 16, 4))
    slabs, layout = volume_to_slabs(volume, k=3, axis=2)
    assert tuple(slabs.shape) == (4, 3, 32, 16)
    assert layout.pad == ((0, 0), (0, 0))
    assert torch.equal(slabs_to_volume(slabs, layout), volume)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("shape", [SHAPE, (7, 21, 3), (17, 9, 1), (3, 5, 2)])
def test_identity_round_trip_is_exact(shape, axis, k):
    volume = random_volume(shape, seed=sum(shape) + k) * 1000 - 333  # values with many significant bits
    slabs, layout = volume_to_slabs(volume, k=k, axis=axis)
    restored = slabs_to_volume(slabs, layout)
    assert restored.dtype == torch.float32
    assert torch.equal(restored, volume)


@pytest.mark.parametrize("k, n", [(k, n) for k in (3, 5, 7, 9) for n in range(1, k + 1)])
def test_identity_round_trip_fewer_slices_than_k(k, n):
    """Volumes thinner than a slab (k=7 with 2 slices once failed with a shape mismatch)."""
    volume = random_volume((6, 5, n), seed=n)
    slabs, layout = volume_to_slabs(volume, k=k, axis=2)
    assert torch.equal(slabs_to_volume(slabs, layout), volume)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("axis", [0, 2])
def test_predictions_are_averaged_over_valid_channels(k, axis):
    shape = (9, 6, 7)
    slabs, layout = volume_to_slabs(torch.zeros(shape), k=k, axis=axis)
    n = shape[axis]
    predictions = torch.arange(k, dtype=torch.float32)[None, :, None, None].expand_as(slabs).clone()
    volume = slabs_to_volume(predictions, layout)
    assert tuple(volume.shape) == shape
    per_slice = volume.movedim(axis, 0)
    half = k // 2
    for i in range(n):
        # slab j's channel c predicts slice j + c - half; valid only when that slab exists (0 <= j < n)
        valid = [c for c in range(k) if 0 <= i - c + half < n]
        expected = sum(valid) / len(valid)
        assert torch.allclose(per_slice[i], torch.full_like(per_slice[i], expected), atol=1e-6), (i, expected)
        if half <= i < n - half:
            assert abs(expected - (k - 1) / 2) < 1e-12  # interior: every channel, mean(0..k-1)
    if k > 1:
        assert float(per_slice[0, 0, 0]) == pytest.approx(sum(range(half + 1)) / (half + 1))  # first slice
        assert float(per_slice[-1, 0, 0]) == pytest.approx(sum(range(half, k)) / (k - half))  # last slice


@pytest.mark.parametrize("k", [0, 2, 4, -1, -3])
def test_invalid_k(k):
    with pytest.raises(ValueError, match="odd"):
        volume_to_slabs(random_volume(), k=k)


def test_invalid_axis_or_shape():
    with pytest.raises(ValueError):
        volume_to_slabs(random_volume(), axis=3)
    with pytest.raises(ValueError):
        volume_to_slabs(torch.zeros(4, 5), axis=0)


def test_wrong_prediction_shape():
    slabs, layout = volume_to_slabs(random_volume(), k=3, axis=2)
    n = SHAPE[2]
    with pytest.raises(ValueError, match="do not fit"):
        slabs_to_volume(slabs[:, :1], layout)  # k = 1 instead of 3
    with pytest.raises(ValueError, match="do not fit"):
        slabs_to_volume(slabs[: n - 1], layout)  # one slice missing
    with pytest.raises(ValueError, match="do not fit"):
        slabs_to_volume(torch.cat([slabs, slabs[:1]]), layout)  # one slice too many
    with pytest.raises(ValueError):
        slabs_to_volume(slabs[:, 0], layout)  # channel dimension dropped


@pytest.mark.parametrize("pad", [(0, 16, 0, 16), (0, 0, 0, 16), (0, 16, 0, 0)])
def test_wrong_in_plane_prediction_size_is_refused(pad):
    """A prediction of another in-plane size must not be silently cropped to a volume of the wrong shape."""
    slabs, layout = volume_to_slabs(random_volume(), k=3, axis=2)
    bigger = torch.nn.functional.pad(slabs, pad, value=-1.0)
    with pytest.raises(ValueError, match="do not fit"):
        slabs_to_volume(bigger, layout)
    with pytest.raises(ValueError, match="do not fit"):
        slabs_to_volume(slabs[:, :, :-1], layout)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_slabs_cut_and_averaged_batch_by_batch_equal_all_at_once(axis, k):
    """The inferer's way (slabs cut from the padded slices batch by batch with slab_index, their predictions summed
    by SliceAverage in any order) gives what volume_to_slabs / slabs_to_volume give for the whole volume; a slice
    that no slab predicted gets the ``empty`` value."""
    volume = random_volume(seed=axis + k)
    slabs, layout = volume_to_slabs(volume, k=k, axis=axis)
    predictions = torch.rand(slabs.shape, generator=torch.Generator().manual_seed(k))
    slices, cut = pad_slices(volume, k=k, axis=axis)
    assert cut == layout
    average = SliceAverage(layout)
    order = torch.randperm(len(slabs), generator=torch.Generator().manual_seed(axis))
    for centres in order.split(4):
        assert torch.equal(slices[slab_index(centres, len(slices), k)], slabs[centres])
        average.add(centres, predictions[centres])
    assert torch.equal(average.volume(), slabs_to_volume(predictions, layout))

    partial = SliceAverage(layout)
    partial.add(torch.tensor([0]), predictions[:1])  # slab 0 predicts slices 0 .. k // 2 only
    per_slice = partial.volume(empty=7.0).movedim(axis, 0)
    assert bool((per_slice[k // 2 + 1:] == 7.0).all()) and not bool((per_slice[: k // 2 + 1] == 7.0).any())
    with pytest.raises(ValueError, match="do not fit"):
        partial.add(torch.tensor([0]), predictions[:1, :, :-1])
