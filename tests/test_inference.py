"""Tests of mri_translate.inference: with an identity generator the translated volume is the input itself
(clipped to its normalisation range) in the input's exact voxel order and affine, for every orientation and
slice thickness of the shared data, a DICOM series and a synthetic volume; the through-plane axis and the
``axis`` override are honoured; models load from a run directory or a file, and foreign or malicious files
are refused without being executed."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from conftest import SYNTHETIC_AFFINE, SYNTHETIC_SHAPE, TINY_NORMALIZATION, sitk_ras_affine
from mri_translate import __version__, inference
from mri_translate.errors import InputError, ModelError
from mri_translate.inference import SlabInferer, Translator
from mri_translate.model_file import DEFAULT_MODEL, resolve_model_path, sha256
from mri_translate.io import load_volume
from mri_translate.standardize import volume_landmarks
from mri_translate.networks import ModifiedUNet
from mri_translate.runtime import cpu_has_bf16
from mri_translate.slabs import slicing_axes
from mri_translate.transforms import RobustNormalize, to_canonical

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SHARED_NIFTI = {
    # name: (relative path, axcodes, RAS through-plane axis, RAS axes sliced along: three for isotropic voxels)
    "avg152_las_2mm": ("volumes/avg152/avg152T1.nii", "LAS", 2, [2, 1, 0]),
    "tcga_du_7294_lps_1mm": ("volumes/tcga_du_7294/t1.nii.gz", "LPS", 2, [2, 1, 0]),
    "tcga_fg_6692_native_las_5mm": ("volumes/tcga_fg_6692_native/t1_ax_se.nii.gz", "LAS", 2, [2]),
}
SERIES_DIR = "dicom/mr_t1_mprage_series"


class IdentityNet(torch.nn.Module):
    """Returns its input. Holds one unused parameter, because SlabInferer finds the device from the network's
    parameters (see test_parameterless_generator_is_accepted)."""

    k = 3  # slices per slab, as a ModifiedUNet states it

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def normalisation_range(volume) -> tuple[float, float]:
    return RobustNormalize()(to_canonical(volume)).meta["intensity_range"]


def identity_translator(volume, axis=None) -> Translator:
    """A translator that maps intensities back to the input's own range: output == clip(input, low, high)."""
    return Translator(IdentityNet(), k=3, target_range=normalisation_range(volume), device="cpu", axis=axis)


def assert_identity_output(out, volume, affine=None):
    """``out`` has the shape and affine of ``volume`` and equals it voxel by voxel, except that values outside
    the normalisation range (``out.meta["intensity_range"]``, the identity translator's target range) are
    clipped to it and that everything outside the head (noise in the background) is exactly the low end: any
    shift, flip or transposition would break this."""
    low, high = out.meta["intensity_range"]
    assert isinstance(out, MetaTensor)
    assert tuple(out.shape) == tuple(volume.shape)
    assert out.dtype == torch.float32
    expected_affine = volume.meta["original_affine"] if affine is None else affine
    np.testing.assert_allclose(np.asarray(out.affine, dtype=np.float64), expected_affine, atol=1e-4)
    source, result = volume[0].as_tensor().numpy(), out[0].as_tensor().numpy()
    inside = (source >= low) & (source <= high)
    assert inside.mean() > 0.98  # the check below covers nearly every voxel
    tolerance = 1e-3 * (high - low)
    differs = np.abs(result - np.clip(source, low, high)) > tolerance
    assert np.all(result[differs] == np.float32(low))  # background set to the background value, nothing else
    assert np.mean(result[inside & (source > low + 0.2 * (high - low))] == low) < 1e-3  # the head is kept


@pytest.fixture
def slab_axes(monkeypatch):
    """Records the axis of every pad_slices call made by the inferer (two per volume when it mirrors: the
    volume and its mirror image are cut along the same axis)."""
    axes = []
    original = inference.pad_slices

    def spy(volume, k, axis, *args, **kwargs):
        axes.append(axis)
        return original(volume, k, axis, *args, **kwargs)

    monkeypatch.setattr(inference, "pad_slices", spy)
    return axes


# --- identity translation keeps the geometry exactly ----------------------------------------------------------


@pytest.mark.parametrize("name", list(SHARED_NIFTI))
def test_identity_translation_of_shared_nifti_is_exact(shared_data, name, slab_axes):
    relative, axcodes, through_plane, planes = SHARED_NIFTI[name]
    path = shared_data / relative
    volume = load_volume(path)
    assert volume.meta["original_axcodes"] == axcodes
    translator = identity_translator(volume)
    out = translator(volume)
    assert tuple(out.meta["intensity_range"]) == translator.target_range
    assert_identity_output(out, volume, affine=nib.load(str(path)).affine)
    # slabs are cut across the largest RAS spacing (tcga_fg_6692_native: its 5.5 mm slices)
    ras_spacing = np.sqrt((np.asarray(to_canonical(volume).affine)[:3, :3] ** 2).sum(axis=0))
    assert through_plane == int(np.flatnonzero(ras_spacing >= ras_spacing.max() * 0.999)[-1])
    if name.endswith("5mm"):
        assert ras_spacing[through_plane] > 5 > np.delete(ras_spacing, through_plane).max()
    # each plane twice (the volume and its mirror image), the through-plane axis first
    assert slab_axes == [axis for axis in planes for _ in range(2)]


def test_identity_translation_of_synthetic_volume(synthetic_nifti, slab_axes):
    volume = load_volume(synthetic_nifti)
    out = identity_translator(volume)(volume)
    assert tuple(out.shape[1:]) == SYNTHETIC_SHAPE
    assert_identity_output(out, volume, affine=SYNTHETIC_AFFINE)
    assert slab_axes == [2, 2]  # spacing (1.0, 1.2, 2.5): z is the through-plane axis


