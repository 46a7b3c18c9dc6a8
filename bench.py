"""Benchmarks that print figures (speed and memory goals live here, not in timed tests).

    python bench.py pipeline [--sizes 176x102] [--patients 40] [--epochs 2] [--flags --compile]
    python bench.py train  [--sizes 176x102 704x407] [--steps 3] [--json bench_train.json]
    python bench.py loader [--sizes 176x102 704x407] [--json bench_loader.json]

Every configuration is built from ``main.py``'s flags by the training session's own functions
(``hipx.training``: ``options.settings``, ``loaders.make_loaders``, ``loaders.augment_on_device``,
``session.build_trainer``) and timed through the trainer's own step
(``ClassifyTrainer.train_step``: batch preparation on the device, forward, the run's loss, backward,
optimiser), each in a fresh process.

``pipeline``: the data pipelines side by side (:data:`PIPELINES`: float32 handover as before, uint8
handover with augmentation in the workers, uint8 handover with augmentation on the device): bytes
per batch, loader images/s, the step alone (one batch reused), and real training epochs
(``train_one_epoch``) with the share of the epoch spent waiting for the loader.

``train``: training images/s and peak memory for DenseNet-BC-40 and densenet121, early and late
fusion, for (a) this project's default pipeline (stride-4 stem, cached decode + enhance, channels_last
where it helps, autocast on CUDA) and (b) the original recipe (DenseNet-BC with the full-resolution
stem, fp32, NCHW, float handover, decode + enhance on every read), measured in the same run, with the
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

import torch
from torch.utils.data import DataLoader

from hipx.core import runtime
from hipx.core.cli import add_data_dir, add_device
from hipx.data import augment
from hipx.data import filenames
from hipx.data import loader
from hipx.data import splits
from hipx.runs import runfiles
from hipx.training import loaders as run_data
from hipx.training import options, session

ROOT = Path(__file__).resolve().parent


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW, e.g. 704x407") from None
    return h, w


def demo_files(root: Path, n_patients: int, size: tuple[int, int], data_dir: str | None = None) -> list[Path]:
    """Training images of ``data_dir``, or of a small synthetic set (made once per size)."""
    import synthetic

    if data_dir:
        return loader.list_split(data_dir, "train")
    out = root / f"data_{size[0]}x{size[1]}"
    if not (out / "train").is_dir():
        synthetic.generate(out, n_patients, seed=0, size=size)
    return loader.list_split(out, "train")


def recipe_flags(recipe: str, model: str, late: bool, size: tuple[int, int], batch: int, workers: int) -> list[str]:
    """main.py flags of a benchmarked configuration: (a) this project's default pipeline, (b) the
    original recipe (full-resolution stem, fp32, NCHW, float handover, decode + enhance on every read)."""
    flags = ["--model", model, "--fusion", "late" if late else "early", "--image_size", str(size[0]), str(size[1]),
             "--batch_size", str(batch), "--workers", str(workers), "--augment", "cat_elastic", "--augment_p", "0.3"]
    if recipe == "original":
        flags += ["--dtype", "float", "--channels_last", "false", "--handover", "float", "--cache_gb", "0",
                  "--augment_device", "false"] + (["--stem", "original"] if model == "dense_net" else [])
    return flags


def build(cfg: dict, run_dir: Path, with_trainer: bool = True):
    """The training loader and trainer ``main.py`` builds for ``cfg['flags']`` on ``cfg['files']``
    (the session's make_loaders, augment_on_device and build_trainer: the trainer's own step and loss)."""
    args = options.build_parser().parse_args([*cfg["flags"], "--device", cfg["device"], "--bootstrap", "0"])
    settings, _ = options.settings(args, set())  # as main.py builds it: the flags once, checked
    threads = runtime.choose_threads(settings.cpus, settings.workers, gpu=runtime.cuda_wanted(settings.device),
                                     adaptive=False)  # one plan per configuration timed
    device = runtime.select_device(settings.device, None)
    files = [Path(f) for f in cfg["files"]]
    stats = loader.ClinicalStats.fit([filenames.decode(f) for f in files])
    device_augmenter = run_data.augment_on_device(settings, device)
    few = files[:settings.batch_size]  # val and test are not timed
    loaders = run_data.make_loaders(settings, stats, {"train": files, "val": few, "test": few},
                                    device_augment=device_augmenter is not None)
    if not with_trainer:
        return loaders["train"], None, threads
    config = settings.replace(in_chans=loaders["train"].dataset.channels)
    trainer = session.build_trainer(settings, config, loaders, stats, device, run_dir,
                                    device_augmenter=device_augmenter)
    return loaders["train"], trainer, threads


def batch_bytes(batch: dict) -> int:
    """Bytes of the tensors of one batch: what workers hand over and what crosses to the device."""
    return sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer, batches, steps: int) -> tuple[float, float]:
    """(images/s, seconds of the warm-up step) of ``steps`` calls of the trainer's own training step
    (batch preparation on the device, forward, the run's loss, backward, optimiser) after one
    warm-up step (allocations, cuDNN autotune, and with --compile the compilation)."""
    trainer.model.train()
    batch = next(batches)
    start = time.perf_counter()
    trainer.train_step(batch)
    synchronize(trainer.device)
    warmup = time.perf_counter() - start
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    count, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        trainer.train_step(batch)
        count += len(batch["label"])
    synchronize(trainer.device)
    return count / (time.perf_counter() - start), warmup


def forever(dl: DataLoader):
    epoch = 0
    while True:
        epoch += 1
        for part in (dl.dataset, dl.sampler):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        yield from dl


def repeat(batch: dict):
    while True:
        yield batch


def bench_one(cfg: dict) -> dict:
    """One configuration, in this process. ``cfg['what']``: ``train`` (steps fed by the loader, peak
    memory), ``step`` (the step alone: one batch again and again), ``loader`` (the loader alone),
    ``pipeline`` (bytes per batch, loader, step alone and real epochs with their wait share)."""
    torch.manual_seed(0)
    what = cfg["what"]
    with tempfile.TemporaryDirectory() as run_dir:
        dl, trainer, threads = build(cfg, Path(run_dir), with_trainer=what != "loader")
        out = {"flags": " ".join(cfg["flags"]), "threads": threads}
        if what in ("loader", "pipeline"):
            out["loader_img_s"] = loader_images_per_s(dl, cfg["loader_batches"])
        if what == "loader":
            return out
        first = next(iter(dl))
        out["batch_bytes"] = batch_bytes(first)
        if what in ("step", "pipeline"):
            out["step_img_s"], out["warmup_s"] = time_steps(trainer, repeat(first), cfg["steps"])
        if what == "train":
            out["images_per_s"], out["warmup_s"] = time_steps(trainer, forever(dl), cfg["steps"])
            out["peak_mem_gb"] = (torch.cuda.max_memory_allocated() if trainer.device.type == "cuda"
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9
        if what == "pipeline":
            for epoch in range(1, cfg["epochs"]):  # the first epoch also starts the workers and compiles
                trainer.train_one_epoch(epoch)
            cpu, wall = runtime.cpu_seconds(), time.perf_counter()
            last = trainer.train_one_epoch(cfg["epochs"])
            cpu, wall = runtime.cpu_seconds() - cpu, time.perf_counter() - wall
            out.update(epoch_img_s=last["train_images_per_s"], epoch_wait=last["train_data_wait"],
                       epoch_seconds=last["train_seconds"], epoch_cpu_percent=100 * cpu / wall)
        out.update(precision=trainer.precision.name, channels_last=trainer.memory_format == torch.channels_last,
                   device=str(trainer.device))
        return out


def run_isolated(cfg: dict) -> dict:
    """bench_one in a fresh process (own peak memory and threads); returns its JSON line."""
    out = subprocess.run([sys.executable, __file__, "_one", json.dumps(cfg)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        return {"flags": " ".join(cfg["flags"]),
                "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loader_images_per_s(dl: DataLoader, batches: int) -> float:
    it = forever(dl)
    next(it)  # workers started
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += len(next(it)["label"])
    return count / (time.perf_counter() - start)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cmd_train(args, device: str, tmp: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        files = [str(f) for f in demo_files(tmp, args.patients, size, args.data_dir)]
        for model in args.models:
            for late in (False, True):
                pair = {}
                for recipe in ("default", "original"):
                    flags = recipe_flags(recipe, model, late, size, args.batch, args.workers) + args.flags
                    pair[recipe] = run_isolated({"what": "train", "flags": flags, "files": files, "device": device,
                                                 "steps": args.steps})
                    print(json.dumps(pair[recipe]), file=sys.stderr)
                a, b = pair["default"], pair["original"]
                ratio = (a["images_per_s"] / b["images_per_s"]) if "error" not in a and "error" not in b else float("nan")
                rows.append({"size": f"{size[0]}x{size[1]}", "model": model, "fusion": "late" if late else "early",
                             "default_img_s": a.get("images_per_s"), "default_peak_gb": a.get("peak_mem_gb"),
                             "original_img_s": b.get("images_per_s"), "original_peak_gb": b.get("peak_mem_gb"),
                             "ratio": ratio, "default_precision": a.get("precision"),
                             "error": a.get("error") or b.get("error")})
    print(f"\ntraining images/s on {device_name(device)} (the trainer's step and loss, batch {args.batch}, "
          f"{args.steps} steps after warm-up, {args.workers} workers, cat_elastic p=0.3)")
    print(f"{'size':>8} {'model':>12} {'fusion':>6} | {'default img/s':>13} {'peak GB':>8} | "
          f"{'original img/s':>14} {'peak GB':>8} | {'a/b':>6}")
    for r in rows:
        print(f"{r['size']:>8} {r['model']:>12} {r['fusion']:>6} | {fmt(r['default_img_s'], '13.2f')} "
              f"{fmt(r['default_peak_gb'], '8.2f')} | {fmt(r['original_img_s'], '14.2f')} "
              f"{fmt(r['original_peak_gb'], '8.2f')} | {r['ratio']:6.2f}" + (f"  ({r['error']})" if r["error"] else ""))
    return rows


def cmd_loader(args, device: str, tmp: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        files = [str(f) for f in demo_files(tmp, args.patients, size, args.data_dir)]
        base = recipe_flags("default", "dense_net", True, size, args.batch, 0) + args.flags
        step = run_isolated({"what": "step", "flags": base, "files": files, "device": device, "steps": args.steps})
        step_rate = step.get("step_img_s", float("nan"))
        for workers in args.loader_workers:
            for names, p in [([], 0.0)] + [([n], q) for n in args.augments for q in (1.0, 0.3)]:
                flags = recipe_flags("default", "dense_net", True, size, args.batch, workers) + [
                    "--augment", ",".join(names), "--augment_p", str(p), "--augment_device", "false"] + args.flags
                got = run_isolated({"what": "loader", "flags": flags, "files": files, "device": device,
                                    "loader_batches": args.loader_batches})
                rate = got.get("loader_img_s", float("nan"))
                rows.append({"size": f"{size[0]}x{size[1]}", "workers": workers,
                             "augment": ",".join(names) or "none", "p": p, "loader_img_s": rate,
                             "step_img_s": step_rate, "loader_over_step": rate / step_rate})
    print(f"\ntraining loader vs the trainer's step alone (dense_net late fusion), "
          f"{device_name(device)}, batch {args.batch}")
    print(f"{'size':>8} {'workers':>7} {'augment':>12} {'p':>4} | {'loader img/s':>12} {'step img/s':>10} "
          f"{'loader/step':>11}")
    for r in rows:
        print(f"{r['size']:>8} {r['workers']:>7} {r['augment']:>12} {r['p']:4.1f} | {r['loader_img_s']:12.1f} "
              f"{r['step_img_s']:10.1f} {r['loader_over_step']:11.1f}")
    return rows


PIPELINES = {  # key: (name, main.py flags)
    "float": ("float32 handover, CPU augment (before)", ["--handover", "float", "--augment_device", "false"]),
    "uint8": ("uint8 handover, CPU augment", ["--handover", "uint8", "--augment_device", "false"]),
    "device": ("uint8 handover, device augment", ["--handover", "uint8", "--augment_device", "true"]),
}


def cmd_pipeline(args, device: str, tmp: Path) -> list[dict]:
    """The pipelines side by side, each in its own process: bytes per batch, loader images/s, the
    trainer's step alone, and real epochs (the last of ``--epochs``) with their share spent waiting."""
    rows = []
    for size in args.sizes:
        files = [str(f) for f in demo_files(tmp, args.patients, size, args.data_dir)]
        for name, extra in (PIPELINES[key] for key in args.pipelines):
            flags = recipe_flags("default", args.models[0], True, size, args.batch, args.workers) + extra + args.flags
            got = run_isolated({"what": "pipeline", "flags": flags, "files": files, "device": device,
                                "steps": args.steps, "loader_batches": args.loader_batches, "epochs": args.epochs})
            print(json.dumps(got), file=sys.stderr)
            rows.append({"size": f"{size[0]}x{size[1]}", "pipeline": name, "train_images": len(files), **got})
    print(f"\npipelines on {device_name(device)}: {args.models[0]} late fusion, batch {args.batch}, "
          f"{args.workers} workers, cat_elastic p=0.3, {rows[0]['train_images'] if rows else 0} training "
          f"images; epoch = the last of {args.epochs}; {rows[0].get('threads', '') if rows else ''}")
    print(f"{'size':>8} {'pipeline':>40} | {'MB/batch':>8} {'loader img/s':>12} {'step img/s':>10} | "
          f"{'epoch img/s':>11} {'waiting':>7} {'CPU use':>7} | {'warm-up s':>9}")
    for r in rows:
        wait = None if r.get("epoch_wait") is None else 100 * r["epoch_wait"]
        mb = None if r.get("batch_bytes") is None else r["batch_bytes"] / 1e6
        print(f"{r['size']:>8} {r['pipeline']:>40} | {fmt(mb, '8.2f')} {fmt(r.get('loader_img_s'), '12.1f')} "
              f"{fmt(r.get('step_img_s'), '10.1f')} | {fmt(r.get('epoch_img_s'), '11.1f')} {fmt(wait, '6.1f')}%"
              f" {fmt(r.get('epoch_cpu_percent'), '6.0f')}%"
              f" | {fmt(r.get('warmup_s'), '9.1f')}"
              + (f"  ({r['error']})" if r.get("error") else ""))
    return rows


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("pipeline", "train", "loader", "all"))
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(176, 102), splits.IMAGE_SIZE],
                   help="image sizes HxW (default: 176x102 and the full %dx%d)" % splits.IMAGE_SIZE)
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
    add_data_dir(p, default=None, unset="a synthetic set; a data folder's train/ is resized to each --sizes")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES),
                   help="pipelines the pipeline benchmark compares (default: all)")
    p.add_argument("--epochs", type=int, default=2, help="real epochs timed by the pipeline benchmark (the last "
                   "is reported; default: %(default)s)")
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="further main.py flags for every "
                   "configuration, e.g. --flags --compile (must come last)")
    add_device(p)
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = str(runtime.select_device(args.device, None))
    result = {"device": device_name(device), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("pipeline", "all"):
            result["pipeline"] = cmd_pipeline(args, device, Path(tmp))
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
