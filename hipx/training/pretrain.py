"""Self-supervised pretraining of the image encoder (SimCLR) on unlabelled radiographs: the session that
``pretrain.py`` starts once its flags are checked.

    history = start(args, given, argv)   # pretrain.py's main, after build_parser and check_args

The run folder ``outs/<save_dir>/`` holds ``encoder.pth`` (the ``features.*`` tensors ``main.py
--pretrained`` loads), ``history.csv``, ``loss_curve.png``, ``config.json``, ``train.log``,
``images.csv``, ``skipped.csv`` and ``last.pth``, from which ``--resume`` continues exactly. The method,
its views and loss are :mod:`hipx.training.selfsup`; a run stops as a training run does
(``session.interrupted``, ``session.remove_run``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from hipx.core.cli import UserError
from hipx.core.runconfig import FIELDS
from hipx.runs import runfiles

# torch is imported inside the functions: pretrain.py imports this module once its flags are checked

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "osteoporosis-hip-pretrain/1"
ENCODER = "encoder.pth"  # = models.pretrained.ENCODER_FILE, what main.py --pretrained RUN finds
CURVE, SKIPPED, IMAGES = "loss_curve.png", "skipped.csv", "images.csv"
# where and how fast this session runs, not what the run is: the only flags --resume lets differ
SESSION_KEYS = ("device", "gpus", "workers", "out_root", "save_dir", "resume", "overwrite", "tensorboard")
NETWORK_FLAGS = ("model", "depth", "growthRate", "norm", "act", "stem")  # main.py's, named alike


def start(args: argparse.Namespace, given: set[str], argv: list[str] | None = None) -> dict:
    """Run the pretraining ``pretrain.py`` parsed (``given``: the flags set on its command line; ``argv``
    as given, for the command that starts it again). A new run that fails or is interrupted before its
    first epoch is saved leaves nothing behind. Returns the last epoch's row of the history."""
    from hipx.core import runtime
    from hipx.training.session import interrupted, remove_run, saved_epochs  # how a run stops, as main.py's do

    dist_info = runtime.init_distributed(args.device)
    runtime.setup_logging(level=logging.INFO if dist_info.is_main else logging.WARNING)
    args.save_dir = args.save_dir or time.strftime("pretrain-%Y%m%d-%H%M%S")
    out = Path(args.out_root) / args.save_dir
    config, state = prepare(args, given, out, dist_info.is_main)
    if state is not None and len(state["history"]) >= int(config["epoch"]):
        return finished(out, config, state, dist_info.is_main)
    args.threads = runtime.choose_threads(args.cpus, args.workers, gpu=runtime.cuda_wanted(args.device),
                                          adaptive=False)  # fixed: pretraining's loop does not share cores yet
    if args.deterministic:
        runtime.make_deterministic()
    created = next((p for p in (out, *out.parents) if not p.exists() and p.parent.exists()), None) \
        if config is None and dist_info.is_main else None
    try:
        result = pretrain(args, out, config, state, dist_info)
    except KeyboardInterrupt:
        interrupted(out, created, command(*(sys.argv[1:] if argv is None else argv)), resume_command(args))
    except BaseException:
        if created is not None and saved_epochs(out) == 0:
            remove_run(created)  # a failed start leaves nothing behind
        raise
    runtime.close_log_file()
    runtime.leave_distributed(dist_info)
    return result


def command(*arguments: str) -> str:
    """``python pretrain.py ARGUMENTS`` as the user can paste it."""
    python = sys.executable or "python"
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    return shlex.join([python, "pretrain.py", *map(str, arguments)])


def resume_command(args: argparse.Namespace) -> str:
    extra = ["--out_root", str(args.out_root)] if args.out_root != "outs" else []
    if args.tensorboard:  # a session setting: the command that continues keeps logging
        extra.append("--tensorboard")
    return command("--resume", "--save_dir", args.save_dir, *extra)


# ----------------------------------------------------------------------------- run folder

