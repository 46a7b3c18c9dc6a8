"""Where a training step of the demo's network spends its time on the CPU (issue 30): torch.profiler over
steps of the trainer's own step (bench.py's build: main.py's loaders, trainer and loss), one batch again and
again, the operators by their own CPU time.

    python scripts/profile_step.py [--data_dir data] [--steps 10] [--flags --channels_last false]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data", help="the demo's data (synthetic.py --n 500 --seed 0)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=14)
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more main.py flags (last)")
    args = parser.parse_args(argv)
    import bench
    import torch
    from torch.profiler import ProfilerActivity, profile

    flags = bench.recipe_flags("default", "dense_net", True, (176, 102), 16, 1) + args.flags
    with tempfile.TemporaryDirectory() as tmp:
        files = bench.demo_files(Path(tmp), 0, (176, 102), args.data_dir)
        train, trainer, threads = bench.build({"flags": flags, "device": "cpu", "files": [str(f) for f in files]},
                                              Path(tmp) / "run")
        batch = next(iter(train))
        for _ in range(3):  # warm-up: allocations, oneDNN primitives
            trainer.train_step(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                trainer.train_step(batch)
    print(f"{threads}; {' '.join(flags)}; {args.steps} steps of {len(batch['label'])} images")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    sys.exit(main())
