"""Where and how a run executes: device, threads, seeds, numeric precision, logging and progress bars.

torch and NumPy are imported inside the functions that need them, so a script can set up logging
before it imports torch (its ``--help`` and flag errors answer at once).
"""
from __future__ import annotations

import errno
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch; ``rank`` offsets the seed per process (timm ``random_seed``)."""
    import numpy as np
    import torch

    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(device: str, gpus: str | None) -> torch.device:
    """``--device auto|cpu|cuda`` with ``--gpus`` naming which CUDA device(s) may be used."""
    import torch

    ids = [int(g) for g in gpus.split(",")] if gpus else []
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if device == "cuda" or ids:
            raise ValueError(f"--device {device}{f' --gpus {gpus}' if gpus else ''} asked for CUDA, but no CUDA "
                             "device is available here (torch.cuda.is_available() is False); run the same command "
                             "with --device cpu (or --device auto, which takes a GPU when there is one)")
        return torch.device("cpu")
    if len(ids) > 1:
        raise ValueError(f"--gpus {gpus}: one process uses one GPU. To train on several GPUs, start one process "
                         f"per GPU: CUDA_VISIBLE_DEVICES={gpus} torchrun --nproc_per_node {len(ids)} main.py ...")
    index = ids[0] if ids else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cuda_wanted(device: str) -> bool:
    """Whether ``--device`` will train on a GPU here (``auto`` or ``cuda`` with CUDA available): the
    thread plan (:func:`choose_threads`) differs, and is chosen before the device is selected."""
    import torch

    return device != "cpu" and torch.cuda.is_available()


@dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means plain fp32."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        import torch

        return {None: "float32", torch.float16: "float16 autocast + grad scaler",
                torch.bfloat16: "bfloat16 autocast"}[self.dtype]


def select_precision(flag: str, device: torch.device) -> Precision:
    """``--dtype auto`` picks the fastest numerically safe setting: fp16 autocast with a gradient scaler
    on CUDA (bf16 where supported), fp32 on CPU (bf16 autocast measured 4.6x slower on CPUs without
    bf16 units). ``half`` forces reduced precision, ``float`` forces fp32."""
    import torch

    if flag == "float":
        return Precision(None, False)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    if flag == "half":
        logger.warning("--dtype half on CPU: using bfloat16 autocast (may be slower on CPUs without bf16 units)")
        return Precision(torch.bfloat16, False)
    return Precision(None, False)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Console logging, plus a log file in the run folder once it exists."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_osteo_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        console._osteo_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if log_file is not None:
        for h in list(root.handlers):
            if getattr(h, "_osteo_file", False):
                root.removeHandler(h)
                h.close()
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = QuietFileHandler(log_file, encoding="utf-8")
        handler.setFormatter(fmt)
        handler._osteo_file = True  # type: ignore[attr-defined]
        root.addHandler(handler)


_LOGGED_ONCE: set[tuple[str, int, str]] = set()


def log_once(log: logging.Logger, level: int, message: str, *args) -> None:
    """Log ``message % args`` the first time this process would log it, never again: a fact several
    callers compute alike (a cross-validation's folds, read once per fold and per report section)
    is told once, not once per caller."""
    key = (log.name, level, message % args if args else message)
    if key in _LOGGED_ONCE:
        return
    _LOGGED_ONCE.add(key)
    log.log(level, message, *args)


class QuietFileHandler(logging.FileHandler):
    """The run's log file; a record it cannot write (a full disk) is noted once on the console instead
    of logging's "--- Logging error ---" traceback for every record: the console keeps the whole log."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if getattr(error, "errno", None) == errno.ENOSPC:
            return  # the next file the run writes fails too, with one line naming it and the space it needs
        if not getattr(self, "_failed", False):
            self._failed = True
            print(f"warning: cannot write the log file {self.baseFilename} ({error}); the log goes on on the "
                  "console only", file=sys.stderr, flush=True)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last lines could not be flushed (a full disk): they were on the console
            self.stream = None


def on_terminal() -> bool:
    """Whether stderr is a terminal: progress bars only there; a redirected log gets plain lines."""
    return sys.stderr.isatty()


def progress(iterable: Iterable, enabled: bool = True, **kwargs):
    """A tqdm progress bar over ``iterable`` on a terminal; elsewhere ``iterable`` itself wrapped
    by a disabled bar (no escape codes in a redirected log)."""
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, disable=not (enabled and on_terminal()), **kwargs)


def close_log_file() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_osteo_file", False):
            root.removeHandler(h)
            h.close()


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the
    environment): NCCL on GPUs, gloo on CPU. A plain ``python main.py`` returns rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave_distributed(dist_info: Dist) -> None:
    """End a torchrun job cleanly: every rank waits until rank 0 has written its files, then the
    process group is destroyed. A rank that exits while rank 0 still writes the report closes its
    gloo sockets under rank 0, which can abort it (SIGABRT) at exit."""
    if not dist_info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def select_device_for(dist_info: Dist, device: str, gpus: str | None) -> torch.device:
    """Device of this process: under torchrun, local rank i takes the i-th of ``--gpus`` (or GPU i)."""
    import torch

    if not dist_info.enabled:
        return select_device(device, gpus)
    if device == "cpu" or not torch.cuda.is_available():
        if device == "cuda":
            raise ValueError("--device cuda under torchrun, but no CUDA device is available here; run the same "
                             "command with --device cpu")
        return torch.device("cpu")
    ids = [int(g) for g in gpus.split(",")] if gpus else list(range(torch.cuda.device_count()))
    if dist_info.local_rank >= len(ids):
        raise ValueError(f"local rank {dist_info.local_rank} has no GPU: --gpus {gpus} names {len(ids)}")
    torch.cuda.set_device(ids[dist_info.local_rank])
    return torch.device("cuda", ids[dist_info.local_rank])