def load_last(path: Path) -> dict:
    """A pretraining ``last.pth``, read safely; one clear error for a truncated or foreign file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not its own
        raise ValueError(f"cannot load {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pretraining checkpoint of pretrain.py (format {CHECKPOINT_FORMAT!r})")
    return state


def prepare(args: argparse.Namespace, given: set[str], out: Path, is_main: bool = True
            ) -> tuple[dict | None, dict | None]:
    """(config, last.pth state) of the run to continue, or (None, None) for a new run. A new run
    refuses an existing folder unless ``--overwrite``; ``--resume`` copies the run's settings onto
    ``args`` and refuses a flag given with another value."""
    if not args.resume:
        if out.exists() and any(out.iterdir()):
            if not args.overwrite:
                how = "continue it with --resume" if (out / runfiles.LAST).is_file() else "it has no epoch saved"
                raise UserError(f"{out} already holds a run ({how}); nothing was changed. Choose another --save_dir, "
                                "or pass --overwrite to replace it")
            if is_main:  # under torchrun one process removes it, before the barrier in pretrain()
                shutil.rmtree(out)
        return None, None
    config_file = out / runfiles.CONFIG
    if not config_file.is_file():
        raise UserError(f"--resume: no pretraining run at {out} (no {runfiles.CONFIG}); check --save_dir and "
                        "--out_root, or start a new run without --resume")
    config = runfiles.read_json(config_file)
    if config.get("method") != "simclr":
        raise UserError(f"--resume: {out} is not a pretrain.py run (its {runfiles.CONFIG} names no pretraining "
                        "method); main.py continues training runs")
    if not args.folders:  # argparse sets a positional nargs="*" to [] whether given or not
        given = given - {"folders"}
    for key in sorted(given - set(SESSION_KEYS)):
        if key in config and _differs(getattr(args, key), config[key]):
            raise UserError(f"--{key} {getattr(args, key)}: the run {out} was configured with --{key} {config[key]}, "
                            "and --resume continues a run exactly as configured (leave the flag out), or start a "
                            "new run with another --save_dir")
    for key, value in config.items():
        if key in vars(args) and key not in SESSION_KEYS:
            setattr(args, key, value)
    state = load_last(out / runfiles.LAST) if (out / runfiles.LAST).is_file() else None
    return config, state


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    return a != b


def load_images(args: argparse.Namespace):
    """Decode every image once: (uint8 (N, H, W), one source file per image, skipped (file, reason))."""
    import numpy as np

    from hipx.data import filenames
    from hipx.training import selfsup
    from hipx.core.runtime import progress

    files = selfsup.find_images(args.folders) if args.folders else []
    if args.data_dir is not None:
        listed = [f for split in args.splits for f in filenames.list_split(args.data_dir, split)]
        known = {f.resolve() for f in files}
        files += [f for f in listed if f.resolve() not in known]
    size = tuple(args.image_size)
    images, sources, skipped = [], [], []
    for path in progress(files, enabled=len(files) >= 50, desc="decode", leave=False):
        try:
            parts = selfsup.decode(path, size, args.roi)
        except (ValueError, OSError) as exc:  # a bad file is counted, never fatal to a long run
            skipped.append({"file": str(path), "reason": " ".join(str(exc).split())})
            continue
        images += parts
        sources += [str(path)] * len(parts)
    if not images:
        raise UserError(f"none of the {len(files)} image files could be read, e.g. {skipped[0]['file']}: "
                        f"{skipped[0]['reason']}")
    return np.stack(images), sources, skipped


def fingerprint(sources: list[str]) -> str:
    """What a resumed run must see again: the same images in the same order."""
    return hashlib.sha256("\n".join(sources).encode("utf-8")).hexdigest()[:16]


def save_last(path: Path, model, optimizer, scheduler, scaler, history: list[dict], config: dict) -> None:
    """Everything --resume needs to continue exactly after the last epoch of ``history``, atomically."""
    import torch

    state = {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "history": history, "config": json.loads(json.dumps(config)), "epoch": len(history)}
    buf = io.BytesIO()
    torch.save(state, buf)
    runfiles.write_bytes(path, buf.getvalue())


def save_encoder(path: Path, model) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(model.encoder_state(), buf)
    runfiles.write_bytes(path, buf.getvalue())


def draw_curve(path: Path, history: list[dict]) -> None:
    """The loss per epoch against chance (log(2B - 1)), and the share of positives found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [row["loss"] for row in history], marker="o", ms=3, label="NT-Xent loss")
    ax.axhline(history[0]["chance_loss"], color="grey", ls="--", lw=1, label="chance, log(2B - 1)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    right = ax.twinx()
    right.plot(epochs, [row["pos_top1"] for row in history], color="tab:orange", marker=".", ms=3,
               label="positives found")
    right.set_ylim(0, 1)
    right.set_ylabel("share of views whose nearest is their pair")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    ax.set_title("self-supervised pretraining (SimCLR)")
    fig.tight_layout()
    runfiles.atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------- training

class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def train_one_epoch(model, data, optimizer, scaler, precision, device, memory_format, temperature: float,
                    dist_info, epoch: int, seed: int, board=None) -> dict:
    """One pass over the views of every image; returns the mean loss, the share of positives found
    and timing. Under torchrun the negatives are the whole global batch. ``board`` (board.Board, or
    None) is shown the first batch's views."""
    from contextlib import nullcontext

    import torch

    from hipx.data import loader
    from hipx.training import selfsup
    from hipx.core.runtime import progress

    for part in (data.dataset, data.sampler):
        part.set_epoch(epoch)  # fresh order and views every epoch, the same on a resumed run
    torch.manual_seed(seed * 100003 + epoch)
    model.train()
    total = found = count = 0.0
    start = time.perf_counter()
    bar = progress(data, enabled=dist_info.is_main, desc=f"epoch {epoch}", leave=False)
    for step, batch in enumerate(bar):
        views = [loader.network_image(batch[k].to(device, non_blocking=True), None, False) for k in ("view1", "view2")]
        if step == 0 and board is not None and board.shows_inputs(epoch):
            for name, view in zip(("view1", "view2"), views):
                board.inputs(epoch, view, f"inputs/{name}")
        image = torch.cat(views).contiguous(memory_format=memory_format)  # one pass: BatchNorm sees both views
        autocast = torch.autocast(device.type, dtype=precision.dtype) if precision.dtype else nullcontext()
        with autocast:
            z1, z2 = model(image).float().chunk(2)
        loss, hit = selfsup.nt_xent(z1, z2, temperature, gather(z1, z2, dist_info))
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss.item()} in epoch {epoch}; try a lower --lr or --dtype float")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(z1)
        total, found, count = total + loss.item() * n, found + hit.item() * n, count + n
        bar.set_postfix(loss=f"{total / count:.4f}")
    seconds = time.perf_counter() - start
    if dist_info.enabled:
        sums = torch.tensor([total, found, count], dtype=torch.float64,
                            device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(sums)
        total, found, count = sums.tolist()
    batch = data.batch_size * dist_info.world
    return {"epoch": epoch, "loss": total / max(count, 1), "pos_top1": found / max(count, 1),
            "chance_loss": selfsup.chance_loss(batch), "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds, "images_per_s": count / max(seconds, 1e-9)}


def gather(z1, z2, dist_info):
    """Under torchrun: every rank's projections and this rank's offset among them. The other ranks'
    rows come without gradient, this rank's keep theirs (each rank differentiates its own anchors and
    DDP averages: open_clip's default, without a deprecated autograd all_gather)."""
    if not dist_info.enabled:
        return None
    import torch
    import torch.distributed as dist

    gathered = []
    for z in (z1, z2):
        parts = [torch.empty_like(z) for _ in range(dist_info.world)]
        dist.all_gather(parts, z.detach().contiguous())
        parts[dist_info.rank] = z
        gathered.append(torch.cat(parts))
    return gathered[0], gathered[1], dist_info.rank * len(z1)


def pretrain(args: argparse.Namespace, out: Path, config: dict | None, state: dict | None, dist_info) -> dict:
    """Pretrain (or continue from ``state``, last.pth) the encoder of ``config`` (None: a new run, its
    configuration made here) on the images of ``args``; returns the last epoch's row of the history."""
    from contextlib import closing, nullcontext

    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from hipx.core import runtime
    from hipx.training import board, selfsup

    device = runtime.select_device_for(dist_info, args.device, args.gpus)
    images, sources, skipped = load_images(args)
    config = run_config(args, out, config, images, sources, skipped, dist_info)
    open_run(args, out, config, state, sources, skipped, dist_info)
    runtime.seed_everything(args.seed, dist_info.rank)
    precision = runtime.select_precision(args.dtype, device)
    channels_last = runtime.use_channels_last(args.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    logger.info("run folder %s; device %s%s; %s; precision %s", out, device,
                f" (rank 0 of {dist_info.world})" if dist_info.enabled else "", args.threads, precision.name)
    batch = args.batch_size * dist_info.world
    logger.info("%d images from %d files (%d skipped)%s at %d x %d; SimCLR, batch %d (chance loss %.3f)",
                len(images), len(set(sources)), len(skipped), " (femur crops)" if args.roi else "",
                *args.image_size, batch, selfsup.chance_loss(batch))
    model, net, optimizer, scheduler, scaler, history = build(args, config, state, device, precision, memory_format,
                                                              dist_info)
    data = views_loader(images, args, device, dist_info)
    tensorboard = board.open_board(args.tensorboard and dist_info.is_main, out, len(history))
    with logging_redirect_tqdm(), closing(tensorboard) if tensorboard else nullcontext():
        epochs = runtime.progress(range(len(history) + 1, args.epoch + 1), enabled=dist_info.is_main, desc="epochs",
                                  initial=len(history), total=args.epoch)
        for epoch in epochs:
            try:
                row = train_one_epoch(net, data, optimizer, scaler, precision, device, memory_format,
                                      args.temperature, dist_info, epoch, args.seed, tensorboard)
            except NonFiniteLoss as exc:
                raise UserError(str(exc)) from None
            scheduler.step()
            history.append(row)
            if dist_info.is_main:
                save_epoch(out, model, optimizer, scheduler, scaler, history, config)
            if tensorboard is not None:
                tensorboard.epoch(epoch, row)
            logger.info("epoch %d  loss %.4f (chance %.3f)  positives found %.3f  %.1f img/s", epoch, row["loss"],
                        row["chance_loss"], row["pos_top1"], row["images_per_s"])
    if dist_info.is_main:
        print(encoder_line(out, config, history))
    return history[-1]


def encoder_line(out: Path, config: dict, history: list[dict]) -> str:
    """Where the run's encoder is and the command that fine-tunes it."""
    network = " ".join(f"--{k} {config[k]}" for k in NETWORK_FLAGS if k == "model" or config[k] != FIELDS[k].default)
    return (f"encoder ({len(history)} epochs, final loss {history[-1]['loss']:.4f}) in {out / ENCODER}; fine-tune "
            f"with: python main.py --pretrained {out} {network} --image_size "
            f"{' '.join(map(str, config['image_size']))} ...")


def finished(out: Path, config: dict, state: dict, is_main: bool = True) -> dict:
    """``--resume`` of a run that trained all its epochs: nothing to continue, so nothing is read or
    written (as main.py --resume of a finished run, and torchvision's and timm's train.py, whose loop
    then has no epoch left): a line saying so and where its encoder is. Returns its last epoch's row."""
    history = state["history"]
    if is_main:
        logger.info("the pretraining run %s finished all %d epochs; nothing to resume, nothing changed",
                    out, int(config["epoch"]))
        print(encoder_line(out, config, history))
    return history[-1]


def run_config(args: argparse.Namespace, out: Path, config: dict | None, images, sources: list[str],
               skipped: list[dict], dist_info) -> dict:
    """The run's configuration: a resumed run's own (refused when its images changed), or a new run's
    from the flags and the images found. Refuses images too few for one batch."""
    import torch

    from hipx.data import loader

    if len(images) // dist_info.world < args.batch_size:
        raise UserError(f"{len(images)} images{f' over {dist_info.world} processes' if dist_info.enabled else ''} "
                        f"do not fill one batch of --batch_size {args.batch_size}; give more images or a smaller "
                        "batch")
    if config is not None and config["images_sha"] != fingerprint(sources):
        raise UserError(f"--resume: the images are not those the run {out} started with ({config['n_images']} "
                        f"images, now {len(images)}); a resumed run needs the same images. Start a new run instead")
    if config is None:
        config = {**{k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")},
                  "method": "simclr", "in_chans": loader.IMAGE_CHANNELS, "n_images": len(images),
                  "n_files": len(set(sources)), "n_skipped": len(skipped), "images_sha": fingerprint(sources),
                  "torch": torch.__version__, "world_size": dist_info.world}
    return config


def open_run(args: argparse.Namespace, out: Path, config: dict, state: dict | None, sources: list[str],
             skipped: list[dict], dist_info) -> None:
    """The run folder made (rank 0, once every rank has read the images), its train.log opened, its
    config.json (a new run), images.csv and skipped.csv written, and the skipped files logged."""
    import torch

    from hipx.core import runtime

    if dist_info.enabled:
        torch.distributed.barrier()  # every rank has read the images before rank 0 creates the folder
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        runtime.setup_logging(out / "train.log")
        if state is None:
            runfiles.write_json(out / runfiles.CONFIG, config)
        runfiles.write_csv(out / SKIPPED, skipped, ["file", "reason"])
        runfiles.write_csv(out / IMAGES, [{"file": f} for f in dict.fromkeys(sources)], ["file"])
    if skipped:  # once the run's log exists, so that train.log says it too
        logger.warning("skipped %d of %d files that could not be read (listed in %s), e.g. %s: %s", len(skipped),
                       len(skipped) + len(set(sources)), out / SKIPPED, skipped[0]["file"], skipped[0]["reason"])


def build(args: argparse.Namespace, config: dict, state: dict | None, device, precision, memory_format, dist_info):
    """The SimCLR network on ``device`` (and its DDP wrapper ``net``, which trains), its optimiser, cosine
    schedule, gradient scaler and history: new, or restored from ``state`` (last.pth). Returns
    (model, net, optimizer, scheduler, scaler, history)."""
    import torch

    from hipx.training import selfsup

    model = selfsup.SimCLR.build(config)
    if state is not None:
        model.load_state_dict(state["model"])
    model = model.to(device, memory_format=memory_format)
    net = model
    if dist_info.enabled:
        if device.type == "cuda":  # SimCLR's global BatchNorm: statistics over every rank's views (GPUs only)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameters, synchronised
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    # after the move: a restored optimizer state lands on the parameters' device
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    history: list[dict] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = [{k: int(v) if k == "epoch" else v for k, v in row.items()} for row in state["history"]]
        logger.info("resuming after epoch %d of %d", len(history), args.epoch)
    return model, net, optimizer, scheduler, scaler, history


def views_loader(images, args: argparse.Namespace, device, dist_info):
    """Batches of two views of every image, in a fresh order every epoch (sharded over ranks)."""
    import numpy as np
    from torch.utils.data import DataLoader

    from hipx.data import loader
    from hipx.training import selfsup

    dataset = selfsup.TwoViews(images, selfsup.Views(), args.seed)
    sampler = loader.EpochSampler(np.zeros(len(images), dtype=np.int64), args.seed, False, dist_info.rank,
                                  dist_info.world)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                      worker_init_fn=loader.quiet_worker if args.workers > 0 else None)


def save_epoch(out: Path, model, optimizer, scheduler, scaler, history: list[dict], config: dict) -> None:
    """What every epoch leaves: the encoder, the history and its curve, and last.pth (written last: its
    presence says the epoch is saved)."""
    save_encoder(out / ENCODER, model)
    runfiles.write_csv(out / runfiles.HISTORY, history)
    draw_curve(out / CURVE, history)
    save_last(out / runfiles.LAST, model, optimizer, scheduler, scaler, history, config)
