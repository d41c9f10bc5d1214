"""``mri-translate``: thin argument parsing onto the package's public functions.

Each command ``X`` is ``X_entry(args)`` calling one public function, so the CLI and the Python API are the
same thing. Heavy imports (torch, monai) happen inside the commands, so ``--help`` is instant. Errors that
are the user's input print one line on stderr and exit with their status (see docs/convert.md "Errors and exit
codes"); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130  # bad input: MriTranslateError.exit_code (2, 3)


def info_entry(args) -> int:
    """Print shape, spacing, orientation, dtype and range of a scan."""
    from .io import describe

    facts = describe(args.path, series_uid=args.series)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:>18}: {value}")
    return EXIT_OK


def train_entry(args) -> int:
    """Train a CycleGAN on unpaired T1w and T2w sources; the run directory becomes a MONAI bundle."""
    from .train import train

    overrides = {"train": {"iterations": args.iterations, "device": args.device, "seed": args.seed,
                           "log_every": args.log_every, "init": args.init}}
    if args.nproc and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    trainer = train(args.t1, args.t2, args.out, config=args.config, overrides=overrides, epochs=args.epochs,
                    resume=args.resume, overwrite=args.overwrite, progress_bar=not args.no_progress, val=args.val,
                    paired=args.paired or args.register or bool(args.region_masks), register=args.register,
                    regions=args.region_masks or ())
    if os.environ.get("RANK", "0") == "0":
        print(f"run bundle: {trainer.run_dir}")
    return EXIT_OK


def _relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """``train --nproc N``: run this same command in N processes on this machine through torchrun's API."""
    from torch.distributed.run import get_args_parser, run

    argv = [a for a in argv if not a.startswith("--nproc=")]
    if "--nproc" in argv:
        i = argv.index("--nproc")
        argv = argv[:i] + argv[i + 2:]
    run(get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "mri_translate.cli",
                                      *argv]))
    return EXIT_OK


AXES = {"sagittal": 0, "coronal": 1, "axial": 2, "0": 0, "1": 1, "2": 2}  # slabs.PLANES (not imported: fast --help)


def pair_entry(args) -> int:
    """Rigidly align a T1w/T2w pair of one subject and print where the pair on one grid is."""
    from .pairing import register

    done = register(args.t1, args.t2, args.out, onto=args.onto)
    print(f"pair on one grid: {done.t1} {done.t2} ({done.moved} resampled; mutual information "
          f"{done.metric_initial:.3f} -> {done.metric_final:.3f}; check {done.checkerboard})")
    return EXIT_OK


def convert_entry(args) -> int:
    """Translate a scan or a batch; exit 1 when any file of a batch failed."""
    from .convert import convert

    report = convert(args.input, args.output, model=args.model, direction=args.direction, device=args.device,
                     batch_size=args.batch_size, axis=None if args.axis is None else AXES[args.axis],
                     overwrite=args.overwrite, shard_spec=args.shard, progress=not args.no_progress, qc=args.qc,
                     dtype=args.dtype, bits=args.bits, gif=args.gif, reference=args.reference, mask=args.mask,
                     series_uid=args.series, dicom=args.dicom, anonymize=args.anonymize, force=args.force,
                     strict=args.strict, mirror=args.mirror, standardize_output=not args.raw_output,
                     fuse_planes=not args.single_plane, inverted_weight=args.inverted_weight,
                     guided_radius_mm=args.guided_radius, amp=not args.no_amp, profile=args.profile)
    print(report.summary() if len(report.done) != 1 or report.failed or report.skipped
          else f"wrote {report.done[0]}")
    return EXIT_FAILED if report.failed else EXIT_OK


def bids_entry(args) -> int:
    """BIDS App: translate the selected participants into a BIDS derivative dataset; exit 1 if any failed."""
    from .bids import GROUP_LEVEL_NOTE, run_bids_app

    report = run_bids_app(args.bids_dir, args.output_dir, args.analysis_level, args.participant_label,
                          args.session_label, model=args.model, direction=args.direction, device=args.device,
                          batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.no_progress,
                          force=args.force, qc=args.qc, strict=args.strict, brain_masks=args.brain_masks)
    print(GROUP_LEVEL_NOTE if report is None else report.summary())
    return EXIT_FAILED if report is not None and report.failed else EXIT_OK


