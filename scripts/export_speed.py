"""OMP_NUM_THREADS=1 taskset -c 1 python scripts/export_speed.py [--run RUN] [--batch 1 16] [--repeats 30]

The exported graph's file size, and the time per image of onnxruntime (CPU) against PyTorch (CPU) for the
same computation: the module the graph is exported from (``export.build_module``: network, sigmoid, flip
mean where asked), fed the same random inputs, one thread each by default. Without ``--run`` a demo-sized
run is made with random weights: DenseNet-BC depth 40, growth 12, ``--stem downsample``, 176 x 102,
early fusion (the demo's defaults). Prints one table (docs/export.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run folder, checkpoint or CV group to export (default: a demo-sized "
                   "run with random weights)")
    p.add_argument("--size", type=int, nargs=2, default=(176, 102), metavar=("H", "W"),
                   help="image size of the demo run (default: %(default)s)")
    p.add_argument("--tta", choices=("auto", "none", "flip"), default="none", help="(default: %(default)s)")
    p.add_argument("--batch", type=int, nargs="+", default=(1, 16), help="batch sizes (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per batch size, after 3 warm-up calls "
                   "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads of PyTorch and onnxruntime (default: %(default)s)")
    return p


def demo_run(folder: Path, size: tuple[int, int]) -> Path:
    """A run folder holding a random-weight DenseNet-BC-40 (early fusion) at ``size``."""
    import torch

    from hipx.models import build_model
    from hipx.runs import runfiles

    torch.manual_seed(0)
    model = build_model("dense_net", in_chans=5, late_fuse=False, depth=40, growth_rate=12, stem="downsample")
    config = {"model": "dense_net", "image_size": list(size), "depth": 40, "growthRate": 12, "norm": "bn",
              "act": "relu", "stem": "downsample", "fusion": "early", "in_chans": 5, "tta": "none"}
    runfiles.save_checkpoint(folder / runfiles.BEST, model.state_dict(), config,
                             {"mean": [0.5, 65.0, 25.0], "std": [0.5, 10.0, 4.0]}, 0.5, 0)
    return folder


def per_image_ms(calls, batch: int, repeats: int) -> list[float]:
    """Median time of each of ``calls`` over ``repeats`` rounds (after 3 warm-up rounds), per image, in ms.
    The calls alternate within a round, so a load that comes and goes on a shared machine slows both alike."""
    for _ in range(3):
        for call in calls:
            call()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, kept in zip(calls, times):
            start = time.perf_counter()
            call()
            kept.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) / batch for t in times]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from hipx.inference import export

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or demo_run(tmp / "run", tuple(args.size))
        out, _ = export.export(run, tmp / "model.onnx", tta=args.tta)
        members = export.load_members(run)
        module = export.build_module(members, args.tta)
        model = export.OnnxModel(out, threads=args.threads)
        checkpoint_bytes = sum(m.checkpoint.stat().st_size for m in members)
        print(f"{out.name}: {out.stat().st_size / 1e6:.2f} MB (best.pth: {checkpoint_bytes / 1e6:.2f} MB); "
              f"input {model.preprocessing['inputs'][0]['shape']}, torch {torch.__version__}, "
              f"{args.threads} thread(s), tta {args.tta}")
        print(f"{'batch':>5} | {'PyTorch ms/image':>16} | {'onnxruntime ms/image':>20} | {'ratio':>5} | max |diff|")
        for batch in args.batch:
            inputs = export.example_inputs(model.preprocessing["inputs"], batch=max(batch, 2))
            inputs = tuple(x[:batch] for x in inputs)
            feeds = [x.numpy() for x in inputs]
            with torch.inference_mode():
                expected = module(*inputs)[0].numpy()
                got = model.run(*feeds)["probability"]
                torch_ms, ort_ms = per_image_ms([lambda: module(*inputs), lambda: model.run(*feeds)], batch,
                                                args.repeats)
            print(f"{batch:>5} | {torch_ms:>16.2f} | {ort_ms:>20.2f} | {torch_ms / ort_ms:>5.2f} | "
                  f"{float(np.abs(got - expected).max()):.1e}")


if __name__ == "__main__":
    main()