def test_translator_accepts_a_path(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    out = identity_translator(volume)(synthetic_nifti)
    assert_identity_output(out, volume, affine=SYNTHETIC_AFFINE)


def test_thick_sagittal_slices_are_sliced_sagittally(tmp_path, slab_axes):
    """A volume whose thick axis is x (in an LAS grid) is cut into sagittal slabs, and still comes back exact."""
    from conftest import synthetic_volume

    affine = np.diag([-4.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (20.0, -30.0, -20.0)
    path = tmp_path / "thick_sagittal.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_volume((9, 20, 18)), affine), str(path))
    volume = load_volume(path)
    out = identity_translator(volume)(volume)
    assert_identity_output(out, volume, affine=affine)
    assert slab_axes == [0, 0]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_override_keeps_identity_exact(synthetic_nifti, shared_data, axis, slab_axes):
    for path in (synthetic_nifti, shared_data / SHARED_NIFTI["avg152_las_2mm"][0]):
        volume = load_volume(path)
        out = identity_translator(volume, axis=axis)(volume)
        assert_identity_output(out, volume)
    assert slab_axes == [axis] * 4


def test_axis_override_changes_a_real_network_output(synthetic_nifti):
    """With a non-identity network the slicing direction matters, so the override is really used."""
    torch.manual_seed(0)
    net = ModifiedUNet(3, (8, 16), 1)
    volume = load_volume(synthetic_nifti)
    outputs = [Translator(net, 3, (0.0, 1.0), "cpu", axis=axis)(volume) for axis in (0, 2)]
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


class InPlaneShift(torch.nn.Module):
    """Shifts each slab one pixel along its first in-plane axis: the result depends on how the volume was cut."""

    k = 3

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.roll(x, 1, dims=2)


def isotropic_volume(shape=(40, 36, 34)) -> MetaTensor:
    """A 1 mm isotropic RAS volume with a bright textured ellipsoid on a zero background, as ``load_volume``
    returns it."""
    from conftest import synthetic_volume

    volume = MetaTensor(torch.from_numpy(synthetic_volume(shape))[None], affine=torch.eye(4))
    volume.meta.update(original_affine=np.eye(4), original_axcodes="RAS", filename_or_obj="isotropic")
    return volume


def test_isotropic_scan_averages_the_three_planes(slab_axes):
    """fuse_planes: a near-isotropic scan is translated along axial, coronal and sagittal slabs and the three
    translations are averaged (before the background is set); without it, or with an axis given, one plane."""
    volume = isotropic_volume()
    translator = Translator(InPlaneShift(), 3, (0.0, 1.0), "cpu", mirror=False)
    canonical = translator.prepare(volume)
    fused = translator.run_normalized(canonical)[0]
    assert slab_axes == [2, 1, 0]
    singles = [Translator(InPlaneShift(), 3, (0.0, 1.0), "cpu", mirror=False, axis=axis).run_normalized(canonical)[0]
               for axis in (2, 1, 0)]
    background = fused == -1
    assert background.any() and (~background).any()
    torch.testing.assert_close(fused[~background], (sum(singles) / 3)[~background], rtol=0, atol=1e-6)
    assert all(not torch.allclose(fused, single, atol=1e-3) for single in singles)
    del slab_axes[:]
    one = Translator(InPlaneShift(), 3, (0.0, 1.0), "cpu", mirror=False, fuse_planes=False).run_normalized(canonical)
    assert slab_axes == [2]
    torch.testing.assert_close(one[0], singles[0], rtol=0, atol=0)


@pytest.mark.parametrize("spacing, shape, fuse, expected", [
    ((1.0, 1.0, 1.0), (64, 64, 64), True, [2, 1, 0]),
    ((1.0, 1.2, 1.4), (64, 64, 64), True, [2, 1, 0]),       # near-isotropic: largest / smallest <= 1.5
    ((1.2, 1.0, 1.0), (64, 64, 64), True, [0, 2, 1]),       # thickest first
    ((0.9, 0.9, 5.5), (256, 224, 26), True, [2]),           # thick slices: through-plane only
    ((1.0, 1.0, 1.0), (64, 64, 20), True, [2]),             # too few voxels along z for sagittal/coronal slabs
    ((1.0, 1.0, 1.0), (64, 64, 64), False, [2]),
])
def test_slicing_axes(spacing, shape, fuse, expected):
    assert slicing_axes(spacing, shape, fuse) == expected


# --- DICOM series (converted once for this module) -------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_translation(shared_data):
    """(input volume, identity translation, SimpleITK image, slab axes used) of the shared 512 x 512 x 48 series."""
    import SimpleITK as sitk

    folder = shared_data / SERIES_DIR
    volume = load_volume(folder)
    axes = []
    original = inference.pad_slices

    def spy(vol, k, axis, *args, **kwargs):
        axes.append(axis)
        return original(vol, k, axis, *args, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "pad_slices", spy)
        out = identity_translator(volume)(volume)
    torch.set_num_threads(threads)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return volume, out, reader.Execute(), axes


def test_dicom_series_geometry_matches_simpleitk(dicom_translation):
    volume, out, image, _ = dicom_translation
    assert tuple(out.shape[1:]) == image.GetSize() == (512, 512, 48)
    np.testing.assert_allclose(np.asarray(out.affine, dtype=np.float64), sitk_ras_affine(image), atol=1e-3)


def test_dicom_series_voxels_are_the_input(dicom_translation):
    import SimpleITK as sitk

    volume, out, image, _ = dicom_translation
    assert_identity_output(out, volume)
    # and against an independent reader: SimpleITK's (Z, Y, X) array
    low, high = out.meta["intensity_range"]
    reference = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
    kept = out[0].numpy() != np.float32(low)  # the head; the background is the low end (assert_identity_output)
    assert kept.mean() > 0.3
    np.testing.assert_allclose(out[0].numpy()[kept], np.clip(reference, low, high)[kept], rtol=0,
                               atol=1e-3 * (high - low))


def test_dicom_series_is_sliced_across_its_thick_axis(dicom_translation):
    volume, _, image, axes = dicom_translation
    canonical = to_canonical(volume)
    ras_spacing = np.sqrt((np.asarray(canonical.affine)[:3, :3] ** 2).sum(axis=0))
    assert np.isclose(ras_spacing.max(), max(image.GetSpacing()), atol=1e-3)
    assert axes == [int(ras_spacing.argmax())] * 2  # the volume and its mirror image


# --- SlabInferer ---------------------------------------------------------------------------------------------


def test_slab_inferer_keeps_metatensor_and_shape(slab_axes):
    torch.manual_seed(0)
    net = ModifiedUNet(3, (8, 16), 1).eval()
    affine = torch.as_tensor(np.diag([3.0, 1.0, 1.0, 1.0]))  # thick x: slabs along axis 0
    batch = MetaTensor(torch.rand(1, 1, 20, 17, 6) * 2 - 1, affine=affine)
    result = SlabInferer(k=3, batch_size=8, mirror=False)(batch, net)
    assert isinstance(result, MetaTensor)
    assert tuple(result.shape) == (1, 1, 20, 17, 6)
    assert result.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(result.affine), np.asarray(affine))
    assert torch.isfinite(result).all() and result.abs().max() <= 1
    assert slab_axes == [0]


def test_slab_inferer_plain_tensor(slab_axes):
    torch.manual_seed(0)
    net = ModifiedUNet(3, (8, 16), 1).eval()
    result = SlabInferer(k=3, mirror=False)(torch.rand(2, 1, 8, 9, 5), net)
    assert type(result) is torch.Tensor and tuple(result.shape) == (2, 1, 8, 9, 5)
    assert slab_axes == [2, 2]  # no affine: the last axis


class LeftToRightRamp(torch.nn.Module):
    """Ignores the image and answers a ramp from -0.5 (left) to +0.5 (right) along the slab's first spatial axis
    (RAS x for axial slabs): the most left-right asymmetric translation there is."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.linspace(-0.5, 0.5, x.shape[2]).view(1, 1, -1, 1).expand_as(x).clone()


@pytest.mark.parametrize("axis", [0, 2])
def test_mirroring_makes_the_translation_left_right_equivariant(axis):
    """mirror: the volume is translated as it is and mirrored left-right (RAS x), the second result mirrored back
    and the two averaged, so translating a mirrored volume gives the mirrored translation, even for a network that
    is as left-right asymmetric as can be (without mirroring it is not). Along x (sagittal slabs) mirroring
    reverses the slab order and must still put every slice back where it came from: the identity stays exact."""
    volume = torch.rand(1, 1, 12, 10, 7) * 2 - 1
    ramp = LeftToRightRamp()
    for mirror in (False, True):
        inferer = SlabInferer(k=3, axis=axis, mirror=mirror)
        difference = (inferer(volume.flip(2), ramp) - inferer(volume, ramp).flip(2)).abs().max()
        if mirror:
            assert float(difference) < 1e-6
        elif axis == 2:
            assert float(difference) > 0.5
    identity = IdentityNet()
    torch.testing.assert_close(SlabInferer(k=3, axis=axis, mirror=True)(volume, identity), volume, rtol=0, atol=1e-6)


def test_slab_inferer_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    net = ModifiedUNet(3, (8, 16), 1).eval()
    batch = MetaTensor(torch.rand(1, 1, 20, 17, 11) * 2 - 1, affine=torch.eye(4, dtype=torch.float64))
    one = SlabInferer(k=3, batch_size=1)(batch, net)
    eight = SlabInferer(k=3, batch_size=8)(batch, net)
    np.testing.assert_allclose(one.numpy(), eight.numpy(), rtol=0, atol=1e-5)


class CountingNet(ModifiedUNet):
    """A generator that counts the slabs it is given."""

    slabs = 0

    def forward(self, x):
        self.slabs += len(x)
        return super().forward(x)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_only_the_slabs_that_hold_a_wanted_slice_are_run(axis):
    """wanted: the slabs holding no wanted slice are not run, the wanted slices are exactly what a full run gives
    (mirrored too: along x mirroring reverses which slices are wanted) and the others are -1."""
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 14, 12, 10) * 2 - 1
    n = volume.shape[2 + axis]
    wanted = torch.zeros(n, dtype=torch.bool)
    wanted[3:6] = True  # slices 3-5: slabs 2-6 hold one of them
    full_net, net = CountingNet(3, (8, 16), 1).eval(), CountingNet(3, (8, 16), 1).eval()
    net.load_state_dict(full_net.state_dict())
    full = SlabInferer(k=3, axis=axis, mirror=True)(volume, full_net).movedim(2 + axis, 2)
    part = SlabInferer(k=3, axis=axis, mirror=True)(volume, net, wanted=wanted).movedim(2 + axis, 2)
    assert (full_net.slabs, net.slabs) == (2 * n, 2 * 5)
    torch.testing.assert_close(part[:, :, wanted], full[:, :, wanted], rtol=0, atol=1e-5)
    assert bool((part[:, :, :2] == -1).all()) and bool((part[:, :, 7:] == -1).all())


def test_the_network_skips_the_slices_outside_the_head_and_translates_the_same():
    """A head that fills part of the field of view: along every plane only the slabs that cut it go through the
    generator, and the translation is the one of a run over every slab."""
    torch.manual_seed(0)
    head_only = isotropic_volume()
    volume = MetaTensor(torch.nn.functional.pad(head_only.as_tensor(), (6, 4, 0, 8, 10, 2)), meta=head_only.meta)
    net = CountingNet(3, (8, 16), 1).eval()
    translator = Translator(net, 3, (0.0, 1.0), "cpu", mirror=True)
    x = translator.prepare(volume)
    head = translator.head(x)
    assert translator.axes((1.0, 1.0, 1.0), head.shape) == [2, 1, 0]
    out = translator.run_network(x, head).as_tensor()[0]
    skipping, net.slabs = net.slabs, 0
    everywhere = translator.run_network(x, torch.ones_like(head)).as_tensor()[0]
    cut = [int(head.any(dim=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3)]
    assert net.slabs == 2 * sum(head.shape) and 2 * sum(cut) <= skipping <= 2 * sum(c + 2 for c in cut)
    assert skipping < 0.8 * net.slabs
    torch.testing.assert_close(out[head], everywhere[head], rtol=0, atol=1e-5)
    assert bool((out[~head] == -1).all())


def test_head_box_is_the_head_s_bounding_box_grown_by_the_margin_in_mm():
    head = torch.zeros(30, 40, 20, dtype=torch.bool)
    head[10:15, 5:30, 18:20] = True
    assert inference.head_box(head, (1.0, 2.0, 0.5), margin_mm=4.0) == (slice(6, 19), slice(3, 32), slice(10, 20))
    assert inference.head_box(head, (1.0, 1.0, 1.0), margin_mm=0.0) == (slice(10, 15), slice(5, 30), slice(18, 20))
    assert inference.head_box(torch.zeros_like(head), (1.0, 1.0, 1.0)) == (slice(None),) * 3


class LocalConvolution(torch.nn.Module):
    """A 3x3 convolution and tanh: its output at a pixel depends on the 3x3 pixels around it only (no statistics
    over the image, as an instance norm takes); records the in-plane sizes of the slabs it is given."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.sizes = set()

    def forward(self, x):
        self.sizes.add(tuple(x.shape[2:]))
        return torch.tanh(self.conv(x))


def test_the_network_sees_the_head_s_box_and_translates_the_head_as_in_the_whole_field_of_view(monkeypatch):
    """A head in a wide field of view: the slabs hold the head's bounding box and HEAD_MARGIN_MM around it, not the
    field of view, and for a network whose output is local the head comes out as when it sees everything."""
    torch.manual_seed(0)
    head_only = isotropic_volume()
    volume = MetaTensor(torch.nn.functional.pad(head_only.as_tensor(), (30, 30, 30, 30, 30, 30)), meta=head_only.meta)
    net = LocalConvolution()
    translator = Translator(net, 3, (0.0, 1.0), "cpu", amp=False, mirror=True)
    x = translator.prepare(volume)
    head = translator.head(x)
    out = translator.run_network(x, head).as_tensor()[0]
    boxed, net.sizes = net.sizes, set()
    monkeypatch.setattr(inference, "head_box", lambda head, spacing: (slice(None),) * 3)
    everywhere = translator.run_network(x, head).as_tensor()[0]
    box = [int(head.any(dim=tuple(a for a in range(3) if a != axis)).sum()) + 2 * 16 for axis in range(3)]
    assert max(max(size) for size in boxed) <= max(box) + 15 < min(min(size) for size in net.sizes)
    torch.testing.assert_close(out[head], everywhere[head], rtol=0, atol=1e-6)
    assert bool((out[~head] == -1).all())


def test_the_translation_of_a_head_does_not_depend_on_the_empty_field_of_view_around_it():
    """The generator's instance norms take statistics over the whole slab, so a network that saw the whole field of
    view would translate the same head differently in a scan with more empty space around it; seeing the head's
    box, it translates it the same."""
    torch.manual_seed(0)
    head_only = isotropic_volume()
    net = ModifiedUNet(3, (8, 16), 1).eval()
    translator = Translator(net, 3, (0.0, 1.0), "cpu", amp=False, mirror=False)
    heads = []
    for pad in (20, 36):
        volume = MetaTensor(torch.nn.functional.pad(head_only.as_tensor(), (pad,) * 6), meta=head_only.meta)
        x = translator.prepare(volume)
        head = translator.head(x)
        heads.append(translator.run_network(x, head).as_tensor()[0][(slice(pad, -pad),) * 3])
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=1e-6)


def test_parameterless_generator_is_accepted(synthetic_nifti):
    volume = load_volume(synthetic_nifti)
    translator = Translator(torch.nn.Identity(), k=3, target_range=normalisation_range(volume), device="cpu")
    assert_identity_output(translator(volume), volume, affine=SYNTHETIC_AFFINE)


# --- loading models ------------------------------------------------------------------------------------------


def saved_state(run: Path) -> dict:
    return torch.load(run / "models" / "model.pt", weights_only=True)


def assert_same_weights(module: torch.nn.Module, state: dict):
    """The module holds ``state``'s weights, in bf16 for a translator on a CPU that computes bf16
    (:meth:`~mri_translate.runtime.Precision.for_inference`)."""
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value.to(loaded[key].dtype)), key


