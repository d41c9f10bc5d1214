"""Translate volumes with a trained generator: :class:`Translator` takes a volume and returns the
translated volume in the input's exact geometry, as a chain of named stages (each timed by :class:`StageClock`,
what ``convert --profile`` prints):

``volume (1, X, Y, Z)`` -> canonical (RAS) and standardise to [-1, 1] (:meth:`Translator.prepare`) -> head mask
(:meth:`Translator.head`) -> the network (:meth:`Translator.run_network`: per plane resampled to the model's
spacing, the 2.5D slabs that cut the head through the generator, batched, ``inference_mode``, bf16 on GPUs and on
CPUs that compute it natively, each slice's k predictions averaged, mirrored and planes averaged, background
outside the head) -> refit on the inverted input (:meth:`Translator.refit`, :func:`guided_filter`, :func:`inverted_input`)
-> target intensities, original orientation and affine (:meth:`Translator.restore`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from .config import RunConfig
from .contrast_check import ContrastVerdict, check_direction, check_skull_stripping
from .errors import InputError, ModelError
from .io import load_volume, voxel_spacing
from .model_file import DIRECTIONS, MEMBERS_KEY, direction_state, resolve_model_path, sha256
from .networks import ModifiedUNet, build_generator
from .runtime import inference_batch_size, precision_for, read_checkpoint, resolve_device
from .slabs import SliceAverage, pad_slices, slab_index, slicing_axes, through_plane_axis
from .standardize import LandmarkStandardizer, volume_landmarks
from .transforms import (RobustNormalize, denormalize, foreground_mask, from_canonical, largest_pieces,
                         resample_inplane, resample_onto, to_canonical)

def stored_model(state: dict, direction: str = "t1-to-t2", path="model"):
    """The :class:`~mri_translate.config.ModelConfig` a model file or checkpoint stores for ``direction`` (read
    with :func:`~mri_translate.runtime.read_checkpoint`; that direction's own, for a composed model)."""
    return RunConfig.from_dict({"model": direction_state(state, direction)["config"].get("model", {})},
                               str(path)).model


def load_generator(state: dict, direction: str = "t1-to-t2", path="model") -> ModifiedUNet:
    """The generator of ``direction`` rebuilt from the configuration stored in a model file or checkpoint
    (:func:`stored_model`).

    Raises:
        ModelError: the weights do not fit the stored configuration.
    """
    generator = build_generator(stored_model(state, direction, path))
    state = direction_state(state, direction)
    try:
        generator.load_state_dict(state[DIRECTIONS[direction]])
    except RuntimeError as err:
        raise ModelError(f"{path}: generator weights do not fit its configuration "
                         f"({str(err).splitlines()[0]})") from err
    return generator


def inference_generator(state: dict, direction: str, path, device, amp: bool = True) -> torch.nn.Module:
    """:func:`load_generator` laid out for inference on ``device``: channels_last (oneDNN's layout) and, where
    autocast runs bf16 on a CPU, its weights cast to bf16 once (:func:`~mri_translate.runtime.precision_for`)."""
    generator = load_generator(state, direction, path).to(memory_format=torch.channels_last)
    return precision_for(torch.device(device), bool(amp)).for_inference(generator)


#: the smallest separate piece of foreground that counts as head (mm^3): an ear or a slab of scalp does; the specks
#: that a noisy background scatters above the foreground threshold (a few voxels each) do not
HEAD_PIECE_MM3 = 500.0
#: the network sees the head's bounding box grown by this much (mm) on every side, not the whole field of view
HEAD_MARGIN_MM = 16.0


def head_of(volume: torch.Tensor, spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """The head (or brain) of a normalised ``(X, Y, Z)`` volume in [-1, 1] of voxel ``spacing`` (mm): its
    foreground (:func:`~mri_translate.transforms.foreground_mask`) where it forms the largest connected piece or
    one of at least :data:`HEAD_PIECE_MM3`, with the holes filled (dark CSF or a resection cavity enclosed by
    tissue count as head). Everything outside it is background, noise specks included."""
    from scipy import ndimage

    foreground = foreground_mask(torch.as_tensor(volume).cpu() + 1).numpy()
    head = largest_pieces(foreground, HEAD_PIECE_MM3 / float(np.prod(spacing)))
    return torch.from_numpy(ndimage.binary_fill_holes(head))


def head_box(head: torch.Tensor, spacing, margin_mm: float = HEAD_MARGIN_MM) -> tuple[slice, slice, slice]:
    """The bounding box of ``head`` ``(X, Y, Z)`` bool grown by ``margin_mm`` on every side (clipped to the volume),
    as slices of voxel ``spacing`` (mm); the whole volume when the head is empty."""
    box = []
    for axis, step in enumerate(spacing):
        present = torch.nonzero(head.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        if not len(present):
            return (slice(None),) * 3
        grow = int(np.ceil(margin_mm / float(step)))
        box.append(slice(max(int(present[0]) - grow, 0), min(int(present[-1]) + grow + 1, head.shape[axis])))
    return tuple(box)


def inverted_input(volume: torch.Tensor, head: torch.Tensor, standardizer: LandmarkStandardizer) -> torch.Tensor:
    """The translation with no learning: a normalised input ``(X, Y, Z)`` in [-1, 1] with its intensities
    reversed inside ``head`` (:func:`head_of`; bright white matter becomes the darkest tissue, dark CSF the
    brightest) and standardised onto the target domain's scale by its own landmarks, exactly as a scan of that
    domain is. It keeps the input's anatomy as sharp as it was acquired, which a generator trained on few
    subjects blurs. Returns ``(X, Y, Z)`` in [-1, 1], -1 outside ``head``."""
    raw = torch.where(head, 2 - volume, torch.zeros_like(volume))  # in [1, 3] inside, 0 outside
    out = standardizer(raw[None]).as_tensor()[0]
    out[~head] = -1.0
    return out


#: the guided filter's regularisation (in squared units of the [-1, 1] scale): below it, a window's variance of
#: the guide counts as flat and the window keeps its mean translation
GUIDED_EPS = 1e-3


def box_mean(x: torch.Tensor, size) -> torch.Tensor:
    """The mean of ``x`` ``(X, Y, Z)`` over a box of odd ``size`` voxels per axis centred on each voxel, borders
    mirrored (``d c b a | a b c d``): :func:`scipy.ndimage.uniform_filter`'s numbers, in torch on ``x``'s device.
    One cumulative sum per axis instead of a sum over each window. Returns float32, ``x``'s shape."""
    out = x.float()
    for axis, n in enumerate(size):
        if n == 1:
            continue
        length, r = out.shape[axis], n // 2
        if r <= length:  # the axis with its ends mirrored once: three copied pieces (a gather is 3x slower)
            mirrored = torch.cat([out.narrow(axis, 0, r).flip(axis), out,
                                  out.narrow(axis, length - r, r).flip(axis)], axis)
        else:  # a box wider than the axis: mirrored as often as it needs
            index = torch.arange(-r, length + r, device=x.device).remainder(2 * length)
            mirrored = out.index_select(axis, torch.where(index < length, index, 2 * length - 1 - index))
        totals = mirrored.cumsum_(axis)  # the running sums along the mirrored axis
        out = totals.narrow(axis, n - 1, length).clone()  # the first window's sum; then each window's difference
        out.narrow(axis, 1, length - 1).sub_(totals.narrow(axis, 0, length - 1))
        out.div_(n)
    return out


def guided_filter(values: torch.Tensor, guide: torch.Tensor, mask: torch.Tensor, spacing,
                  radius_mm: float, eps: float = GUIDED_EPS) -> torch.Tensor:
    """``values`` refitted as a local linear function of ``guide`` (the guided filter of He, Sun and Tang, 2013):
    in every window of ``radius_mm`` (per axis, in voxels of ``spacing`` mm, at least the voxel itself) the least
    squares ``a * guide + b`` of ``values``, ``a`` shrunk by ``eps``; each voxel averages the fits of the windows
    that hold it. Only voxels in ``mask`` take part and change. Where ``values`` is locally linear in ``guide``
    it is kept; elsewhere it takes ``guide``'s edges. All ``(X, Y, Z)`` on one device (the work stays there,
    :func:`box_mean`); returns ``values``' shape, float32. Computed on the mask's bounding box grown by two window
    radii (what the windows of mask voxels and their fits reach), the same result as on the whole volume for a
    fraction of the work."""
    size = tuple(2 * round(radius_mm / s) + 1 for s in spacing)
    if not bool(mask.any()):
        return values.float()
    inside = torch.nonzero(mask)
    box = tuple(slice(max(0, int(lo) - (n - 1)), min(extent, int(hi) + n)) for lo, hi, n, extent
                in zip(inside.min(0).values, inside.max(0).values, size, mask.shape))
    m, v, g = mask[box].float(), values[box].float(), guide[box].float()
    share = box_mean(m, size).clamp_min(1e-12)

    def mean(x):  # the window mean over mask voxels
        return box_mean(x * m, size) / share

    mean_g, mean_v = mean(g), mean(v)
    a = (mean(g * v) - mean_g * mean_v) / (mean(g * g) - mean_g ** 2 + eps)
    b = mean_v - a * mean_g
    out = values.float().clone()
    out[box] = torch.where(mask[box], mean(a) * g + mean(b), out[box])
    return out


class StageClock:
    """Wall time per named stage (seconds, summed over the calls since :meth:`reset`):
    ``with clock("network"): ...``; what ``convert --profile`` prints."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class SlabInferer(Inferer):
    """MONAI inferer for 2.5D generators: each volume of a batch ``(B, 1, X, Y, Z)`` (RAS, in [-1, 1]) is cut
    into k-slice slabs along ``axis`` (``None``: the through-plane axis from the MetaTensor's affine), run
    through the network ``batch_size`` slabs at a time (with ``amp`` under the autocast of
    :func:`~mri_translate.runtime.precision_for`), and each slice's k
    predictions are averaged. With ``mirror`` (test-time augmentation) the volume is also translated mirrored
    left-right (RAS axis 0; training flips left-right too) and the two translations are averaged, which halves
    the GAN's unstructured noise. Returns ``(B, 1, X, Y, Z)`` float32 on the input's device, a MetaTensor with
    the input's meta when the input is one."""

    def __init__(self, k: int = 3, axis: int | None = None, batch_size: int = 8, amp: bool = True,
                 mirror: bool = True):
        super().__init__()
        self.k, self.axis, self.batch_size, self.amp, self.mirror = k, axis, batch_size, amp, mirror

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, network, *args, axis: int | None = None,
                 wanted: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``axis``: slice along this axis for this call (else the inferer's own, else the through-plane one).
        ``wanted``: ``(N,)`` bool over the slices along that axis, those whose translation is needed (e.g. those
        that cut the head): slabs that hold none of them are not run and the other slices come out -1
        (background); the wanted ones are exactly what a full run gives. ``None``: all."""
        first = next(network.parameters(), None)
        device, dtype = (first.device, first.dtype) if first is not None else (inputs.device, torch.float32)
        outputs = []
        for volume in inputs:
            axis = self.axis if axis is None else axis
            if axis is None:
                axis = through_plane_axis(voxel_spacing(volume.affine if isinstance(volume, MetaTensor) else np.eye(4)))
            data = torch.as_tensor(volume[0]).cpu()
            out = self._translate(data, network, axis, device, dtype, wanted)
            if self.mirror:
                mirrored_wanted = wanted.flip(0) if wanted is not None and axis == 0 else wanted
                out = (out + self._translate(data.flip(0), network, axis, device, dtype, mirrored_wanted).flip(0)) / 2
            outputs.append(out[None].to(inputs.device))
        result = torch.stack(outputs)
        if isinstance(inputs, MetaTensor):  # keep meta and applied operations, so Invertd can undo them
            result = MetaTensor(result)
            result.copy_meta_from(inputs)
        return result

    def _translate(self, data: torch.Tensor, network, axis: int, device, dtype: torch.dtype,
                   wanted: torch.Tensor | None) -> torch.Tensor:
        """One ``(X, Y, Z)`` volume through the network (weights of ``dtype``) slab by slab (only the slabs holding a
        ``wanted`` slice), each slice's k predictions averaged. The slices go to ``device`` once, in ``dtype``; each
        batch of slabs is cut from them there and its predictions summed there (:class:`SliceAverage`)."""
        slices, layout = pad_slices(data, self.k, axis)
        slices = slices.to(device, dtype)
        run = torch.arange(len(slices))
        if wanted is not None:  # slab i holds slices i - k//2 .. i + k//2
            held = torch.nn.functional.max_pool1d(wanted.float()[None, None], self.k, 1, self.k // 2)[0, 0]
            run = run[held > 0]
        average = SliceAverage(layout, device)
        precision = precision_for(device, bool(self.amp))
        for start in range(0, len(run), self.batch_size):
            centres = run[start: start + self.batch_size].to(device)
            with precision.autocast():
                batch = slices[slab_index(centres, len(slices), self.k)]
                batch = batch.contiguous(memory_format=torch.channels_last)  # the fast layout of oneDNN and cuDNN
                average.add(centres, network(batch).float())
        out = average.volume().cpu()
        if wanted is not None:
            out.movedim(axis, 0)[~wanted] = -1.0
        return out


class TranslatorInferer(Inferer):
    """MONAI inferer that runs a whole :class:`Translator` (standardise, resample, slabs, average, back onto the
    input's grid and intensities), so the bundle's ``inference.json`` translates exactly as ``convert`` does.

    Takes the loaded scans ``(B, 1, X, Y, Z)`` (a batch of :func:`~mri_translate.io.load_volume` results, meta
    per item) and returns their translations in each input's own voxel order; ``network`` is the translator's
    generator, already inside it. Like ``convert``, each scan first passes the contrast check (a scan that looks
    like the wrong contrast stops the run with its name; ``force`` skips the check) and a whole-head scan for a
    model trained on brains only gets a warning."""

    def __init__(self, translator: Translator, force: bool = False):
        super().__init__()
        self.translator, self.force = translator, force

    def __call__(self, inputs: torch.Tensor, network=None, *args, **kwargs) -> torch.Tensor:
        return torch.stack([self.translate(volume) for volume in inputs])

    def translate(self, volume: MetaTensor) -> torch.Tensor:
        """One loaded scan ``(1, X, Y, Z)`` through convert's checks and the translator
        (:func:`translate_checked`)."""
        source = volume.meta.get("filename_or_obj", "input") if isinstance(volume, MetaTensor) else "input"
        return translate_checked(self.translator, volume, source, self.force).translated.as_tensor()


class Translator:
    """Volume in, translated volume out.

    >>> translator = Translator.from_run("runs/my_run", direction="t1-to-t2")   # doctest: +SKIP
    >>> t2w = translator(load_volume("sub-01_T1w.nii.gz"))                        # doctest: +SKIP

    Args:
        generator: a ``(B, k, H, W) -> (B, k, H, W)`` network in [-1, 1].
        k: slices per slab.
        target_range: ``(low, high)`` intensities that -1 and +1 map back to.
        device: torch device.
        batch_size: slabs per forward pass.
        amp: autocast: bf16 on a GPU (fp16 where it lacks bf16) and on a CPU that computes bf16 natively
            (:func:`~mri_translate.runtime.precision_for`; the shipped model within 0.003 dB of fp32).
        direction: ``t1-to-t2`` or ``t2-to-t1`` (recorded in sidecars).
        model_path: the file the weights came from (its checksum goes into sidecars).
        axis: RAS axis to slice along (0 sagittal, 1 coronal, 2 axial), the only one; ``None`` = the
            through-plane axis, and with ``fuse_planes`` the other two too where the scan allows.
        mirror: average with the translation of the left-right mirrored volume (:class:`SlabInferer`; twice
            the work; on tcga_du_7294 T1w -> T2w +0.4 dB in-brain PSNR and +0.06 SSIM).
        standardize_output: for a model that standardises (``target_standardizer``, set by :meth:`from_state`):
            standardise the translation itself, i.e. map its own foreground landmarks onto the target domain's
            standard scale, so its histogram is the target domain's whatever the generator's drift (leave-one-out
            on the real pairs: T1w -> T2w +0.5 and +2.3 dB in-brain PSNR, T2w -> T1w -0.2 and +0.7 dB).
        fuse_planes: on a near-isotropic scan (:func:`~mri_translate.slabs.slicing_axes`), translate it cut into
            axial, coronal and sagittal slabs and average the three translations (three times the work); a scan
            with thick slices is cut along its through-plane axis only.
        inverted_weight: the share of :func:`inverted_input` in the translation, in [0, 1) (needs a model that
            standardises; :meth:`from_state` sets the model's own ``model.inverted_weight`` unless given).
        guided_radius_mm: before that average, refit the translation inside the head as a local linear function
            of the inverted input in windows of this radius (:func:`guided_filter`); 0: off (needs a model that
            standardises; :meth:`from_state` sets the model's own ``model.guided_radius_mm`` unless given).
    """

    def __init__(self, generator: torch.nn.Module, k: int, target_range, device="cpu", batch_size: int = 8,
                 amp: bool = True, direction: str = "t1-to-t2", model_path: Path | None = None,
                 axis: int | None = None, mirror: bool = True, standardize_output: bool = True,
                 fuse_planes: bool = True, inverted_weight: float = 0.0, guided_radius_mm: float = 0.0):
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.precision = precision_for(self.device, bool(amp))  # decided once; recorded in sidecars
        self.clock = StageClock()  # time per stage (convert --profile)
        self._model_sha256 = None  # model_sha256(), once
        self.k, self.target_range, self.batch_size = k, tuple(target_range), batch_size
        self.direction, self.model_path, self.axis = direction, model_path, axis
        self.target_histogram = None  # the target domain's training histogram, for convert --qc
        self.normalize = RobustNormalize()  # or the source domain's LandmarkStandardizer (from_state)
        self.target_standardizer = None
        self.standardize_output, self.fuse_planes = standardize_output, fuse_planes
        self.inverted_weight, self.guided_radius_mm = inverted_weight, guided_radius_mm
        self.spacing = None  # in-plane pixel size (mm) the model was trained at; None: the scan's own
        self.trained_on_brains = None  # whether every source-domain training scan was skull-stripped (from_state)
        self.members: list[Translator] = []  # models whose translations are averaged in (average_members)
        self.inferer = SlabInferer(k, axis, batch_size, amp, mirror)

    @classmethod
    def from_run(cls, model=None, direction: str = "t1-to-t2", device: str = "auto", batch_size: int | None = None,
                 amp: bool = True, axis: int | None = None, mirror: bool | None = None,
                 standardize_output: bool = True, fuse_planes: bool = True,
                 inverted_weight: float | None = None, guided_radius_mm: float | None = None) -> Translator:
        """Load a generator from a run directory, ``model.pt``/``checkpoint.pt`` (``weights_only=True``), or
        the shipped default model when ``model`` is ``None``; the other arguments (members included) as
        :meth:`from_state`.

        Raises:
            InputError: no such file. ModelError: not an mri-translate model, unknown direction, or a batch size
            below 1.
        """
        if direction not in DIRECTIONS:
            raise ModelError(f"unknown direction '{direction}' (expected {' or '.join(DIRECTIONS)})")
        path = resolve_model_path(model)
        state = read_checkpoint(path)
        device = resolve_device(device)
        return cls.from_state(state, direction, inference_generator(state, direction, path, device, amp), device,
                              batch_size, amp, axis, path, mirror, standardize_output, fuse_planes, inverted_weight,
                              guided_radius_mm)

    @classmethod
    def from_state(cls, state: dict, direction: str, generator: torch.nn.Module, device="cpu",
                   batch_size: int | None = None, amp: bool = True, axis: int | None = None,
                   path: Path | None = None, mirror: bool | None = None, standardize_output: bool = True,
                   fuse_planes: bool = True, inverted_weight: float | None = None,
                   guided_radius_mm: float | None = None) -> Translator:
        """A translator from what a model file holds besides weights (``normalization``, see
        :func:`~mri_translate.bundle.export_state`) and a generator: the one home of how a model translates,
        shared by :meth:`from_run`, the bundle's inference.json and validation during training. ``batch_size``
        ``None``: the device's (:func:`~mri_translate.runtime.inference_batch_size`: 64 on a GPU, 8 on a CPU). A
        state with members for ``direction`` (:func:`~mri_translate.bundle.average_models`) gives a translator whose
        :attr:`members` are translated too and averaged in, each at its own inference settings
        (``inverted_weight`` and ``guided_radius_mm`` set this model's alone). ``mirror`` ``None``: the model's
        own ``model.mirror`` (default true), for the members too.

        Raises:
            ModelError: the state holds no normalisation for the target domain, or ``inverted_weight`` (given or
                the model's) is outside [0, 1), ``guided_radius_mm`` negative, or either set for a model that does
                not standardise, or ``batch_size`` below 1.
        """
        source, target = ("A", "B") if direction == "t1-to-t2" else ("B", "A")
        state = direction_state(state, direction)
        normalization = state.get("normalization")
        if normalization is None or target not in normalization:
            raise ModelError(f"{path or 'model'}: holds no intensity normalisation (a checkpoint of an older "
                             "version?); use the run's models/model.pt")
        batch_size = inference_batch_size(torch.device(device), batch_size)
        own = (state.get("config") or {}).get("model", {})
        mirror = bool(own.get("mirror", True)) if mirror is None else mirror
        translator = cls(generator, generator.k, normalization[target], device, batch_size, amp, direction, path,
                         axis, mirror, standardize_output, fuse_planes)
        translator.normalize = RobustNormalize(normalization["lower"], normalization["upper"])
        translator.target_histogram = normalization.get(f"histogram_{target}")
        translator.spacing = state.get("spacing")
        translator.trained_on_brains = (state.get("skull_stripped") or {}).get(source)
        if state.get("standardize"):
            translator.normalize = LandmarkStandardizer.from_dict(state["standardize"][source])
            translator.target_standardizer = LandmarkStandardizer.from_dict(state["standardize"][target])
            translator.target_range = tuple(float(v) for v in translator.to_target(torch.tensor([-1.0, 1.0])))
        inverted_weight = float(own.get("inverted_weight", 0.0) if inverted_weight is None else inverted_weight)
        guided_radius_mm = float(own.get("guided_radius_mm", 0.0) if guided_radius_mm is None else guided_radius_mm)
        if not 0 <= inverted_weight < 1 or (inverted_weight and translator.target_standardizer is None):
            raise ModelError(f"{path or 'model'}: inverted_weight must be in [0, 1) and needs a model that "
                             f"standardises (data.standardize), got {inverted_weight}")
        if guided_radius_mm < 0 or (guided_radius_mm and translator.target_standardizer is None):
            raise ModelError(f"{path or 'model'}: guided_radius_mm must be >= 0 and needs a model that "
                             f"standardises (data.standardize), got {guided_radius_mm}")
        translator.inverted_weight, translator.guided_radius_mm = inverted_weight, guided_radius_mm
        translator.members = [
            cls.from_state(member, direction, inference_generator(member, direction, path, device, amp), device,
                           batch_size, amp, axis, path, mirror, standardize_output, fuse_planes)
            for member in (state.get(MEMBERS_KEY) or {}).get(direction, [])]
        for member in translator.members:
            member.clock = translator.clock
        return translator

    def to_target(self, values: torch.Tensor) -> torch.Tensor:
        """Translated values in [-1, 1] to the target domain's intensities: the target standardiser's typical raw
        scale when the model standardises, else the target's training range (:func:`denormalize`)."""
        if self.target_standardizer is not None:
            return self.target_standardizer.to_raw(values.clamp(-1, 1))
        return denormalize(values, self.target_range)

    @torch.inference_mode()
    def run_normalized(self, x: MetaTensor) -> MetaTensor:
        """The whole translation of a canonical normalised volume ``x`` ``(1, X, Y, Z)`` in [-1, 1]:
        :meth:`head`, :meth:`run_network`, then :meth:`refit`. Returns ``(1, X, Y, Z)`` in [-1, 1] with ``x``'s
        meta."""
        head = self.head(x)
        return self.refit(x, self.run_network(x, head), head)

    def head(self, x: MetaTensor) -> torch.Tensor:
        """The head of a canonical normalised volume ``x`` ``(1, X, Y, Z)``: :func:`head_of` at its voxel spacing,
        ``(X, Y, Z)`` bool; computed once per scan and shared by :meth:`run_network` and :meth:`refit`."""
        with self.clock("head mask"):
            return head_of(x.as_tensor()[0], voxel_spacing(x.affine))

    @torch.inference_mode()
    def run_network(self, x: MetaTensor, head: torch.Tensor | None = None) -> MetaTensor:
        """The generator alone on a canonical normalised volume ``x`` ``(1, X, Y, Z)`` in [-1, 1]: the head's
        bounding box (:func:`head_box`, :data:`HEAD_MARGIN_MM` around it) along each of :meth:`axes`, resampled
        in-plane to the model's ``spacing`` (as in training), translated slab by slab and resampled back onto ``x``'s
        grid; those translations averaged, everything outside the head
        (``head``: :meth:`head`, computed when not given) set to exactly -1, with ``standardize_output``
        standardised onto the target domain's scale; all of it on the network's device. Returns ``(1, X, Y, Z)``
        in [-1, 1] on ``x``'s device with its meta."""
        spacing = voxel_spacing(x.affine)
        head = (self.head(x) if head is None else head).to(self.device)
        data = x.as_tensor()[0].float().to(self.device)
        axes = self.axes(spacing, data.shape)
        box = head_box(head, spacing)
        out = torch.full_like(data, -1.0)
        out[box] = sum(self._translate_along(data[box], spacing, axis, head[box]) for axis in axes) / len(axes)
        with self.clock("background and standardise output"):
            out[~head] = -1.0  # all outside the head is background, noisy or not (on x's grid)
            if self.standardizes_output:
                out = self.target_standardizer(out[None]).as_tensor()[0]  # background (-1) stays -1
        return MetaTensor(out[None].to(x.device), meta=dict(x.meta))

    @torch.inference_mode()
    def refit(self, x: MetaTensor, network: MetaTensor, head: torch.Tensor | None = None) -> MetaTensor:
        """The generator's translation ``network`` of ``x`` (both ``(1, X, Y, Z)`` in [-1, 1]) inside the head
        (``head``: :meth:`head`, computed when not given) refitted on :func:`inverted_input` (``guided_radius_mm``,
        :func:`guided_filter`) and ``inverted_weight`` of it averaged in; ``network`` itself when neither is
        set."""
        if not (self.inverted_weight or self.guided_radius_mm):
            return network
        head = self.head(x) if head is None else head
        with self.clock("refit"):  # on the network's device, in torch
            data, out, head = (t.to(self.device) for t in (x.as_tensor()[0].float(), network.as_tensor()[0], head))
            inverted = inverted_input(data, head, self.target_standardizer)
            if self.guided_radius_mm:
                out = guided_filter(out, inverted, head, voxel_spacing(x.affine), self.guided_radius_mm).clamp(-1, 1)
            out = torch.where(head, (1 - self.inverted_weight) * out + self.inverted_weight * inverted, out)
        return MetaTensor(out[None].to(network.device), meta=dict(network.meta))

    def _translate_along(self, data: torch.Tensor, spacing, axis: int, head: torch.Tensor) -> torch.Tensor:
        """``(X, Y, Z)`` in [-1, 1] translated in slabs along ``axis``, at the model's in-plane spacing; only the
        slices that cut the ``head`` (``(X, Y, Z)`` bool) are translated, the rest are -1 (the background they
        become anyway; resampling is in-plane, so a slice keeps its index)."""
        with self.clock("resample"):
            model_grid = resample_inplane(data, spacing, axis, self.spacing) if self.spacing else data
        with self.clock("network"):
            wanted = head.any(dim=tuple(a for a in range(3) if a != axis))
            out = self.inferer(model_grid[None, None], self.generator, axis=axis, wanted=wanted)[0, 0]
        with self.clock("resample"):
            return resample_onto(out, data.shape, axis) if self.spacing else out

    def axes(self, spacing, shape) -> list[int]:
        """The RAS axes a canonical scan of voxel ``spacing`` (mm) and ``shape`` is translated along: ``axis`` when
        given, else :func:`~mri_translate.slabs.slicing_axes` (all three with ``fuse_planes`` where it allows)."""
        return [self.axis] if self.axis is not None else slicing_axes(spacing, shape, self.fuse_planes)

    @property
    def mirror(self) -> bool:
        """Whether each translation is averaged with that of the left-right mirrored scan (:class:`SlabInferer`)."""
        return self.inferer.mirror

    @property
    def standardizes_output(self) -> bool:
        """Whether :meth:`run_normalized` standardises the translation: asked for (``standardize_output``) and
        the model has a target standardiser."""
        return self.standardize_output and self.target_standardizer is not None

    def prepare(self, volume: MetaTensor) -> MetaTensor:
        """The loaded input as the generator's domain sees it: canonical (RAS) and normalised, ``(1, X, Y, Z)`` in
        [-1, 1]. A model that standardises and resamples measures the scan's landmarks where training measured
        them, on the scan resampled in-plane to the model's ``spacing`` along its through-plane axis
        (:func:`~mri_translate.data.load_slices`), and maps the native grid with them."""
        with self.clock("canonical and standardise"):
            canonical = to_canonical(volume)
            if not (isinstance(self.normalize, LandmarkStandardizer) and self.spacing):
                return self.normalize(canonical)
            data, spacing = canonical.as_tensor()[0].float(), voxel_spacing(canonical.affine)
            model_grid = resample_inplane(data, spacing, through_plane_axis(spacing), self.spacing)
            return self.normalize(canonical, volume_landmarks(model_grid, self.normalize.percentiles))

    def translate_normalized(self, volume: MetaTensor) -> tuple[MetaTensor, MetaTensor]:
        """Canonical normalised input and translated output (:meth:`average_members` included), both
        ``(1, X, Y, Z)`` in RAS and in [-1, 1]."""
        canonical = self.prepare(volume)
        return canonical, self.average_members(volume, self.run_normalized(canonical))

    def average_members(self, volume: MetaTensor, normalized: MetaTensor) -> MetaTensor:
        """This model's translation ``normalized`` ``(1, X, Y, Z)`` in [-1, 1] of the loaded ``volume``, averaged
        with each of :attr:`members`' own translation of it (prepared, translated and refitted as that model
        does; the mean taken where all are in [-1, 1] on the target's standardised scale, mapped to intensities
        by :meth:`restore` as this model maps its own); ``normalized`` itself without members."""
        if not self.members:
            return normalized
        outputs = [member.run_normalized(member.prepare(volume)).as_tensor().to(normalized.device)
                   for member in self.members]
        mean = (normalized.as_tensor() + sum(outputs)) / (1 + len(outputs))
        return MetaTensor(mean, meta=dict(normalized.meta))

    def __call__(self, volume) -> MetaTensor:
        """Translate one volume.

        Args:
            volume: a ``MetaTensor`` ``(1, X, Y, Z)`` from :func:`~mri_translate.io.load_volume`, or a path.

        Returns:
            ``MetaTensor`` ``(1, X, Y, Z)`` float32 in the input's voxel order with its ``affine``; intensities
            in the target domain's training range; ``meta["intensity_range"]`` is the input's normalisation.
        """
        if not isinstance(volume, MetaTensor):
            volume = load_volume(volume)
        _, out = self.translate_normalized(volume)
        return self.restore(out, volume)

    def restore(self, normalized: MetaTensor, like: MetaTensor) -> MetaTensor:
        """Map a RAS ``(1, X, Y, Z)`` output in [-1, 1] to the target range and back into the voxel order and
        affine of ``like`` (the loaded input)."""
        with self.clock("restore"):
            out = MetaTensor(self.to_target(normalized.as_tensor()), meta=normalized.meta)
            return from_canonical(out, like.meta["original_axcodes"], like.meta["original_affine"])

    def model_sha256(self) -> str | None:
        """Checksum of the model file this translator was loaded from (read once)."""
        if self.model_path and self._model_sha256 is None:
            self._model_sha256 = sha256(self.model_path)
        return self._model_sha256


@dataclass
class CheckedTranslation:
    """One scan through convert's input checks and the translator: the contrast verdict (``None``: skipped by
    ``force``), the ``SkullStripping`` record (``None``: the model records nothing), the prepared input, the
    generator's own translation (:meth:`Translator.run_network`) and the output (after :meth:`Translator.refit`),
    in [-1, 1] on the RAS grid ``(1, X, Y, Z)``, and the translation in the input's own geometry."""

    contrast: ContrastVerdict | None
    skull: dict | None
    canonical: torch.Tensor
    network: torch.Tensor
    normalized: torch.Tensor
    translated: torch.Tensor


def translate_checked(translator: Translator, volume, source, force: bool = False,
                      strict: bool = False) -> CheckedTranslation:
    """The contrast check (unless ``force``), the skull-stripping check on the prepared input before the network
    runs (``strict``: refuse instead of warning), then the translation: the one sequence that ``convert`` and
    the bundle's :class:`TranslatorInferer` share.

    Raises:
        ``ContrastMismatchError``; ``InputError`` for a whole-head scan with ``strict`` (see
        :mod:`mri_translate.contrast_check`).
    """
    with translator.clock("input checks"):
        contrast = None if force else check_direction(volume, translator.direction, source)
    canonical = translator.prepare(volume)
    with translator.clock("input checks"):
        skull = check_skull_stripping(canonical, translator.trained_on_brains, source, strict)
    head = translator.head(canonical)
    network = translator.run_network(canonical, head)
    normalized = translator.average_members(volume, translator.refit(canonical, network, head))
    return CheckedTranslation(contrast, skull, canonical, network, normalized, translator.restore(normalized, volume))
