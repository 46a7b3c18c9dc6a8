"""Benchmarks that print figures (speed and memory goals live here, not in timed tests).

    python3 bench.py train  [--sizes 176x102 704x407] [--steps 3] [--json bench_train.json]
    python3 bench.py loader [--sizes 176x102 704x407] [--json bench_loader.json]

``train``: training images/s and peak memory for DenseNet-BC-40 and densenet121, early and late
fusion, for (a) this project's default pipeline (stride-4 stem, cached decode + enhance, channels_last
where it helps, autocast on CUDA) and (b) the original recipe (DenseNet-BC with the full-resolution
stem, fp32, NCHW, decode + enhance on every read, one process), measured in the same run, with the
ratio a/b. Each configuration runs in its own process so peak memory is its own.

``loader``: images/s of the training loader with no augmentation and with each augmentation
(``--augments``) at p = 1 and at the default p, with 0 and 2 workers (``--loader_workers``), next to
the images/s of the training step alone (one batch reused, no loader) of the default model at the same
size, and the ratio loader/step: above 1, the loader keeps up.

Both run on a temporary synthetic set (synthetic.py) and on CUDA when present.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import augment
import filenames
import loader
import runfiles
import runtime
from models import build_model

ROOT = Path(__file__).resolve().parent


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW, e.g. 704x407") from None
    return h, w


def demo_files(root: Path, n_patients: int, size: tuple[int, int]) -> list[Path]:
    """Training images of a small synthetic set (made once per size)."""
    import synthetic

    out = root / f"data_{size[0]}x{size[1]}"
    if not (out / "train").is_dir():
        synthetic.generate(out, n_patients, seed=0, size=size)
    return loader.list_split(out, "train")


def make_loader(files, size, recipe: str, names: list[str], p: float, workers: int, batch: int,
                late_fuse: bool) -> DataLoader:
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files])
    aug = augment.Augmenter(names, p, enhance=loader.enhance) if names else None
    ds = loader.HipDataset(files, stats, size, early_fuse=not late_fuse, augment=aug,
                           cache_gb=0.0 if recipe == "original" else 4.0)
    sampler = loader.EpochSampler(ds.labels)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0)


def bench_one(cfg: dict) -> dict:
    """One training configuration, in this process: images/s over ``steps`` steps after a warm-up."""
    torch.manual_seed(0)
    size, recipe = tuple(cfg["size"]), cfg["recipe"]
    device = torch.device(cfg["device"])
    files = [Path(f) for f in cfg["files"]]
    late = cfg["late_fuse"]
    original = recipe == "original"
    precision = runtime.select_precision("float" if original else "auto", device)
    channels_last = False if original else runtime.use_channels_last("auto", device, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg["model"], in_chans=2 if late else 5, late_fuse=late,
                        stem="original" if (original and cfg["model"] == "dense_net") else "downsample")
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    dl = make_loader(files, size, recipe, ["cat_elastic"], 0.3, cfg["workers"], cfg["batch"], late)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(batch):
        image = batch["image"].to(device, memory_format=fmt, non_blocking=True)
        args = (image, batch["clinical"].to(device)) if late else (image,)
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            loss = loss_fn(model(*args).float(), batch["label"].to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    it = iter(dl)
    first = next(it)
    step(first)  # warm-up (allocations, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    count, start = 0, time.perf_counter()
    for _ in range(cfg["steps"]):
        if cfg.get("compute_only"):  # the step alone: one batch again and again, no loader
            batch = first
        else:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dl)
                batch = next(it)
        step(batch)
        count += len(batch["label"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**{k: cfg[k] for k in ("model", "late_fuse", "recipe", "batch")}, "size": f"{size[0]}x{size[1]}",
            "images_per_s": count / seconds, "peak_mem_gb": peak / 1e9, "precision": precision.name,
            "channels_last": channels_last, "device": str(device)}


def run_isolated(cfg: dict) -> dict:
    """bench_one in a fresh process (own peak memory); returns its JSON line."""
    out = subprocess.run([sys.executable, __file__, "_one", json.dumps(cfg)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        return {**cfg, "files": None, "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loader_images_per_s(dl: DataLoader, batches: int) -> float:
    it = iter(dl)
    next(it)  # workers started
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dl)
            batch = next(it)
        count += len(batch["label"])
    return count / (time.perf_counter() - start)


def cmd_train(args, device: str, tmp: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        files = [str(f) for f in demo_files(tmp, args.patients, size)]
        for model in args.models:
            for late in (False, True):
                pair = {}
                for recipe in ("default", "original"):
                    cfg = {"model": model, "late_fuse": late, "recipe": recipe, "size": list(size), "files": files,
                           "device": device, "workers": args.workers, "batch": args.batch, "steps": args.steps}
                    pair[recipe] = run_isolated(cfg)
                    print(json.dumps({k: v for k, v in pair[recipe].items() if k != "files"}), file=sys.stderr)
                a, b = pair["default"], pair["original"]
                ratio = (a["images_per_s"] / b["images_per_s"]) if "error" not in a and "error" not in b else float("nan")
                rows.append({"size": f"{size[0]}x{size[1]}", "model": model, "fusion": "late" if late else "early",
                             "default_img_s": a.get("images_per_s"), "default_peak_gb": a.get("peak_mem_gb"),
                             "original_img_s": b.get("images_per_s"), "original_peak_gb": b.get("peak_mem_gb"),
                             "ratio": ratio, "default_precision": a.get("precision"),
                             "error": a.get("error") or b.get("error")})
    print(f"\ntraining images/s on {device_name(device)} (batch {args.batch}, {args.steps} steps after warm-up, "
          f"{args.workers} workers, cat_elastic p=0.3)")
    print(f"{'size':>8} {'model':>12} {'fusion':>6} | {'default img/s':>13} {'peak GB':>8} | "
          f"{'original img/s':>14} {'peak GB':>8} | {'a/b':>6}")
    for r in rows:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        print(f"{r['size']:>8} {r['model']:>12} {r['fusion']:>6} | {f(r['default_img_s'], '13.2f')} "
              f"{f(r['default_peak_gb'], '8.2f')} | {f(r['original_img_s'], '14.2f')} {f(r['original_peak_gb'], '8.2f')}"
              f" | {r['ratio']:6.2f}" + (f"  ({r['error']})" if r["error"] else ""))
    return rows


def cmd_loader(args, device: str, tmp: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        files = demo_files(tmp, args.patients, size)
        step = run_isolated({"model": "dense_net", "late_fuse": True, "recipe": "default", "size": list(size),
                             "files": [str(f) for f in files], "device": device, "workers": 0,
                             "batch": args.batch, "steps": args.steps, "compute_only": True})
        step_rate = step.get("images_per_s", float("nan"))
        for workers in args.loader_workers:
            for names, p in [([], 0.0)] + [([n], q) for n in args.augments for q in (1.0, 0.3)]:
                dl = make_loader(files, size, "default", names, p, workers, args.batch, late_fuse=True)
                rate = loader_images_per_s(dl, args.loader_batches)
                rows.append({"size": f"{size[0]}x{size[1]}", "workers": workers,
                             "augment": ",".join(names) or "none", "p": p, "loader_img_s": rate,
                             "step_img_s": step_rate, "loader_over_step": rate / step_rate})
                del dl
    print(f"\ntraining loader vs one training step of the default model (dense_net late fusion), "
          f"{device_name(device)}, batch {args.batch}")
    print(f"{'size':>8} {'workers':>7} {'augment':>12} {'p':>4} | {'loader img/s':>12} {'step img/s':>10} "
          f"{'loader/step':>11}")
    for r in rows:
        print(f"{r['size']:>8} {r['workers']:>7} {r['augment']:>12} {r['p']:4.1f} | {r['loader_img_s']:12.1f} "
              f"{r['step_img_s']:10.1f} {r['loader_over_step']:11.1f}")
    return rows


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "loader", "all"))
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(176, 102), (704, 407)],
                   help="image sizes HxW (default: 176x102 704x407)")
    p.add_argument("--models", nargs="+", default=["dense_net", "densenet121"], choices=("dense_net", "densenet121"))
    p.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="loader workers in the train benchmark")
    p.add_argument("--loader_batches", type=int, default=20, help="batches timed per loader setting")
    p.add_argument("--loader_workers", type=int, nargs="+", default=[0, 2],
                   help="worker counts the loader benchmark tries (default: 0 2)")
    p.add_argument("--augments", nargs="+", default=list(augment.AUGMENTATIONS), choices=augment.AUGMENTATIONS,
                   metavar="NAME", help="augmentations the loader benchmark times, each at p = 1 and 0.3 "
                   "(default: all)")
    p.add_argument("--patients", type=int, default=20, help="synthetic patients (2 images each) per size")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = str(runtime.select_device(args.device, None))
    result = {"device": device_name(device), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("train", "all"):
            result["train"] = cmd_train(args, device, Path(tmp))
        if args.what in ("loader", "all"):
            result["loader"] = cmd_loader(args, device, Path(tmp))
    if args.json:
        runfiles.write_json(args.json, result)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_one":
        print(json.dumps(bench_one(json.loads(sys.argv[2]))))
    else:
        main()