def test_from_run_directory(tiny_run):
    translator = Translator.from_run(tiny_run, device="cpu")
    assert next(translator.generator.parameters()).dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert translator.k == 3
    assert translator.direction == "t1-to-t2"
    assert translator.target_range == tuple(TINY_NORMALIZATION["B"])
    assert translator.model_path == tiny_run / "models" / "model.pt"
    assert translator.device == torch.device("cpu")
    assert_same_weights(translator.generator, saved_state(tiny_run)["G_AB"])
    assert len(translator.model_sha256()) == 64


def test_from_run_model_file_other_direction(tiny_run):
    path = tiny_run / "models" / "model.pt"
    translator = Translator.from_run(path, direction="t2-to-t1", device="cpu", axis=1, batch_size=2)
    assert translator.target_range == tuple(TINY_NORMALIZATION["A"])
    assert translator.model_path == path and translator.axis == 1 and translator.batch_size == 2
    assert_same_weights(translator.generator, saved_state(tiny_run)["G_BA"])


def test_a_composed_model_translates_each_direction_as_its_own_run(tiny_run, tiny_standardized_run,
                                                                   synthetic_nifti, tmp_path):
    """compose_model: G_AB and its settings from one run, G_BA from another with that run's own pixel size and
    standardisers; each direction of the composed file translates voxel for voxel as its source does."""
    from mri_translate.bundle import compose_model

    other = tmp_path / "other.pt"  # another run: other G_BA weights, trained at 2 mm with standardisation
    state = saved_state(tiny_standardized_run)
    torch.manual_seed(1)
    state["G_BA"] = ModifiedUNet(3, (8, 16), 1).state_dict()
    torch.save(state, other)
    composed = compose_model(tiny_run, other, tmp_path / "composed" / "model.pt")
    for direction, source in (("t1-to-t2", tiny_run), ("t2-to-t1", other)):
        expected = Translator.from_run(source, direction, "cpu")(synthetic_nifti)
        got = Translator.from_run(composed, direction, "cpu")(synthetic_nifti)
        assert torch.equal(got.as_tensor(), expected.as_tensor()), direction
    saved = torch.load(composed, weights_only=True)
    assert saved["composed_from"] == {"t1-to-t2": sha256(tiny_run / "models" / "model.pt"),
                                      "t2-to-t1": sha256(other)}
    assert saved.get("spacing") is None and saved["directions"]["t2-to-t1"]["spacing"] == 2.0
    assert saved["version"] == __version__  # the package that wrote the file (tiny_run's says 0.1.0)
    assert_same_weights(inference.load_generator(saved, "t2-to-t1"), state["G_BA"])