def evaluate_entry(args) -> int:
    """Paired metrics in the mask and over the whole image, baselines, reports."""
    from .evaluate import evaluate, format_summary, write_reports

    mask = None if args.mask == "none" else args.mask
    report = evaluate(args.pred, args.ref, mask=mask, source=args.input, baselines=args.baselines,
                      target_example=args.target_example, region=args.region)
    write_reports(report, args.json, args.csv, args.plot)
    print(format_summary(report))
    return EXIT_OK


def gif_entry(args) -> int:
    """GIF sweep (and optional PNG montage) through same-shape volumes side by side."""
    from .visualize import write_volumes_gif

    write_volumes_gif(args.inputs, args.out, png=args.png, axis=AXES[args.axis], labels=args.labels)
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return EXIT_OK


def demo_entry(args) -> int:
    """Synthetic data -> a short CPU training -> translated volume and pictures, all under ``--out``."""
    from .demo import run_demo

    for line in run_demo(args.out, iterations=args.iterations, overwrite=args.overwrite):
        print(line)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="mri-translate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mri-translate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("info", help="describe a scan (shape, spacing, orientation, range)")
    p.add_argument("path", help="NIfTI file, DICOM series folder or file, or 2D image")
    p.add_argument("--series", help="DICOM SeriesInstanceUID when a folder holds several")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(entry=info_entry)

    p = commands.add_parser("train", help="train a CycleGAN on unpaired T1w/T2w sources")
    p.add_argument("--t1", nargs="+", required=True, help="T1w volumes, DICOM folders or folders of 2D images")
    p.add_argument("--t2", nargs="+", required=True, help="T2w volumes, DICOM folders or folders of 2D images")
    p.add_argument("--out", required=True, help="run directory (becomes a MONAI bundle)")
    p.add_argument("--config", help="YAML preset, e.g. configs/cpu-quick.yaml")
    p.add_argument("--iterations", type=int, help="optimisation steps (overrides the preset)")
    p.add_argument("--epochs", type=int, help="epochs of train.epoch_length iterations (instead of --iterations)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, help="random seed (runs on CPU are reproducible)")
    start = p.add_mutually_exclusive_group()  # a new run from a model, or this run continued
    start.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    start.add_argument("--init", metavar="MODEL",
                       help="fine-tune: start the generators from this model (run directory or .pt; 'default': the "
                            "shipped model) instead of random weights; it fixes their shape (train.init)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-every", type=int, metavar="N",
                   help="also log every loss term, raw, every N iterations (train.log_every; default 0: never)")
    p.add_argument("--nproc", type=int, help="train in N processes on this machine (torchrun; one per GPU)")
    p.add_argument("--paired", action="store_true",
                   help="a T1w and a T2w of one subject (same name but the contrast) form a co-registered pair that "
                        "adds a supervised L1 term; the other files stay unpaired")
    p.add_argument("--register", action="store_true",
                   help="with --paired: align each pair that is not already on one grid (rigid, mutual information) "
                        "instead of refusing it")
    p.add_argument("--region-masks", nargs="+", metavar="MASK",
                   help="with --paired: masks of regions the supervised L1 weighs loss.paired_region more (e.g. expert "
                        "lesion masks), each on its pair's T1w grid and named after its subject (sub-01_lesions.nii.gz)")
    p.add_argument("--val", nargs=2, action="append", metavar=("T1", "T2"),
                   help="a co-registered T1w/T2w pair never trained on (repeatable): scored every train.val_every "
                        "iterations; the best checkpoint becomes models/model.pt")
    p.set_defaults(entry=train_entry)

    p = commands.add_parser("pair", help="align one subject's T1w and T2w (rigid, mutual information) onto one grid")
    p.add_argument("--t1", required=True, help="T1w NIfTI")
    p.add_argument("--t2", required=True, help="T2w NIfTI of the same subject")
    p.add_argument("--out", required=True, help="folder for the resampled scan, a checkerboard PNG and a JSON report")
    p.add_argument("--onto", default="thicker", choices=["thicker", "t1"],
                   help="keep the scan with thicker slices fixed (default) or always the T1w")
    p.set_defaults(entry=pair_entry)

    p = commands.add_parser("convert", help="translate a scan, a folder, a glob or a BIDS dataset")
    p.add_argument("input", help="NIfTI, DICOM series folder/file, 2D image; or a folder, glob or BIDS root")
    p.add_argument("output", help="output .nii.gz/.nii (or .png for a 2D input); a folder for a batch")
    p.add_argument("--model", help="run directory or model.pt (default: the model shipped with the package)")
    p.add_argument("--direction", default="t1-to-t2", choices=["t1-to-t2", "t2-to-t1"])
    p.add_argument("--dtype", default="float32", choices=["float32", "int16"], help="NIfTI voxel type")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="bit depth of 2D image outputs")
    p.add_argument("--axis", choices=sorted(AXES), help="slice along this RAS axis only (default: the through-plane "
                                                       "axis, and on a near-isotropic scan all three)")
    p.add_argument("--single-plane", action="store_true",
                   help="slice a near-isotropic scan along its through-plane axis only instead of averaging its "
                        "axial, coronal and sagittal translations (3x faster)")
    p.add_argument("--batch-size", type=int, help="slabs per forward pass (default: 64 on a GPU, 8 on a CPU; "
                                                   "lower it on GPU OOM)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="average each translation with that of the left-right mirrored scan (twice the network "
                        "work); --no-mirror translates once (default: the model's own model.mirror)")
    p.add_argument("--no-amp", action="store_true",
                   help="full fp32 precision instead of bf16 autocast (used on GPUs and on CPUs with native bf16)")
    p.add_argument("--profile", action="store_true", help="print each stage's wall time per file to stderr")
    p.add_argument("--raw-output", action="store_true",
                   help="keep the generator's own intensity histogram instead of standardising the translation "
                        "onto the target domain's landmarks (models trained with data.standardize)")
    p.add_argument("--inverted-weight", type=float, metavar="W",
                   help="share in [0, 1) of the inverted input (its intensities reversed inside the brain and "
                        "standardised onto the target domain) averaged into the translation; 0: the generator "
                        "alone (default: the model's own, model.inverted_weight)")
    p.add_argument("--guided-radius", type=float, metavar="MM",
                   help="refit the translation inside the brain, in windows of this radius, as a local linear "
                        "function of the inverted input (a guided filter: the scan's own edges); 0: off "
                        "(default: the model's own, model.guided_radius_mm)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--gif", help="also write a GIF sweep: input | translated (| reference)")
    p.add_argument("--reference", help="a real target-contrast volume to show in the GIF")
    p.add_argument("--mask", help="brain mask on the input's grid (> 0 inside, e.g. from SynthStrip): translate the "
                                  "brain only, as a skull-stripped scan (for a whole-head input)")
    p.add_argument("--series", help="DICOM SeriesInstanceUID when a folder holds several")
    p.add_argument("--dicom", action="store_true",
                   help="write a derived DICOM series (OUTPUT = its folder) from a DICOM series input")
    p.add_argument("--anonymize", action="store_true",
                   help="with --dicom: also remove the patient's identity, for research export (DICOM PS3.15 "
                        "Basic Profile: a random pseudonym for PatientName/PatientID, no birth date, sex, study "
                        "dates or IDs, new study and frame-of-reference UIDs; PatientIdentityRemoved YES)")
    p.add_argument("--shard", help="I/N: convert only this worker's share of a batch (SLURM arrays)")
    p.add_argument("--force", action="store_true",
                   help="translate even when the input does not look like the --direction's source contrast")
    p.add_argument("--strict", action="store_true",
                   help="run the --qc checks and refuse (exit 2) a translation outside the model's training domain")
    p.add_argument("--qc", action="store_true",
                   help="reference-free checks in the sidecar and a *_cycle-error.nii.gz map")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(entry=convert_entry)

    p = commands.add_parser("bids", help="BIDS App: BIDS_DIR OUTPUT_DIR participant|group -> a derivative dataset")
    p.add_argument("bids_dir", help="BIDS dataset (dataset_description.json, sub-*/[ses-*/]anat/*_T1w.nii.gz)")
    p.add_argument("output_dir", help="derivative dataset to write, e.g. BIDS_DIR/derivatives/mri-translate")
    p.add_argument("analysis_level", choices=["participant", "group"], help="group has nothing to do")
    p.add_argument("--participant-label", "--participant_label", nargs="+", dest="participant_label", metavar="LABEL",
                   help="participants to process, e.g. 01 02 (with or without sub-; default: all)")
    p.add_argument("--session-label", "--session_label", "--session", nargs="+", dest="session_label", metavar="LABEL",
                   help="sessions to process (with or without ses-; default: all)")
    p.add_argument("--model", help="run directory or model.pt (default: the model shipped with the package)")
    p.add_argument("--direction", default="t1-to-t2", choices=["t1-to-t2", "t2-to-t1"])
    p.add_argument("--batch-size", type=int, help="slabs per forward pass (default: 64 on a GPU, 8 on a CPU; "
                                                   "lower it on GPU OOM)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--force", action="store_true",
                   help="translate even a scan that does not look like the --direction's source contrast")
    p.add_argument("--qc", action="store_true",
                   help="reference-free checks in each sidecar and a *_cycle-error.nii.gz map")
    p.add_argument("--strict", action="store_true",
                   help="like --qc, and a scan outside the model's training domain fails instead of a warning")
    p.add_argument("--brain-masks", "--brain_masks", dest="brain_masks", metavar="DIR",
                   help="derivative dataset with each scan's brain mask on its grid (sub-*/[ses-*/]anat/"
                        "<entities>_desc-brain_mask.nii.gz): translate within it, as convert --mask")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(entry=bids_entry)

    p = commands.add_parser("evaluate", help="score a translation against a real volume (in the brain mask)")
    p.add_argument("--pred", required=True, help="translated volume (or folder of 2D slices)")
    p.add_argument("--ref", required=True, help="real target-contrast volume on the same grid (or folder)")
    p.add_argument("--mask", default="auto", help="auto (default: foreground of --ref), none, or a mask file")
    p.add_argument("--input", help="the volume that was translated (inter-slice consistency, baselines)")
    p.add_argument("--baselines", action="store_true", help="also score identity and inverted-histogram-matched")
    p.add_argument("--target-example", help="volume whose histogram the baseline matches (default: --ref)")
    p.add_argument("--region", metavar="MASK",
                   help="also score inside this region of the brain (e.g. a lesion mask): PSNR, SSIM, MAE and its "
                        "contrast (mean over the median of the brain around it) in --pred and --ref, and their ratio")
    p.add_argument("--json", help="write the summary as JSON")
    p.add_argument("--csv", help="write per-slice metrics as CSV")
    p.add_argument("--plot", help="write a PNG of per-slice SSIM/PSNR")
    p.set_defaults(entry=evaluate_entry)

    p = commands.add_parser("gif", help="GIF sweep through volumes side by side (and a PNG montage)")
    p.add_argument("inputs", nargs="+", help="volumes of the same shape")
    p.add_argument("--out", required=True, help="output .gif")
    p.add_argument("--png", help="also write a PNG montage of a few slices per volume")
    p.add_argument("--axis", default="axial", choices=sorted(AXES), help="sweep direction (default axial)")
    p.add_argument("--labels", nargs="+", help="one label per input (default: file names)")
    p.set_defaults(entry=gif_entry)

    p = commands.add_parser("demo", help="synthetic data -> short training -> translated volume and GIFs")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--iterations", type=int, default=1000, help="training iterations (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(entry=demo_entry)
    return parser


def main(argv=None) -> int:
    """Console entry point: parse, run one command, turn known errors into one line and an exit status."""
    from .errors import MriTranslateError

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.entry(args)
    except MriTranslateError as err:
        if args.debug:
            raise
        print(f"mri-translate {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if args.debug or type(err).__name__ != "OutOfMemoryError":
            raise
        hint = "--batch-size" if args.command == "convert" else "data.batch_size or data.crop in --config"
        print(f"mri-translate {args.command}: error: the GPU ran out of memory; lower {hint} "
              "(or use --device cpu)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mri-translate {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
