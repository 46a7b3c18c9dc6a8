"""python export.py --run outs/<save_dir>/fold<fold> --out model.onnx
python export.py --run outs/<save_dir> --out ensemble.onnx      # fold ensemble of a --folds run

Export a trained run as one ONNX graph, with its preprocessing written beside it as JSON.
``--run`` is a run folder (its best.pth), a checkpoint file, or a cross-validation run group (the
mean of its fold models' probabilities, as predict.py averages them). The graph takes the image at
the run's size (and the clinical vector where the run uses one), batch dimension free, and gives
the osteoporosis probability -- with the flip mean where the run validated with ``--tta flip`` -- and,
for a graded target (``main.py --target``), the predicted value or class. ``<name>.preprocessing.json``
beside it says how to build the input from an image file exactly as the loader does, and holds the
threshold, fusion mode and target (docs/export.md). Both are written atomically; an existing
``--out`` is replaced only with ``--overwrite``. Before anything is written, onnxruntime's output is
checked against PyTorch's on random inputs.
"""
from __future__ import annotations

import argparse

from hipx.core.choices import TTA_CHOICES
from hipx.core.cli import add_output, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder outs/<save_dir>/fold<fold> (its best.pth), a "
                   "checkpoint file, or a cross-validation run group outs/<save_dir> (mean of its fold models)")
    add_output(p, "the ONNX file to write (name.onnx; name.preprocessing.json is written beside it)",
               overwrite="--out and its .preprocessing.json if they exist")
    p.add_argument("--tta", choices=("auto", *TTA_CHOICES), default="auto", help="flip: the graph averages each "
                   "image's probability with its left/right mirror's; auto (default): as the run was validated (--tta)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the graph, 18 or later (default: "
                   "%(default)s, read by onnxruntime 1.14 and later)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hipx.core import runtime
    from hipx.inference import export

    runtime.setup_logging()
    out, json_path = export.export(args.run, args.out, tta=args.tta, overwrite=args.overwrite, opset=args.opset)
    print(f"{out} and {json_path} written")
    return 0


if __name__ == "__main__":
    run_main(main)