def test_composing_sets_each_direction_s_inference_settings(tiny_run, tiny_standardized_run, synthetic_nifti,
                                                            tmp_path):
    """compose_model(inference_settings=...): the named direction translates as its run does with those
    settings, the other keeps its run's own (none here), the weights are the runs' own; a key that is no
    inference setting is refused."""
    from mri_translate.bundle import compose_model

    settings = {"inverted_weight": 0.25, "guided_radius_mm": 4}
    composed = compose_model(tiny_run, tiny_standardized_run, tmp_path / "model.pt",
                             inference_settings={"t2-to-t1": settings})
    reverse, forward = (Translator.from_run(composed, direction, "cpu") for direction in ("t2-to-t1", "t1-to-t2"))
    assert (reverse.inverted_weight, reverse.guided_radius_mm) == (0.25, 4.0)
    assert (forward.inverted_weight, forward.guided_radius_mm) == (0.0, 0.0)
    expected = Translator.from_run(tiny_standardized_run, "t2-to-t1", "cpu", **settings)(synthetic_nifti)
    assert torch.equal(reverse(synthetic_nifti).as_tensor(), expected.as_tensor())
    assert_same_weights(reverse.generator, saved_state(tiny_standardized_run)["G_BA"])
    with pytest.raises(ValueError, match=r"not inference settings of a model: \['k'\]"):
        compose_model(tiny_run, tiny_standardized_run, tmp_path / "other.pt",
                      inference_settings={"t1-to-t2": {"k": 1}})


def test_a_model_s_own_mirror_setting_applies_to_it_and_its_members_unless_given(tiny_run, tiny_standardized_run,
                                                                                 synthetic_nifti, tmp_path):
    """``model.mirror`` (set per direction by compose_model) decides whether a translator averages in the mirrored
    scan's translation, for the file's members too; the other direction keeps the default (mirrored), and a
    ``mirror`` given to the translator wins."""
    from mri_translate.bundle import average_models, compose_model

    composed = compose_model(tiny_run, tiny_run, tmp_path / "model.pt",
                             inference_settings={"t1-to-t2": {"mirror": False}})
    averaged = average_models(composed, [tiny_standardized_run], tmp_path / "averaged.pt")
    forward = Translator.from_run(averaged, "t1-to-t2", "cpu")
    assert forward.mirror is False and [m.mirror for m in forward.members] == [False]
    assert Translator.from_run(averaged, "t2-to-t1", "cpu").mirror is True
    assert Translator.from_run(averaged, "t1-to-t2", "cpu", mirror=True).members[0].mirror is True
    volume = load_volume(synthetic_nifti)
    once, mirrored = (Translator.from_run(tiny_run, device="cpu", mirror=m)(volume) for m in (False, True))
    assert (once.as_tensor() - mirrored.as_tensor()).abs().max() > 0.1  # mirroring changes this translation
    assert torch.equal(Translator.from_run(composed, device="cpu")(volume).as_tensor(), once.as_tensor())


def test_translated_values_lie_in_the_target_range(tiny_run, synthetic_nifti):
    out = Translator.from_run(tiny_run, device="cpu")(synthetic_nifti)
    low, high = TINY_NORMALIZATION["B"]
    assert tuple(out.shape[1:]) == SYNTHETIC_SHAPE
    assert float(out.min()) >= low and float(out.max()) <= high and float(out.std()) > 0
    np.testing.assert_allclose(np.asarray(out.affine), SYNTHETIC_AFFINE, atol=1e-4)


def test_unknown_direction(tiny_run):
    with pytest.raises(ModelError, match="t1-to-t3"):
        Translator.from_run(tiny_run, direction="t1-to-t3", device="cpu")


def test_foreign_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"foo": 1}, path)
    with pytest.raises(ModelError) as excinfo:
        Translator.from_run(path, device="cpu")
    assert str(path) in str(excinfo.value)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError) as excinfo:
        Translator.from_run(path, device="cpu")
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


class _Malicious:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"G_AB": _Malicious(marker), "config": {}}, path)
    assert not marker.exists()
    with pytest.raises(ModelError) as excinfo:
        Translator.from_run(path, device="cpu")
    assert str(path) in str(excinfo.value)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_configuration(tmp_path, tiny_run):
    state = saved_state(tiny_run)
    state["G_AB"] = ModifiedUNet(3, (8, 16, 32), 1).state_dict()  # deeper than config says
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="do not fit"):
        Translator.from_run(path, device="cpu")


