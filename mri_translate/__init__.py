"""mri-translate: unpaired T1w <-> T2w MRI contrast translation with a 2.5D CycleGAN, built on MONAI."""

__version__ = "0.6.0"
