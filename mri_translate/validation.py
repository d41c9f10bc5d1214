"""Validation during training: co-registered T1w/T2w pairs the run never trains on, translated in both
directions exactly as ``convert`` would (:meth:`~mri_translate.inference.Translator.from_state`) and scored
inside the brain (:func:`~mri_translate.metrics.paired_metrics`: each image scaled by its own 99.5th
percentile in the reference's foreground mask).

Model selection rule: the checkpoint with the highest validation **score**, the mean in-brain PSNR over every
pair and both directions, becomes ``models/model.pt`` (the earliest wins a tie). Validation only chooses:
training stays unpaired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .io import atomic_path
from .pairing import check_pair

#: (direction, source key, target key, generator) of both directions.
DIRECTIONS = (("t1-to-t2", "t1", "t2", "G_AB"), ("t2-to-t1", "t2", "t1", "G_BA"))


@dataclass
class ValidationPair:
    """One subject's T1w and T2w on one grid, loaded once, with the in-brain masks of both references."""

    name: str
    volumes: dict
    masks: dict

    @classmethod
    def load(cls, t1, t2) -> ValidationPair:
        """Load a pair and check that it shares one grid.

        Raises:
            InputError: unusable file, or the two are not on one grid (:func:`~mri_translate.pairing.check_pair`).
        """
        a, b = check_pair(t1, t2)
        volumes = {"t1": a, "t2": b}
        masks = {key: metrics.auto_mask(volume[0].numpy()) for key, volume in volumes.items()}
        return cls(Path(t1).name, volumes, masks)


class Validator:
    """Scores the generators on validation pairs.

    Args:
        pairs: ``[(t1_path, t2_path), ...]`` of co-registered pairs.
        batch_size: slabs per forward pass.
    """

    def __init__(self, pairs, batch_size: int = 8):
        self.pairs = [ValidationPair.load(t1, t2) for t1, t2 in pairs]
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, nets: dict, export_state: dict, device) -> dict:
        """Translate every pair both ways with the current ``nets`` and the run's ``export_state``.

        Returns:
            ``{"score": mean in-brain PSNR, "psnr_<direction>": mean, "ssim_<direction>": mean, "pairs":
            [{"pair", "direction", "psnr", "ssim"}, ...]}`` (SSIM: the 3D SSIM map's mean in the mask).
        """
        from .inference import Translator

        rows = []
        try:
            for direction, source, target, generator in DIRECTIONS:
                translator = Translator.from_state(export_state, direction, nets[generator], device,
                                                   self.batch_size)
                for pair in self.pairs:
                    output = translator(pair.volumes[source])[0].numpy()
                    scores = metrics.paired_metrics(output, pair.volumes[target][0].numpy(), pair.masks[target])
                    rows.append({"pair": pair.name, "direction": direction,
                                 "psnr": scores["mask"]["psnr"], "ssim": scores["mask"]["ssim_3d"]})
        finally:
            for net in nets.values():
                net.train()
        summary = {"score": float(np.mean([row["psnr"] for row in rows]))}
        for direction, *_ in DIRECTIONS:
            mine = [row for row in rows if row["direction"] == direction]
            summary[f"psnr_{direction}"] = float(np.mean([row["psnr"] for row in mine]))
            summary[f"ssim_{direction}"] = float(np.mean([row["ssim"] for row in mine]))
        summary["pairs"] = rows
        return summary

    @staticmethod
    def write_csv(results: list[dict], path) -> None:
        """All validation results so far as one CSV (iteration, pair, direction, psnr, ssim, score), atomically."""
        lines = ["iteration,pair,direction,psnr_db,ssim,score_db"]
        for result in results:
            lines += [f"{result['iteration']},{row['pair']},{row['direction']},{row['psnr']:.4f},{row['ssim']:.4f},"
                      f"{result['score']:.4f}" for row in result["pairs"]]
        with atomic_path(Path(path)) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