def test_missing_model(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Translator.from_run(tmp_path / "nothing.pt", device="cpu")


def test_resolve_model_path(tmp_path, tiny_run):
    assert resolve_model_path(tiny_run) == tiny_run / "models" / "model.pt"
    assert resolve_model_path(tiny_run / "models" / "model.pt") == tiny_run / "models" / "model.pt"
    assert resolve_model_path(None) == DEFAULT_MODEL
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert resolve_model_path(tmp_path) == tmp_path / "checkpoint.pt"
    assert resolve_model_path(tmp_path / "missing.pt") == tmp_path / "missing.pt"  # checked when read
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(InputError, match="neither"):
        resolve_model_path(empty)


def test_background_stays_exactly_background(tiny_run, synthetic_nifti):
    """A skull-stripped-style input (zero outside the head): every background voxel of the output is exactly
    the target's background value (the low end of its range), with no haze; inside the head the network's
    values vary; a dark voxel enclosed by the head is not background."""
    translator = Translator.from_run(tiny_run, device="cpu")
    source = nib.load(str(synthetic_nifti)).get_fdata()
    out = translator(synthetic_nifti)[0].numpy()
    low = translator.target_range[0]
    assert np.all(out[source == 0] == np.float32(low))
    assert np.ptp(out[source > 0]) > 0 and np.mean(out[source > 0] == np.float32(low)) < 0.01

    holed = torch.as_tensor(source, dtype=torch.float32)[None]
    holed[0, 6, 5, 3] = 0  # a zero in the middle of the head (e.g. a resection cavity): kept as tissue
    background = ~inference.head_of(RobustNormalize()(holed)[0])
    assert not background[6, 5, 3] and bool(background[0, 0, 0])
    assert int(background.sum()) == int((source == 0).sum())  # all zeros outside the head, not the hole


def rician(volume: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Magnitude of ``volume`` plus complex Gaussian noise of ``sigma`` per channel, as a raw MR scan's."""
    rng = np.random.default_rng(seed)
    return np.hypot(volume + rng.normal(0, sigma, volume.shape), rng.normal(0, sigma, volume.shape)).astype(np.float32)


def test_a_noisy_background_is_all_background(tmp_path):
    """A scan with a Rician background (any raw clinical scan): every voxel outside the filled head becomes the
    target's background value, not only those at the normalisation's floor; inside the head the network's values
    remain. Before: 0.7 % of the voxels outside the head were forced and half the output there was haze."""
    shape = (48, 48, 24)
    grid = np.indices(shape).astype(np.float64)
    centre = (np.asarray(shape) - 1)[:, None, None, None] / 2
    inside = ((((grid - centre) / (np.asarray(shape) * 0.35)[:, None, None, None]) ** 2).sum(0) <= 1)
    clean = np.where(inside, 100.0 + 20 * np.sin(grid[0] / 3), 0.0)
    path = tmp_path / "noisy.nii.gz"
    nib.save(nib.Nifti1Image(rician(clean, sigma=4.0), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    translator = Translator(IdentityNet(), 3, (0.0, 1000.0), fuse_planes=False, mirror=False)
    out = translator(path)[0].numpy()
    outside = ~ndimage.binary_dilation(inside, iterations=2)
    assert np.all(out[outside] == 0.0)
    assert np.mean(out[inside] > 0.0) > 0.99


def standardized_state(volumes, spacing):
    """What model.pt holds for a model trained with landmark standardisation (both domains fitted on
    ``volumes``) at in-plane ``spacing``."""
    from mri_translate.bundle import export_state
    from mri_translate.standardize import LandmarkStandardizer

    fitted = LandmarkStandardizer.fit(volumes)
    return export_state({"A": [0.0, 1.0], "B": [0.0, 1.0]}, spacing, (fitted, fitted))


def test_qc_cycle_error_measures_the_generators_alone(synthetic_nifti):
    """convert --qc's CycleErrorMAE is the generators' own cycle, both ways without the refit on the inverted
    input, which makes any two translations in a row close to the identity): with generators that shift the
    anatomy, it equals |x - G_BA(G_AB(x))| of the networks alone and is well above the refitted cycle's error."""
    from mri_translate.convert import quality_checks
    from mri_translate.metrics import auto_mask

    volume = load_volume(synthetic_nifti)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)
    forward, backward = (Translator.from_state(state, direction, InPlaneShift(), inverted_weight=0.3,
                                               guided_radius_mm=4, mirror=False, fuse_planes=False)
                         for direction in ("t1-to-t2", "t2-to-t1"))
    checked = inference.translate_checked(forward, volume, synthetic_nifti, force=True)
    qc, _ = quality_checks(forward, backward, checked, volume)
    x = checked.canonical[0]
    mask = torch.from_numpy(auto_mask(((x + 1) / 2).numpy()))
    alone = (x - backward.run_network(forward.run_network(checked.canonical))[0]).abs()[mask].mean()
    refitted = (x - backward.run_normalized(checked.normalized)[0]).abs()[mask].mean()
    assert qc["CycleErrorMAE"] == pytest.approx(float(alone), rel=1e-5)
    assert qc["CycleErrorMAE"] > float(refitted) + 0.05
    assert "alone" in qc["Cycle"]


def test_landmarks_are_measured_on_the_grid_training_measures_them(tmp_path):
    """A model that resamples to 1 mm measures a 0.5 mm scan's landmarks on the scan resampled to 1 mm in-plane,
    as training does (data.load_slices), not on the native grid, where fine texture spreads the percentiles."""
    from mri_translate.standardize import LANDMARKS_KEY
    from mri_translate.transforms import resample_inplane

    rng = np.random.default_rng(0)
    shape = (64, 64, 8)
    inside = np.zeros(shape, bool)
    inside[8:56, 8:56] = True
    texture = 100 + 40 * rng.standard_normal(shape)  # voxel-scale texture: averaged away at 1 mm
    path = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(np.where(inside, texture, 0).astype(np.float32), np.diag([0.5, 0.5, 3.0, 1.0])),
             str(path))
    volume = load_volume(path)
    translator = Translator.from_state(standardized_state([volume], spacing=1.0), "t1-to-t2", IdentityNet())
    canonical = to_canonical(volume)
    model_grid = resample_inplane(canonical[0].float(), (0.5, 0.5, 3.0), 2, 1.0)
    expected, native = volume_landmarks(model_grid[None]), volume_landmarks(canonical)
    measured = torch.tensor(translator.prepare(volume).meta[LANDMARKS_KEY])
    assert torch.allclose(measured, expected) and not torch.allclose(measured, native, rtol=0.02)


def test_convert_applies_the_stored_landmarks(synthetic_nifti):
    """Standardisers fitted on the volume at x1, x2 and x3: an identity model maps the x1 volume onto the
    domain's typical (median) intensities, i.e. the x2 volume, voxel for voxel inside the head; the
    background stays exactly the background level."""
    volume = load_volume(synthetic_nifti)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)
    translator = Translator.from_state(state, "t1-to-t2", IdentityNet())
    out = translator(volume)[0].numpy()
    source = volume[0].numpy()
    inside = source > 0
    np.testing.assert_allclose(out[inside], 2 * source[inside], rtol=0.02)
    assert np.all(out[~inside] == out[~inside][0])
    assert translator.target_range[1] > 2 * np.percentile(source[inside], 98)


def test_the_translation_is_standardised_onto_the_target_domain(synthetic_nifti):
    """A generator whose output histogram drifts (a monotone squash of its input): with ``standardize_output``
    the translation's own foreground landmarks are mapped onto the target domain's scale, so its landmarks are
    the domain's typical ones (those of the x2 volume) as for an identity model; without it they drift. The
    background stays exactly the background level either way."""
    volume = load_volume(synthetic_nifti)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)

    class Squash(IdentityNet):
        def forward(self, x):
            return (x + 1) ** 2 / 2 - 1

    typical = volume_landmarks(volume * 2)[1:]
    inside = volume[0].numpy() > 0
    for standardize_output, close in ((True, True), (False, False)):
        out = Translator.from_state(state, "t1-to-t2", Squash(), standardize_output=standardize_output)(volume)
        landmarks = volume_landmarks(out)[1:]
        assert torch.allclose(landmarks, typical, rtol=0.03) is close, (landmarks, typical)
        background = out[0].numpy()[~inside]
        assert np.all(background == background[0]) and background[0] < out[0].numpy()[inside].min()