# How long an idle OpenMP thread of torch (GNU OpenMP here: torch.__config__.parallel_info()) spins before it
# sleeps. libgomp spins 300000 rounds by default: beside another job on the same cores the spinning threads
# take the time slices the working ones need (issue 23: a --cpus 2 training fell from 105 to 7.4 img/s beside a
# --cpus 1 one). OMP_WAIT_POLICY=PASSIVE (no spin) gave 39 img/s there but cost a third when alone. A spin 30
# times shorter than the default keeps most of both (a busy job's next parallel region comes within it):
# measured with scripts/concurrency_check.sh in docs/speed.md (the pair keeps 36 % and 95 %, alone 100 %;
# a spin of 1000 or PASSIVE cost the job alone about 30 %).
SPIN_COUNT = "10000"
OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def short_openmp_spin() -> str | None:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user set it or ``OMP_WAIT_POLICY``; returns
    what was set, or None. Must run before torch is imported (libgomp reads the variables when it loads),
    and is inherited by DataLoader workers and by subprocesses."""
    if "torch" in sys.modules or any(name in os.environ for name in OPENMP_WAIT):
        return None
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return f"GOMP_SPINCOUNT={SPIN_COUNT}"


def choose_threads(cpus: int | None, workers: int, gpu: bool = False, adaptive: bool = True) -> str:
    """Set torch's intra-op threads and return a sentence for the log saying how many and why.

    ``--cpus`` wins; then ``OMP_NUM_THREADS`` if the user set it; else the cores this process may use
    (its share under torchrun). On a GPU (``gpu``) the loader workers are the CPU's work, so the threads
    are the cores less one per worker, at least 1. On the CPU the training step is the work and the
    workers wait most of the time, so the step gets every core the other jobs leave it: every core to
    begin with, and after each epoch :func:`share_cores` gives back a core per core another job used
    (issue 30, docs/speed.md: alone 84-93 img/s with both cores against 55-57 with one; two jobs with two
    threads each fell to 23 % of that, with one each kept 93 %). ``adaptive`` False (``--deterministic``,
    whose results must not depend on the machine's other jobs) keeps the first choice."""
    import torch

    global _PLAN
    _PLAN = None
    if cpus:
        threads, why = int(cpus), "--cpus"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        cores = usable_cores()
        world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        cores = max(1, cores // world)
        if gpu:
            threads = max(1, cores - max(0, workers))
            why = f"{cores} cores less {workers} loader worker{'s' * (workers != 1)} feeding the GPU"
        else:
            threads, why = cores, f"{cores} cores: the training step on the CPU"
            if adaptive and world == 1 and cores > 1:
                _PLAN = _SharedCores(cores)
                why += ", fewer while other jobs use some"
    torch.set_num_threads(threads)
    return f"{threads} torch thread{'s' * (threads != 1)} ({why})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process (default: this one) and its live children (DataLoader
    workers), from /proc; this process's own where /proc is missing."""
    pid = os.getpid() if pid is None else pid
    proc = Path("/proc")
    if not proc.is_dir():
        return time.process_time()
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has been busy since boot (/proc/stat), None without it."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _SharedCores:
    """The cores other jobs used while this one trained (machine busy time less this process's and its
    workers', over the wall time since the last look), and the threads that leaves this job."""

    def __init__(self, cores: int) -> None:
        self.cores, self.clock = cores, time.monotonic
        self.mark = self._read()

    def _read(self) -> tuple[float, float | None, float]:
        return self.clock(), machine_busy_seconds(), cpu_seconds()

    def threads(self) -> tuple[int, float] | None:
        now = self._read()
        (t0, busy0, own0), (t1, busy1, own1) = self.mark, now
        self.mark = now
        if busy0 is None or busy1 is None or t1 - t0 < 1.0:
            return None
        others = max(0.0, (busy1 - busy0 - (own1 - own0)) / (t1 - t0))
        return max(1, self.cores - int(others + 0.5)), others


_PLAN: _SharedCores | None = None


def share_cores() -> str | None:
    """After an epoch: set torch's threads to the cores the other jobs left this one in that epoch (the
    default plan on the CPU, :func:`choose_threads`); returns a sentence for the log when the count
    changed, else None. Does nothing under ``--cpus``, ``OMP_NUM_THREADS``, a GPU or ``--deterministic``."""
    import torch

    if _PLAN is None:
        return None
    got = _PLAN.threads()
    if got is None or got[0] == torch.get_num_threads():
        return None
    threads, others = got
    torch.set_num_threads(threads)
    return (f"{threads} torch thread{'s' * (threads != 1)} from the next epoch: other jobs used {others:.1f} of "
            f"the {_PLAN.cores} cores in the last one")


def make_deterministic() -> None:
    """Bit-reproducible kernels (slower); needed for an exactly reproducible resumed run on GPU."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def use_channels_last(flag: str) -> bool:
    """NHWC (``--channels_last``); auto: on. It helps convolutions on CUDA and, with torch 2.14's oneDNN, on
    the CPU at every size measured: DenseNet-BC-40 trained 1.35x faster at 176 x 102 and 1.15x at 88 x 51
    on AVX-512, 1.16x at 176 x 102 with AVX2 kernels only (docs/speed.md)."""
    return flag != "false"