def test_the_inverted_input_reverses_the_tissue_order_on_the_target_scale(synthetic_nifti):
    """Inside the head the inverted input orders the voxels exactly the other way round (brightest -> darkest),
    its landmarks are the target domain's standard scale (it is standardised like a scan of that domain), and
    outside the head it is exactly -1."""
    volume = load_volume(synthetic_nifti)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)
    translator = Translator.from_state(state, "t1-to-t2", IdentityNet())
    x = translator.prepare(volume)[0]
    head = inference.head_of(x)
    inverted = inference.inverted_input(x, head, translator.target_standardizer)
    assert torch.all(inverted[~head] == -1) and inverted[head].min() > -1
    inside, flipped = x[head], inverted[head]
    order = torch.argsort(inside)
    assert torch.all(torch.diff(flipped[order]) <= 1e-6)  # non-increasing where the input increases
    assert float(flipped[order[0]] - flipped[order[-1]]) > 0.5
    landmarks = volume_landmarks(inverted[None])
    scale = translator.target_standardizer.scale
    np.testing.assert_allclose(landmarks[1:].numpy(), scale[1:].numpy(), atol=0.05)


def noisy(volume: MetaTensor, level: float, seed: int = 0) -> MetaTensor:
    """``volume`` with uniform noise up to ``level`` x its maximum in the background (zeros)."""
    rng = np.random.default_rng(seed)
    data = volume.clone()
    outside = data == 0
    data[outside] = torch.from_numpy(rng.uniform(0, level * float(data.max()), int(outside.sum()))).float()
    return data


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_inverted_weight_averages_the_inverted_input_into_the_translation(synthetic_nifti, noise):
    """``inverted_weight`` w: inside the head the normalised translation is (1 - w) x the generator's + w x the
    inverted input, voxel for voxel; outside it (background, and noise around the head) it is exactly -1, as
    without the weight; 0 leaves everything as it was."""
    volume = noisy(load_volume(synthetic_nifti), noise)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)
    x, alone = Translator.from_state(state, "t1-to-t2", IdentityNet()).translate_normalized(volume)
    translator = Translator.from_state(state, "t1-to-t2", IdentityNet(), inverted_weight=0.4)
    _, blended = translator.translate_normalized(volume)
    head = inference.head_of(x[0])
    inverted = inference.inverted_input(x[0], head, translator.target_standardizer)
    np.testing.assert_allclose(blended[0][head].numpy(), (0.6 * alone[0] + 0.4 * inverted)[head].numpy(), atol=1e-5)
    assert torch.equal(blended[0][~head], alone[0][~head])
    assert torch.all(blended[0][~head] == -1)
    assert float((blended - alone).abs().max()) > 0.1
    if noise:
        assert int((~head & (x[0] > -1)).sum()) > 100  # there is noise around the head, and it was not inverted


def test_guided_filter_keeps_a_local_linear_function_of_the_guide_and_takes_the_guide_s_edges():
    """``guided_filter``: values that are a linear function of the guide come back unchanged (up to the ``eps``
    shrinkage); a blurred copy of a sharp guide gets its edge back (a steeper jump, half the largest error);
    voxels outside the mask are not touched and do not take part; windows follow the voxel spacing."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    guide = torch.from_numpy(rng.uniform(-1, 1, (24, 24, 8))).float()
    mask = torch.ones(guide.shape, dtype=torch.bool)
    mask[:3] = False
    linear = 0.5 - 0.4 * guide
    refit = inference.guided_filter(linear, guide, mask, (1.0, 1.0, 3.0), radius_mm=3, eps=1e-6)
    np.testing.assert_allclose(refit.numpy(), linear.numpy(), atol=1e-3)
    step = torch.zeros(24, 24, 8)
    step[12:] = 1.0
    blurred = torch.from_numpy(ndimage.uniform_filter(step.numpy(), (5, 1, 1))).float()
    sharpened = inference.guided_filter(blurred, step, mask, (1.0, 1.0, 1.0), radius_mm=3)
    jump = sharpened[12] - sharpened[11]  # the step's edge, blurred over 5 voxels: 0.2
    assert float(jump.min()) > 0.5 and float((sharpened - step).abs().max()) < 0.5 * float((blurred - step).abs().max())
    noise = blurred.clone()
    noise[:3] = 7.0  # outside the mask: kept, and ignored by the windows
    refit = inference.guided_filter(noise, step, mask, (1.0, 1.0, 1.0), radius_mm=3)
    assert torch.equal(refit[:3], noise[:3]) and torch.allclose(refit[3:], sharpened[3:])
    one_slice = inference.guided_filter(blurred, step, mask, (1.0, 1.0, 10.0), radius_mm=3)  # 7 x 7 x 1 windows
    per_slice = inference.guided_filter(blurred[..., :1], step[..., :1], mask[..., :1], (1.0, 1.0, 1.0), 3)
    torch.testing.assert_close(one_slice[..., :1], per_slice)


def scipy_guided_filter(values, guide, mask, size, eps=inference.GUIDED_EPS) -> np.ndarray:
    """The textbook guided filter over the whole volume in float64 with scipy's box filter: the numbers
    :func:`inference.guided_filter` (torch, on the mask's box) must give."""
    m, v, g = (t.numpy().astype(np.float64) for t in (mask, values, guide))
    share = np.maximum(ndimage.uniform_filter(m, size), 1e-12)

    def mean(x):
        return ndimage.uniform_filter(x * m, size) / share

    a = (mean(g * v) - mean(g) * mean(v)) / (mean(g * g) - mean(g) ** 2 + eps)
    b = mean(v) - a * mean(g)
    return np.where(m > 0, mean(a) * g + mean(b), v)


def test_box_mean_is_scipy_s_uniform_filter_borders_mirrored_even_past_a_short_axis():
    """``box_mean`` (cumulative sums in torch) gives :func:`scipy.ndimage.uniform_filter`'s numbers within 1e-6,
    borders mirrored, for boxes wider than an axis (mirrored more than once) and for size 1 (unchanged)."""
    values = torch.from_numpy(np.random.default_rng(5).normal(size=(30, 11, 4))).float()
    for size in ((13, 13, 13), (1, 5, 9), (3, 1, 1)):
        np.testing.assert_allclose(inference.box_mean(values, size).numpy(),
                                   ndimage.uniform_filter(values.numpy().astype(np.float64), size), atol=1e-6)


def test_torch_guided_filter_equals_scipy_s_on_a_real_volume(shared_data):
    """On a real scan (tcga_du_7294, 64 axial slices, 1 mm) the torch refit equals the scipy / float64 one within
    1e-4: its T1w standardised, the head mask, the inverted input as the guide, the translation a smoothed T2w."""
    t1, t2 = (load_volume(shared_data / "volumes" / "tcga_du_7294" / f"{c}.nii.gz")[0, ..., 50:114]
              for c in ("t1", "t2"))
    x = RobustNormalize()(t1[None])[0]
    head = inference.head_of(x)
    guide = torch.where(head, -x, torch.full_like(x, -1.0))
    values = torch.from_numpy(ndimage.gaussian_filter(RobustNormalize()(t2[None])[0].numpy(), 2.0))
    refit = inference.guided_filter(values, guide, head, (1.0, 1.0, 1.0), radius_mm=6)
    np.testing.assert_allclose(refit.numpy(), scipy_guided_filter(values, guide, head, (13, 13, 13)), atol=1e-4)
    assert float((refit - values)[head].abs().mean()) > 0.01  # the refit did change the translation


def test_guided_filter_on_the_mask_s_box_equals_the_filter_on_the_whole_volume():
    """The refit is computed on the mask's bounding box grown by two window radii: the same numbers as the
    textbook filter run over the whole volume (written out here), for a mask away from the edges and one that
    touches them; an empty mask changes nothing."""
    rng = np.random.default_rng(3)
    values, guide = (torch.from_numpy(rng.uniform(-1, 1, (40, 36, 20))).float() for _ in range(2))
    inner = torch.zeros(values.shape, dtype=torch.bool)
    inner[12:25, 10:22, 6:13] = torch.from_numpy(rng.uniform(size=(13, 12, 7)) > 0.2)
    edge = inner.clone()
    edge[:4, :, :3] = True
    for mask in (inner, edge):
        refit = inference.guided_filter(values, guide, mask, (1.0, 1.5, 2.0), radius_mm=3)
        np.testing.assert_allclose(refit.numpy(), scipy_guided_filter(values, guide, mask, (7, 5, 5)), atol=1e-5)
        assert torch.equal(refit[~mask], values[~mask]) and not torch.equal(refit[mask], values[mask])
    empty = torch.zeros(values.shape, dtype=torch.bool)
    assert torch.equal(inference.guided_filter(values, guide, empty, (1.0, 1.0, 1.0), 3), values)


def test_guided_radius_refits_the_translation_on_the_inverted_input_inside_the_head(synthetic_nifti):
    """``guided_radius_mm``: inside the head the normalised translation is the generator's refitted on the
    inverted input (:func:`guided_filter`), then ``inverted_weight`` of the inverted input averaged in; outside
    it nothing changes."""
    volume = noisy(load_volume(synthetic_nifti), 0.02)
    state = standardized_state([volume * f for f in (1.0, 2.0, 3.0)], spacing=None)
    x, alone = Translator.from_state(state, "t1-to-t2", IdentityNet()).translate_normalized(volume)
    translator = Translator.from_state(state, "t1-to-t2", IdentityNet(), inverted_weight=0.3, guided_radius_mm=4)
    _, out = translator.translate_normalized(volume)
    head = inference.head_of(x[0])
    inverted = inference.inverted_input(x[0], head, translator.target_standardizer)
    refit = inference.guided_filter(alone[0], inverted, head, inference.voxel_spacing(x.affine), 4).clamp(-1, 1)
    np.testing.assert_allclose(out[0][head].numpy(), (0.7 * refit + 0.3 * inverted)[head].numpy(), atol=1e-5)
    assert torch.equal(out[0][~head], alone[0][~head])
    assert float((refit - alone[0])[head].abs().max()) > 0.01  # the refit did something


def test_the_model_s_own_inverted_weight_is_used_per_direction(synthetic_nifti):
    """A model file carries ``model.inverted_weight`` in its configuration, per direction in a composed file; a
    weight given to the translator wins; a weight outside [0, 1), or any weight for a model that does not
    standardise, is refused with the model named."""
    volume = load_volume(synthetic_nifti)
    state = standardized_state([volume], spacing=None)
    state["config"] = {"model": {"inverted_weight": 0.3}}
    state["directions"] = {"t2-to-t1": {"config": {"model": {"inverted_weight": 0.0}}}}
    assert Translator.from_state(state, "t1-to-t2", IdentityNet()).inverted_weight == 0.3
    assert Translator.from_state(state, "t2-to-t1", IdentityNet()).inverted_weight == 0.0
    assert Translator.from_state(state, "t1-to-t2", IdentityNet(), inverted_weight=0.0).inverted_weight == 0.0
    with pytest.raises(ModelError, match=r"model.pt: inverted_weight must be in \[0, 1\)"):
        Translator.from_state(state, "t1-to-t2", IdentityNet(), path=Path("model.pt"), inverted_weight=1.0)
    state["config"]["model"]["guided_radius_mm"] = 5
    assert Translator.from_state(state, "t1-to-t2", IdentityNet()).guided_radius_mm == 5.0
    assert Translator.from_state(state, "t2-to-t1", IdentityNet()).guided_radius_mm == 0.0
    with pytest.raises(ModelError, match=r"model.pt: guided_radius_mm must be >= 0"):
        Translator.from_state(state, "t1-to-t2", IdentityNet(), path=Path("model.pt"), guided_radius_mm=-2)
    state["standardize"] = None
    with pytest.raises(ModelError, match="needs a model that standardises"):
        Translator.from_state(state, "t1-to-t2", IdentityNet())


def test_inference_runs_at_the_model_spacing_and_comes_back_on_the_input_grid(synthetic_nifti, slab_axes):
    """A model trained at 0.5 mm pixels: the (1.0 x 1.2 mm in-plane) input is resampled to 0.5 mm for the
    network and back; an identity model then returns the input (up to interpolation) in its exact geometry."""
    volume = load_volume(synthetic_nifti)
    seen = []

    class Recorder(IdentityNet):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x

    state = standardized_state([volume], spacing=0.5)
    state["standardize"] = None
    state["normalization"]["B"] = list(normalisation_range(volume))
    out = Translator.from_state(state, "t1-to-t2", Recorder())(volume)
    assert tuple(out.shape[1:]) == SYNTHETIC_SHAPE
    np.testing.assert_allclose(np.asarray(out.affine), SYNTHETIC_AFFINE, atol=1e-5)
    assert all(h >= 2 * 13 and w >= 2 * 11 for h, w in seen)  # twice the pixels in-plane (then padded to /16)
    source = volume[0].numpy()
    core = ndimage.binary_erosion(source > 0, iterations=2)
    np.testing.assert_allclose(out[0].numpy()[core], source[core], rtol=0.05)


def test_the_normalisation_percentiles_stored_in_the_model_are_the_ones_used(synthetic_nifti):
    """model.pt records RobustNormalize's percentiles; a translator uses those, not restated defaults: with
    lower = 80 the 80th percentile of the volume (inside the head here) maps to -1: more background than with
    the default 0.5."""
    from mri_translate.bundle import export_state

    volume = load_volume(synthetic_nifti)
    state = export_state({"A": [0.0, 1.0], "B": [0.0, 1.0]})
    state["normalization"].update(lower=80.0, upper=99.0)
    translator = Translator.from_state(state, "t1-to-t2", IdentityNet())
    assert (translator.normalize.lower, translator.normalize.upper) == (80.0, 99.0)
    default = Translator.from_state(export_state({"A": [0.0, 1.0], "B": [0.0, 1.0]}), "t1-to-t2", IdentityNet())
    x80, x05 = translator.translate_normalized(volume)[0], default.translate_normalized(volume)[0]
    assert float((x80 == -1).float().mean()) > float((x05 == -1).float().mean()) + 0.05


@pytest.mark.slow
@pytest.mark.skipif(not __import__("mri_translate.runtime", fromlist=["x"]).cpu_has_bf16(),
                    reason="this CPU computes no bf16 natively (no avx512_bf16 / amx_bf16): translation stays fp32")
def test_bf16_on_the_cpu_translates_as_fp32_does(shared_data):
    """Where the CPU computes bf16 natively the shipped model translates under bf16 autocast (recorded as its
    precision) and scores within 0.05 dB in-brain PSNR of fp32 on a real pair (40 slices, one plane, no mirror: the
    network passes are what bf16 changes)."""
    from mri_translate import metrics

    t1, t2 = (load_volume(shared_data / "volumes" / "tcga_du_7294" / f"{c}.nii.gz")[..., 60:100] for c in ("t1", "t2"))
    mask = metrics.auto_mask(t2[0].numpy())  # 40 axial slices through the ventricles: the test's time
    scores = {}
    for amp in (True, False):
        translator = Translator.from_run(None, "t1-to-t2", "cpu", amp=amp, fuse_planes=False, mirror=False)
        assert translator.precision.describe() == ("bf16" if amp else "off")
        scores[amp] = metrics.paired_metrics(translator(t1)[0].numpy(), t2[0].numpy(), mask)["mask"]["psnr"]
    assert abs(scores[True] - scores[False]) < 0.05


@pytest.mark.skipif(not __import__("mri_translate.runtime", fromlist=["x"]).cpu_has_bf16(),
                    reason="this CPU does not compute bf16 natively: translation runs in fp32")
def test_a_translator_s_bf16_weights_translate_exactly_as_bf16_autocast(tiny_standardized_run):
    """On a bf16 CPU a translator loaded from a file keeps its generator's weights in bf16 (cast once, not in every
    pass), which gives bit for bit what bf16 autocast of the fp32 weights gives (as during training validation)."""
    from mri_translate.runtime import read_checkpoint

    volume = isotropic_volume()
    loaded = Translator.from_run(tiny_standardized_run, device="cpu")
    state = read_checkpoint(tiny_standardized_run / "models" / "model.pt")
    fp32 = inference.load_generator(state).to(memory_format=torch.channels_last)  # as from_run lays it out
    autocast = Translator.from_state(state, "t1-to-t2", fp32, "cpu")
    assert next(loaded.generator.parameters()).dtype == torch.bfloat16
    assert next(autocast.generator.parameters()).dtype == torch.float32
    assert loaded.precision.describe() == autocast.precision.describe() == "bf16"
    torch.testing.assert_close(loaded(volume), autocast(volume), rtol=0, atol=0)


@pytest.mark.parametrize("direction", ["t1-to-t2", "t2-to-t1"])
def test_a_model_averaged_with_another_translates_as_the_mean_of_the_two(direction, tiny_run, tiny_standardized_run,
                                                                         synthetic_nifti, tmp_path):
    """``average_models``: the file holds the other model as a member of each direction, and its translation (called
    or through convert's checked sequence) is the mean of the two models' own translations in [-1, 1], mapped to
    intensities as the first model maps its own; a model averaged with itself translates as itself."""
    from mri_translate.bundle import average_models
    from mri_translate.convert import convert_file

    averaged = Translator.from_run(average_models(tiny_standardized_run, [tiny_run], tmp_path / "avg.pt"), direction,
                                   device="cpu")
    first, other = (Translator.from_run(run, direction, device="cpu") for run in (tiny_standardized_run, tiny_run))
    assert len(averaged.members) == 1 and not first.members
    volume = load_volume(synthetic_nifti)
    a, b = (t.run_normalized(t.prepare(volume)) for t in (first, other))
    assert (a.as_tensor() - b.as_tensor()).abs().max() > 0.1  # two different models
    expected = first.restore(MetaTensor((a.as_tensor() + b.as_tensor()) / 2, meta=dict(a.meta)), volume)
    torch.testing.assert_close(averaged(volume).as_tensor(), expected.as_tensor(), rtol=1e-5, atol=1e-5)
    convert_file(averaged, synthetic_nifti, tmp_path / "converted.nii.gz", force=True)
    np.testing.assert_allclose(nib.load(tmp_path / "converted.nii.gz").get_fdata(), np.asarray(expected[0]),
                               rtol=1e-5, atol=1e-4)
    assert json.loads((tmp_path / "converted.json").read_text())["Parameters"]["averaged_models"] == 2

    assert torch.load(tmp_path / "avg.pt", weights_only=True)["version"] == __version__
    itself = Translator.from_run(average_models(tiny_run, [tiny_run], tmp_path / "self.pt"), direction, device="cpu")
    torch.testing.assert_close(itself(volume).as_tensor(), other(volume).as_tensor(), rtol=1e-5, atol=1e-5)


def test_the_bundle_s_translator_averages_a_model_s_members(tiny_run, tiny_standardized_run, synthetic_nifti,
                                                            tmp_path):
    """The bundle's inference.json builds its translator with ``Translator.from_state`` from the model file it
    reads: a file with members translates there as ``Translator.from_run`` (and so ``convert``) translates it, the
    members averaged in."""
    from monai.bundle import ConfigParser

    from mri_translate.bundle import average_models
    from mri_translate.model_file import TEMPLATE

    averaged = average_models(tiny_standardized_run, [tiny_run], tmp_path / "models" / "model.pt")
    parser = ConfigParser()
    parser.read_config(TEMPLATE / "configs" / "inference.json")
    parser["bundle_root"], parser["device"] = str(tmp_path), "cpu"
    bundled = parser.get_parsed_content("translator")
    assert len(bundled.members) == 1
    volume = load_volume(synthetic_nifti)
    alone = Translator.from_run(tiny_standardized_run, device="cpu")(volume)
    expected = Translator.from_run(averaged, device="cpu")(volume)
    assert (expected.as_tensor() - alone.as_tensor()).abs().max() > 1.0  # the member changes the translation
    torch.testing.assert_close(bundled(volume).as_tensor(), expected.as_tensor(), rtol=1e-5, atol=1e-4)


def test_a_model_with_members_is_not_averaged_in_again(tiny_run, tmp_path):
    """Members are single models: averaging with a file that has members of its own is refused, naming it."""
    from mri_translate.bundle import average_models

    averaged = average_models(tiny_run, [tiny_run], tmp_path / "avg.pt")
    with pytest.raises(ModelError, match=r"avg\.pt: has members of its own"):
        average_models(tiny_run, [averaged], tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()
