"""The trainer: whole data set as tensors on the device, batched augmentation, one plain loop.

Every random draw is a pure function of (seed, epoch, step, rank), and so is the learning rate and
the training resolution, so a run stopped anywhere and resumed from its checkpoint continues
exactly as if it had never stopped. The loop never waits for the device except at log steps and
epoch ends, where it must read numbers back anyway.
"""

import collections
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import budget, runs, speeds
from .atomic import atomic_write_bytes, atomic_write_json
from .config import ConfigError, TrainConfig, config_from_dict, parse_budget, parse_resolution, validate, validation_seed
from .constants import IMAGE_SIZE, TRAIN_IMAGES
from .data import augment, load_split, normalize, split_validation
from .evaluate import autocast, evaluate, fit_run_temperature
from .model import build_model, count_parameters
from .weights import make_card, non_finite_key, save_weights

DIVERGENCE_WINDOW = 50
CHANCE_LOSS = math.log(10)  # the loss of a uniform guess over 10 classes
DIVERGENCE_LOSS = 2 * CHANCE_LOSS  # a 50-step mean above this has not learned and is not learning
EXPLOSION_LOSS = 10 * CHANCE_LOSS  # one logged step above this has blown up: no window to wait for


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device mps was asked for, but this machine has no Apple GPU")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: torch.device):
    """The autocast dtype, or None for fp32. ``auto`` picks bf16 where the hardware has it."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # bf16 pays only where ATen runs AVX-512 kernels on a CPU with bf16 instructions ($ATEN_CPU_CAPABILITY may
    # hold a CPU to AVX2, as a host of that class is).
    if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported() and torch.backends.cpu.get_cpu_capability() == "AVX512":
        return torch.bfloat16
    return None


def default_channels_last(device: torch.device, amp_dtype) -> bool:
    """On under autocast, and on any CPU: oneDNN's fp32 convolutions are faster in channels_last too
    (``bench/bench_train.py --layouts``; the figures are in ``bench/results/layouts.json``)."""
    return amp_dtype is not None or device.type == "cpu"


def describe_device(device: torch.device) -> str:
    """Where a run trained, precise enough that timings from two machines are not mistaken for one:
    the CPU's model, vector extension and threads matter as much as its name (bf16 autocast is fast
    only with AVX-512 bf16, and far slower than fp32 on an AVX2-only CPU)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    bf16 = " with bf16" if torch.cpu._is_avx512_bf16_supported() else ""
    return f"cpu: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}{bf16}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def lr_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at a point of a run's progress (0 to 1): a pure function, so resuming needs no scheduler
    state."""
    if progress < config.warmup:
        return config.lr * progress / config.warmup
    if config.schedule == "constant":
        return config.lr
    rest = (progress - config.warmup) / max(1e-12, 1 - config.warmup)
    if config.schedule == "onecycle":
        return config.lr * (1 - rest)
    return config.lr * 0.5 * (1 + math.cos(math.pi * rest))


def freeze_bn_scales(model) -> None:
    """Leave every BatchNorm scale out of training: no gradient is computed for it and no optimizer holds it."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.weight.requires_grad_(False)


def build_optimizer(config: TrainConfig, model) -> torch.optim.Optimizer:
    # Weight decay on BatchNorm scales and biases only fights the normalization; leave them free. They may
    # also learn faster (``bias_lr_scale``): they are few, and a BatchNorm shift moves a whole channel.
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    free = [p for p in trained if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": free, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adagrad(groups, lr=config.lr)


WHITENING_IMAGES = 1000  # a million 3x3 patches: a stable 27 x 27 covariance, in about 100 MB
WHITENING_EPS = 5e-4


@torch.no_grad()
def whiten_stem(model, images: torch.Tensor, mean, std) -> None:
    """Set the first convolution's filters to the whitening directions of the images' 3x3 patches: each
    eigenvector of the patch covariance, scaled by 1/sqrt(its eigenvalue), once as it is and once
    negated (ReLU keeps only one sign of each). Filters left over keep their random initialisation."""
    conv = model.conv1
    x = normalize(images[:WHITENING_IMAGES].to(conv.weight.device), mean, std)
    patches = F.unfold(x, conv.kernel_size).transpose(1, 2).reshape(-1, x.shape[1] * conv.kernel_size[0] * conv.kernel_size[1])
    covariance = torch.cov(patches.T).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITENING_EPS)[:, None]).flip(0)  # strongest first
    filters = torch.cat([filters, -filters])[: conv.out_channels].float().view(-1, *conv.weight.shape[1:])
    conv.weight[: len(filters)] = filters.to(conv.weight)


def initialize(model, config: TrainConfig, train_x: torch.Tensor) -> None:
    """The init options of a config, applied to a freshly built model (a resumed run loads its weights instead)."""
    if config.whiten_stem:
        whiten_stem(model, train_x, config.mean, config.std)


def _step_seed(config: TrainConfig, epoch: int, step: int, rank: int) -> int:
    """A 63-bit seed unique to (seed, epoch, step, rank) for any number of ranks."""
    digest = hashlib.blake2b(f"{config.seed}/{epoch}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def resolution_at(phases: list, progress: float) -> int:
    """The training image size at a point of a run's progress under a parsed resolution schedule."""
    return next((size for size, until in phases if progress < until), IMAGE_SIZE)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """A normalized batch at ``size`` px: antialiased, so a 16 px image is the average of 2 x 2 pixels, as a
    small photo would be, not every other pixel."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


def load_data(config: TrainConfig, device: torch.device) -> Dataset:
    """Every split on the training device: evaluation then never copies a batch from the host."""
    train_x, train_y = load_split(config.data_dir, train=True)
    test_x, test_y = load_split(config.data_dir, train=False)
    val_x = val_y = None
    if config.val_size:
        if config.val_size >= len(train_x):  # a data folder smaller than the official split
            raise ConfigError(f"val_size {config.val_size} leaves no training images: the data set has {len(train_x)}")
        train_x, train_y, val_x, val_y = split_validation(train_x, train_y, config.val_size, validation_seed(config))
    if config.limit_train:
        train_x, train_y = train_x[: config.limit_train], train_y[: config.limit_train]
    if config.limit_test:
        test_x, test_y = test_x[: config.limit_test], test_y[: config.limit_test]
    check_batch(config, len(train_x))
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Dataset(*map(move, (train_x, train_y, test_x, test_y, val_x, val_y)))


def check_batch(config: TrainConfig, train_images: int) -> None:
    """A batch larger than the training images would make an epoch of no steps: a run that trains nothing."""
    if config.batch_size > train_images:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {train_images} training images")


def steps_in_epoch(images: int, batch_size: int) -> int:
    """Training steps in one pass over ``images``: the last partial batch is dropped, so every step has the
    configured batch and the one-cycle schedule's step count is fixed before the run starts."""
    return images // batch_size


def training_images(config: TrainConfig) -> int:
    """How many training images a config trains on, without reading the data."""
    return min(config.limit_train or TRAIN_IMAGES, TRAIN_IMAGES - config.val_size)


@dataclass
class Sums:
    """Running training loss and accuracy since some point (the last log step, the epoch's start)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0

    def add(self, loss: float, correct: float, seen: int) -> None:
        self.loss, self.correct, self.seen = self.loss + loss, self.correct + correct, self.seen + seen


@dataclass
class LoopState:
    """What the loop carries from step to step: where it is, the running sums and training seconds its rows are
    made of, the recent losses its divergence test reads, and the pace a re-fit reads. All but the pace go into every
    checkpoint, so a resumed run logs, and is judged, as the uninterrupted one would be."""

    epoch: int = 1
    step_in_epoch: int = 0  # the next step to train
    elapsed_s: float = 0.0  # the run's seconds (training and scoring) when this process took it up
    epoch_sums: Sums = dataclasses.field(default_factory=Sums)
    # Training seconds since the epoch's start and since the last step row: a row's speed is its images over its own
    # seconds, whatever epoch ends, stops and resumes came between.
    epoch_time: float = 0.0
    since_log: Sums = dataclasses.field(default_factory=Sums)
    since_log_time: float = 0.0
    window: list = dataclasses.field(default_factory=list)  # the last DIVERGENCE_WINDOW step losses, on the host
    # size -> (training seconds, steps) in this process: the pace a re-fit reads. Not saved: a resumed run makes no
    # re-fits of its own (it follows those recorded before its stop).
    met: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_position(cls, position: dict) -> "LoopState":
        """The state a checkpoint's "position" holds (one from an older run may lack the rows' and the window's)."""
        return cls(epoch=position["epoch"], step_in_epoch=position["step_in_epoch"], elapsed_s=position["elapsed_s"],
                   epoch_sums=Sums(*position["sums"]), epoch_time=position.get("train_time", 0.0),
                   since_log=Sums(*position.get("since_log", (0.0, 0.0, 0))),
                   since_log_time=position.get("since_log_time", 0.0), window=list(position.get("window", [])))

    def position(self, elapsed_s: float, reduce) -> dict:
        """The checkpoint's "position". Each process holds the sums of its own share of the batches: ``reduce`` totals
        them over the processes (every one calls this), so the one that writes saves the run's."""
        loss, correct, seen, log_loss, log_correct, log_seen = reduce([*dataclasses.astuple(self.epoch_sums),
                                                                       *dataclasses.astuple(self.since_log)])
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "elapsed_s": elapsed_s,
                "sums": [loss, correct, int(seen)], "train_time": self.epoch_time,
                "since_log": [log_loss, log_correct, int(log_seen)], "since_log_time": self.since_log_time,
                "window": list(self.window)}

    def add(self, spent: float, losses: torch.Tensor, correct: float, sizes: list, batch: int) -> None:
        """Steps read back from the device: the training seconds they took (shared evenly among them, for each size's
        pace), their losses (one a step, each the mean over ``batch`` images) and their total correct."""
        self.epoch_time += spent
        self.since_log_time += spent
        for size, count in collections.Counter(sizes).items():
            seconds, steps = self.met.get(size, (0.0, 0))
            self.met[size] = (seconds + spent * count / len(sizes), steps + count)
        loss_sum, seen = float(losses.sum()) * batch, batch * len(sizes)
        self.since_log.add(loss_sum, correct, seen)
        self.epoch_sums.add(loss_sum, correct, seen)
        self.window = (self.window + losses.tolist())[-DIVERGENCE_WINDOW:]

    def logged(self) -> None:
        """A step row has been written: the next one counts from here."""
        self.since_log, self.since_log_time = Sums(), 0.0

    def next_epoch(self) -> None:
        """An epoch's row has been written: the epoch's sums and seconds start again; the row's and the window go on."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_sums, self.epoch_time = Sums(), 0.0


class Stopwatch:
    """Training time between points where the device has finished its queued work.

    On a GPU the host runs ahead of the device, so host time per step is the launch rate, not the
    training rate; reading the clock only after a synchronize, and leaving out the evaluations
    (``paused``), gives the images per second the device really trains.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mark = time.perf_counter()
        self.excluded = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self) -> float:
        """Training seconds since the last lap (the caller is at a point that reads the device anyway)."""
        self._sync()
        now = time.perf_counter()
        spent, self.mark, self.excluded = now - self.mark - self.excluded, now, 0.0
        return max(spent, 1e-9)

    @contextlib.contextmanager
    def paused(self):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.excluded += time.perf_counter() - start


@dataclass
class Parts:
    """What a run trains: the model, what the steps call (DDP or compiled), its optimizer, scaler and average."""

    model: torch.nn.Module
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None


class Trainer:
    """One run: ``Trainer(config, run_dir).run()`` trains, writing the run folder as it goes."""

    def __init__(self, config: TrainConfig, run_dir, callbacks=(), stop_event=None, data: Dataset | None = None,
                 command: str = "", clock_start: float | None = None, notes: dict | None = None):
        # A budget counts from clock_start (a perf_counter reading): the CLI passes its process's start, so that
        # starting Python and importing torch count too; in-process callers start the clock here.
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        validate(config)
        self.command = command
        self.notes = notes or {}  # written into config.json beside the settings (a study's trial), never read back
        self.git_commit = _git_commit()  # the code that starts the run, not whatever HEAD is at its end
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.stop_event = stop_event
        self.distributed = dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = resolve_device(config.device)
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if self.distributed and config.batch_size % self.world:
            raise ConfigError(f"batch_size {config.batch_size} must divide evenly over {self.world} processes")
        if self.distributed and config.budget and not config.steps:
            raise ConfigError("a time budget plans one process's run from its own measured speed; under torchrun give "
                              "--epochs or --steps")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # input shapes repeat every step: let cuDNN pick its fastest kernels
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.channels_last = (config.channels_last if config.channels_last is not None
                              else default_channels_last(self.device, self.amp_dtype))
        self.device_name = describe_device(self.device)  # in every epoch row: a run resumed elsewhere shows it
        self.data = data or load_data(config, self.device)
        self.data_s = time.perf_counter() - self.clock_start  # a budgeted run's first step should follow it closely
        check_batch(config, len(self.data.train_x))  # shared data was loaded for another run's batch
        self.plan = None
        # A budgeted run's speeds as planned, then as met (budget.Rates); kept for the next run of its kind when it
        # finishes. None when resumed: its clock broke at the stop.
        self.pace = None
        self.resumed = False
        self.final_scores = {}  # the last epoch's held-out scores, by split: the run's final figures
        self._derive()

    def _derive(self) -> None:
        """What follows from the config, the plan and the data: the run's length, how its steps map to progress
        through the schedules, when a probe comes and how many images it scores, and where the run re-fits its
        length."""
        config = self.config
        self.resolution = parse_resolution(config.resolution)
        self.steps_per_epoch = steps_in_epoch(len(self.data.train_x), config.batch_size)
        self.total_steps = config.steps or self.steps_per_epoch * config.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        refits = (self.plan or {}).get("refits", [])
        self.knots = [(0, 0.0), *((r["step"], r["progress"]) for r in refits), (self.total_steps, 1.0)]
        held = (self.data.val_x, self.data.val_y) if self.data.val_x is not None else (self.data.test_x, self.data.test_y)
        self.probe_split = "val" if self.data.val_x is not None else "test"
        self.probe_every = budget.probe_interval(self.total_steps, config.probes) if config.probe_size else 0
        if self.plan:  # the planned probe, whatever length a re-fit gives the run: every point of its curve alike
            size = self.plan["probe_images"]
        else:
            size = (budget.probe_images(config.probe_size, self.probe_every * config.batch_size, config.resolution)
                    if self.probe_every else 0)
        self.probe = (held[0][:size], held[1][:size]) if size else None
        # A run re-fits only on the clock it planned with: a resumed run follows the re-fits recorded before its stop.
        self.refit_at = [] if not self.plan or self.resumed else [p for p in budget.REPLAN_AT if p > self.knots[-2][1]]

    def progress(self, step: int) -> float:
        """How far through its lr and resolution schedules the run is at ``step`` (0 to 1)."""
        return budget.progress_at(step, self.knots)

    def _epoch_steps(self, epoch: int) -> int:
        """Steps in ``epoch``: the last epoch of a run of a fixed number of steps ends where they do."""
        return min(self.steps_per_epoch, self.total_steps - (epoch - 1) * self.steps_per_epoch)

    @property
    def writes(self) -> bool:
        return self.rank == 0

    # ---- the run folder -------------------------------------------------------------------
    def _emit(self, record: dict) -> None:
        if not self.writes:
            return
        runs.append_metrics(self.run_dir, record)
        for callback in self.callbacks:
            callback(record)

    def _status(self, status: str, message: str = "") -> None:
        if self.writes:
            runs.write_status(self.run_dir, status, message)

    def _save_checkpoint(self, state: dict) -> None:
        if not self.writes:
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.run_dir / runs.CHECKPOINT, buffer.getvalue())

    # ---- a run: set up, measured and planned -----------------------------------------------
    def run(self, resume: bool = False) -> dict:
        config = self.config
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if resume:  # a budgeted run keeps the plan it was started with, and its re-fits
            self.plan, self.resumed = runs.read_config(self.run_dir).get("plan"), True
            self._derive()
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                (self.run_dir / runs.METRICS).unlink(missing_ok=True)
            self._write_config()
            self._status("running", "resumed" if resume else "started")
        try:  # a failure anywhere from here (a bad checkpoint too) is reported, not left as "running"
            parts, state = self.build(resume)
            if config.budget and not config.steps:  # a new budgeted run: measure this machine, then fix the run's length
                self._plan(parts)
            if not resume:  # a new run's clock reads from its start, as its budget does: loading and measuring count
                state.elapsed_s = time.perf_counter() - self.clock_start
            if self.writes:
                # A resumed run publishes only what it finishes now; a resume that fails to load keeps what it had.
                for stale in (runs.WEIGHTS, runs.CARD):
                    (self.run_dir / stale).unlink(missing_ok=True)
            return self._loop(parts, state)
        except Exception as error:
            self._status("failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            if self.distributed and dist.is_initialized():
                dist.destroy_process_group()

    def build(self, resume: bool = False) -> tuple:
        """(the model, its training wrapper, optimizer, scaler and average; the loop's state to start from)."""
        config = self.config
        torch.manual_seed(config.seed)
        model = build_model(config.blocks, config.dropout).to(self.device)
        if not resume:
            initialize(model, config, self.data.train_x)
        if config.freeze_bn_scales:
            freeze_bn_scales(model)
        if self.distributed and self.device.type == "cuda":
            # --batch-size is global: normalize over all of it, not over each GPU's share.
            # (gloo has no SyncBatchNorm: CPU processes keep per-process statistics.)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(config, model)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None
        state = LoopState()
        if resume:
            # On the CPU: optimizer.load_state_dict moves the moments to the parameters' device but
            # keeps Adam's step counters where they were loaded, and on a GPU those cost a sync a step.
            checkpoint = torch.load(self.run_dir / runs.CHECKPOINT, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            if "scaler" in checkpoint:
                scaler.load_state_dict(checkpoint["scaler"])
            if ema is not None:
                ema.load_state_dict(checkpoint["ema"])
            state = LoopState.from_position(checkpoint["position"])
            if self.writes:  # rows past the checkpoint (a kill mid-epoch, or after an epoch row but before its
                # checkpoint) are trained again from here: drop them, and any torn line, so each step appears once
                done = (state.epoch - 1) * self.steps_per_epoch + state.step_in_epoch
                kept = [row for row in runs.read_metrics(self.run_dir) if row["step"] <= done]
                atomic_write_bytes(self.run_dir / runs.METRICS, "".join(json.dumps(row) + "\n" for row in kept).encode())
            else:  # the checkpoint's running sums are every process's total: rank 0 alone carries them on
                state.epoch_sums, state.since_log = Sums(), Sums()
        trained = model
        if self.distributed:
            # Only rank 0 evaluates and saves, so the other ranks' BatchNorm buffers need no per-step broadcast.
            trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, broadcast_buffers=False)
        if config.compile:
            trained = torch.compile(trained)
        return Parts(model, trained, optimizer, scaler, ema), state

    # Steps timed at each size, few: every second measuring is one not training. The first builds the kernels the
    # run then reuses (much slower on a GPU, hardly on a CPU), and the faster of two counts: on a CPU, a moment's
    # interruption by another process then spoils neither the plan nor the kernels' building. The faster step is a
    # guess on the fast side; the run's re-fits bring its length back to the pace it meets.
    MEASURED_STEPS = 2

    def measure(self, parts: Parts) -> budget.Rates:
        """This machine's speed for this run, on a throwaway copy of its network and optimizer: training images per
        second at each size its resolution schedule uses, through the loop's own step (seeding, gathering and
        augmenting the batch included), and the seconds one checkpoint takes to serialize. Scoring is not timed: a
        whole scoring batch and its warm-up would keep the first step waiting a second or more, so the plan guesses
        it from the 32 px training pace (budget.first_score_rate), and the run keeps the pace its final scoring
        meets for the next run of its kind."""
        config = self.config
        model = copy.deepcopy(parts.model)
        optimizer = build_optimizer(config, model)
        scaler = torch.amp.GradScaler(self.device.type, enabled=parts.scaler.is_enabled())
        copied = Parts(model, model, optimizer, scaler, None)
        order, flips = self.epoch_order(1)
        train = {}
        for size in budget.size_shares(config.resolution):
            seconds = []
            for step in range(self.MEASURED_STEPS):
                clock = Stopwatch(self.device)
                self.train_one(copied, order, flips, 1, step, size)
                seconds.append(clock.lap())
            train[size] = config.batch_size / min(seconds)
        started = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, io.BytesIO())
        return budget.Rates(train=train, score=budget.first_score_rate(train[IMAGE_SIZE]),
                            checkpoint_s=time.perf_counter() - started)

    def _plan(self, parts: Parts) -> None:
        """Fix a budgeted run's length from this machine's measured speed; its config then records the plan."""
        config = self.config
        self.speed_kind = speeds.kind(config, self.device_name)
        rates = speeds.recall(self.speed_kind, budget.size_shares(config.resolution))
        rates_from = "an earlier run of this kind on this machine" if rates else "measured at the start"
        if rates is None:
            rates = self.measure(parts)
        plan = budget.plan(parse_budget(config.budget), time.perf_counter() - self.clock_start, rates,
                           batch_size=config.batch_size, steps_per_epoch=self.steps_per_epoch, resolution=config.resolution,
                           probes=config.probes, probe_size=config.probe_size,
                           test_images=len(self.data.test_y) if config.score_test else 0,
                           val_images=0 if self.data.val_x is None else len(self.data.val_y), tta=config.tta)
        self.config = dataclasses.replace(config, **plan.settings())
        if self.config.limit_test:  # the test images the plan affords scoring: the first ones, as --limit-test keeps
            limit = self.config.limit_test
            self.data = dataclasses.replace(self.data, test_x=self.data.test_x[:limit], test_y=self.data.test_y[:limit])
        self.plan = {**dataclasses.asdict(plan), "data_s": self.data_s, "rates_from": rates_from}
        self.pace = rates  # this run's, to keep for the next run of its kind once it has finished
        self._derive()
        if self.writes:
            self._write_config()

    def _write_config(self) -> None:
        """config.json: the settings, and a budgeted run's plan (where its seconds were meant to go) beside them."""
        atomic_write_json(self.run_dir / runs.CONFIG,
                          {**dataclasses.asdict(self.config), **({"plan": self.plan} if self.plan else {}), **self.notes})

    def _refit(self, done: int, met: dict, loop_s: float) -> None:
        """Re-fit a budgeted run's length to the pace it has met, so that it still finishes on its budget: the
        seconds left, less the planned final scoring and margin, over the seconds a step now takes (each size's own,
        and what came between steps, spread over the steps). The re-fit is recorded with the plan."""
        plan, progress = self.plan, self.progress(done)
        step_s = budget.step_seconds({int(size): rate for size, rate in plan["rates"]["train"].items()},
                                     self.config.batch_size, met)
        overhead_s = max(0.0, loop_s - sum(seconds for seconds, _ in met.values())) / max(1, done)
        seconds_left = (plan["budget_s"] - (time.perf_counter() - self.clock_start) - plan["final_s"] - plan["margin_s"])
        steps = budget.refit(seconds_left, done, progress, self.config.resolution, step_s, overhead_s)
        plan["refits"] = [*plan.get("refits", []), {"step": done, "progress": progress, "steps": steps,
                                                    "step_s": {str(size): s for size, s in step_s.items()},
                                                    "overhead_s": overhead_s, "seconds_left": seconds_left}]
        self.config = dataclasses.replace(self.config, steps=steps, epochs=math.ceil(steps / self.steps_per_epoch))
        self._derive()
        self.pace = dataclasses.replace(self.pace, train={size: self.config.batch_size / s for size, s in step_s.items()})
        if self.writes:
            self._write_config()

    # ---- scores, and the ends of epochs and runs ------------------------------------------
    def _record_final_scoring(self, images: int, seconds: float) -> None:
        """A budgeted run records what its final scoring took, and the next run of its kind plans its own from it."""
        if self.pace is None:
            return
        met = self.plan.setdefault("final_scoring", {"images": 0, "seconds": 0.0})
        met["images"], met["seconds"] = met["images"] + images, met["seconds"] + seconds
        self.pace = dataclasses.replace(self.pace, score=met["images"] / met["seconds"])

    def _reduce(self, values: list) -> list:
        """Sums over every rank, in one all-reduce (the values themselves when not distributed)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _scored_model(self, model, ema):
        """The weight average once it has started, else the trained network."""
        return ema.module if ema is not None and ema.n_averaged > 0 else model

    def _evaluate(self, model, images, labels) -> dict:
        return evaluate(model, images, labels, self.config.mean, self.config.std, self.config.eval_batch_size,
                        amp_dtype=self.amp_dtype, channels_last=self.channels_last)

    def _probe(self, model, ema, epoch: int, step: int, elapsed) -> None:
        """A held-out score between steps: a fixed handful of images, eval mode, drawn apart from the epoch's."""
        if not self.writes:
            return
        started = time.perf_counter()
        result = self._evaluate(self._scored_model(model, ema), *self.probe)
        self._emit({"kind": "probe", "epoch": epoch, "step": step, "images": step * self.config.batch_size,
                    "probe_acc": result["acc"], "probe_loss": result["loss"], "probe_images": result["count"],
                    "probe_split": self.probe_split, "probe_s": time.perf_counter() - started, "elapsed_s": elapsed()})

    def _epoch_record(self, model, ema, epoch, done, sums: Sums, train_time, lr, elapsed) -> dict:
        config = self.config
        loss_sum, correct, seen = self._reduce([sums.loss, sums.correct, sums.seen])
        seen = max(seen, 1)
        record = {
            "kind": "epoch", "epoch": epoch, "step": done, "images": done * config.batch_size,
            "train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": lr,
            "images_per_s": seen / max(train_time, 1e-9), "device": self.device_name,
        }
        last = epoch == self.epochs
        if self.writes and (last or (config.score_every and epoch % config.score_every == 0)):
            scored = self._scored_model(model, ema)
            held = ([("test", self.data.test_x, self.data.test_y)] if config.score_test else []) + (
                [("val", self.data.val_x, self.data.val_y)] if self.data.val_x is not None else [])
            for split, images, labels in held:
                timer = Stopwatch(self.device)
                result = self._evaluate(scored, images, labels)
                record.update({f"{split}_loss": result["loss"], f"{split}_acc": result["acc"]})
                if last:  # the run's final figures: the weights are those it finishes with
                    self.final_scores[split] = result
                    self._record_final_scoring(result["count"], timer.lap())
        record["elapsed_s"] = elapsed()
        return record

    def _broken(self, model, ema, record: dict) -> str:
        """Why the model is no model (a non-finite evaluation loss or weight), or '' (rank 0 checks)."""
        if not self.writes:
            return ""
        for key in ("train_loss", "test_loss", "val_loss"):
            if key in record and not math.isfinite(record[key]):
                return f"its {key.replace('_', ' ')} is {record[key]}"
        broken = non_finite_key(self._scored_model(model, ema).state_dict())
        return f"its weights hold non-finite values ({broken})" if broken else ""

    def _end_epoch(self, parts: Parts, state: LoopState, clock: Stopwatch, elapsed) -> dict | None:
        """Score the epoch, check that the model is still a model, and checkpoint at the boundary; the run's outcome
        if it ends here (diverged, or asked to stop), else None."""
        epoch = state.epoch
        done = (epoch - 1) * self.steps_per_epoch + self._epoch_steps(epoch)
        # The lr of the epoch's last step (computed: a run resumed right after that step runs no step here).
        lr = lr_at(self.config, self.progress(done - 1))
        evaluating = time.perf_counter()
        with clock.paused():  # scoring, the broken-model check and the checkpoint are not training time
            record = self._epoch_record(parts.model, parts.ema, epoch, done, state.epoch_sums, state.epoch_time, lr, elapsed)
            record.update(train_s=state.epoch_time, eval_s=time.perf_counter() - evaluating)
            broken = self._broken(parts.model, parts.ema, record)
            asked = self.stop_event is not None and self.stop_event.is_set()
            broken_ranks, stopped = self._reduce([float(bool(broken)), float(asked)])
            if broken_ranks:
                return self._diverged(f"at the end of epoch {epoch}: {broken or 'another process found the model broken'}")
            self._emit(record)
            state.next_epoch()
            self._checkpoint(parts, state, elapsed())
        if stopped and epoch < self.epochs:  # asked while the epoch was scored: stop at the boundary
            return self._stopped(f"stopped after epoch {epoch}; resume to continue")
        return None

    def _diverged(self, where: str) -> dict:
        """End the run as diverged: no checkpoint to resume and no weights to publish from a broken model."""
        message = f"diverged {where}; try a smaller learning rate"
        if self.writes:
            for broken in (runs.CHECKPOINT, runs.WEIGHTS, runs.CARD):
                (self.run_dir / broken).unlink(missing_ok=True)
        self._status("diverged", message)
        return {"status": "diverged", "message": message}

    def _stopped(self, message: str) -> dict:
        """End the run as stopped: its last checkpoint resumes it."""
        self._status("stopped", message)
        return {"status": "stopped", "message": message}

    def _checkpoint(self, parts: Parts, state: LoopState, elapsed_s: float) -> None:
        """Everything a resumed run needs to go on as this one would: every process calls it, rank 0 writes it."""
        checkpoint = {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "position": state.position(elapsed_s, self._reduce),
        }
        if parts.scaler.is_enabled():
            checkpoint["scaler"] = parts.scaler.state_dict()
        if parts.ema is not None:
            checkpoint["ema"] = parts.ema.state_dict()
        self._save_checkpoint(checkpoint)

    def _finish(self, model, ema, elapsed_s) -> dict:
        config = self.config
        if not self.writes:
            return {"status": "finished", "message": f"finished (rank {self.rank}; rank 0 scores the model and writes the files)"}
        scored = self._scored_model(model, ema)
        split, images, labels = (("test", self.data.test_x, self.data.test_y) if config.score_test
                                 else ("val", self.data.val_x, self.data.val_y))
        # Scored once, in the precision the run trained in: the last epoch's score is the final one (a run resumed
        # after that score but before this point scores again).
        final = self.final_scores.get(split) or self._evaluate(scored, images, labels)
        scores = {f"{split}_acc": final["acc"], f"{split}_loss": final["loss"], f"{split}_images": final["count"]}
        if config.tta:
            scores[f"tta_{split}_acc"] = evaluate(scored, images, labels, config.mean, config.std, config.eval_batch_size,
                                                  tta=True, amp_dtype=self.amp_dtype, channels_last=self.channels_last)["acc"]
        if not math.isfinite(final["loss"]):
            return self._diverged(f"at the end: its final {split} loss is {final['loss']}")
        curve = [
            {k: r[k] for k in ("epoch", "images", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc",
                               "elapsed_s") if k in r}
            for r in runs.read_metrics(self.run_dir) if r["kind"] == "epoch"
        ]
        card = make_card(
            scored, config.mean, config.std,
            parameters=count_parameters(scored),
            **scores,
            per_class_acc=final["per_class_acc"], confusion=final["confusion"], ece=final["ece"], scored_on=split,
            measured=measured_on(split, precision_name(self.amp_dtype)),
            training=dataclasses.asdict(config),
            curve=curve,
            provenance={
                "command": self.command,
                "git_commit": self.git_commit,
                "device": self.device_name,
                "world_size": self.world,
                "torch": torch.__version__,
                "elapsed_s": elapsed_s,
                **({"plan": self.plan} if self.plan else {}),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        if self.data.val_x is not None:  # held out from training: the temperature and the warning threshold come from it
            card.update(fit_run_temperature(scored, self.data.val_x, self.data.val_y, config.mean, config.std,
                                            config.eval_batch_size, amp_dtype=self.amp_dtype, channels_last=self.channels_last))
        save_weights(scored, self.run_dir / runs.WEIGHTS, card, dtype=getattr(torch, config.weights_dtype))
        if self.pace is not None:  # a broken model never gets here: only a finished run's pace is the next one's plan
            speeds.remember(self.speed_kind, self.pace)
        length = f"{self.total_steps:,} steps" if config.steps else f"{config.epochs} epochs"
        message = f"finished: {'test' if split == 'test' else 'validation'} accuracy {final['acc']:.2%} after {length}"
        self._status("finished", message)
        return {"status": "finished", "message": message, "scored_on": split, **final}

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self, parts: Parts, state: LoopState) -> dict:
        """Train from ``state`` to the run's end. Steps are queued on the device without waiting for it; the loop reads
        the device back only at the steps that need its numbers: a step row, a probe, a re-fit, a stop, an epoch's end."""
        config = self.config
        began = time.perf_counter()
        started = began - state.elapsed_s
        elapsed = lambda: time.perf_counter() - started  # noqa: E731
        clock = Stopwatch(self.device)
        # A re-fit may move the run's end, so the epochs and the last epoch's steps are read afresh each time round.
        while state.epoch <= self.epochs:
            epoch = state.epoch
            order, flips = self.epoch_order(epoch)
            pending = []  # (loss, number correct, size) of every step since the last read-back, still on the device
            while state.step_in_epoch < self._epoch_steps(epoch):
                loss, correct, lr, size, batch = self.train_one(parts, order, flips, epoch, state.step_in_epoch)
                pending.append((loss, correct, size))
                state.step_in_epoch += 1
                done = (epoch - 1) * self.steps_per_epoch + state.step_in_epoch
                epoch_end = state.step_in_epoch == self._epoch_steps(epoch)
                log_step = done % config.log_every == 0
                probe_step = self.probe is not None and done % self.probe_every == 0
                refit_step = bool(self.refit_at) and self.progress(done) >= self.refit_at[0]
                asked = self.stop_event is not None and self.stop_event.is_set()
                # Ranks agree only at steps that are the same for all of them (a stop asked in between
                # waits for the next log step); a single process acts on a stop at once.
                if not (log_step or epoch_end or probe_step or refit_step or (asked and not self.distributed)):
                    continue
                spent = clock.lap()
                step_losses, correct_now = read_back(pending)
                state.add(spent, step_losses, correct_now, [size for _, _, size in pending], batch)
                pending = []
                loss_sum, correct_total, seen, stopped, diverged_ranks = self._reduce(
                    [*dataclasses.astuple(state.since_log), float(asked), float(diverged(step_losses, state.window))])
                seen = max(seen, 1)
                if log_step and not diverged_ranks:
                    self._emit({
                        "kind": "step", "epoch": epoch, "step": done, "total_steps": self.total_steps,
                        "images": done * config.batch_size, "train_loss": loss_sum / seen, "train_acc": correct_total / seen,
                        "lr": lr, "resolution": size, "images_per_s": seen / state.since_log_time, "elapsed_s": elapsed(),
                    })
                    state.logged()
                if diverged_ranks:
                    return self._diverged(f"at epoch {epoch}, step {done}: the training loss became non-finite, exceeded "
                                          f"{EXPLOSION_LOSS:.1f} or stayed above {DIVERGENCE_LOSS:.2f}")
                if refit_step:
                    self._refit(done, state.met, time.perf_counter() - began)  # this loop's seconds only
                if stopped:
                    self._checkpoint(parts, state, elapsed())
                    return self._stopped(f"stopped at epoch {epoch}, step {done}; resume to continue")
                if probe_step:
                    with clock.paused():
                        self._probe(parts.model, parts.ema, epoch, done, elapsed)
            ended = self._end_epoch(parts, state, clock, elapsed)
            if ended is not None:
                return ended
        return self._finish(parts.model, parts.ema, elapsed())

    def epoch_order(self, epoch: int) -> tuple:
        """(the epoch's shuffled image order, and each image's flip under alternating flips, or None) on the device."""
        config, count = self.config, len(self.data.train_x)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)).to(self.device)
        flips = None
        if config.alternate_flip:
            base = torch.rand(count, generator=torch.Generator().manual_seed(config.seed)) < 0.5
            flips = (base ^ bool(epoch % 2)).to(self.device)
        return order, flips

    def train_one(self, parts: Parts, order, flips, epoch: int, step_in_epoch: int, size: int | None = None) -> tuple:
        """One step of the hot loop, queued on the device without waiting for it: (loss, correct, lr, size, images).
        ``size`` replaces the resolution schedule's (a measurement times each size)."""
        config = self.config
        # The batch: this process's share of the step's slice of the epoch's order, augmented by draws seeded from the
        # step alone, so that a resumed run trains on exactly the images the uninterrupted one would have.
        seed = _step_seed(config, epoch, step_in_epoch, self.rank)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator(self.device).manual_seed(seed)
        per_rank = config.batch_size // self.world
        start = step_in_epoch * config.batch_size + self.rank * per_rank
        index = order[start : start + per_rank]
        images = augment(self.data.train_x[index], generator, config.augment, None if flips is None else flips[index])
        # The lr and the image size follow the run's progress; the optimizer's two groups are the decayed weights and
        # the BatchNorm and bias parameters, which may learn faster.
        progress = self.progress((epoch - 1) * self.steps_per_epoch + step_in_epoch)
        lr = lr_at(config, progress)
        for group, scale in zip(parts.optimizer.param_groups, (1.0, config.bias_lr_scale), strict=True):
            group["lr"] = lr * scale
        size = size or resolution_at(self.resolution, progress)
        loss, correct = train_step(parts.trained, parts.optimizer, images, self.data.train_y[index], config, self.amp_dtype,
                                   self.channels_last, size, parts.scaler)
        if parts.ema is not None and progress >= config.ema_start:  # its first update copies the weights of then
            parts.ema.update_parameters(parts.model)
        return loss, correct, lr, size, len(index)


def train_step(model, optimizer, images, labels, config: TrainConfig, amp_dtype, channels_last: bool,
               size: int = IMAGE_SIZE, scaler: torch.amp.GradScaler | None = None):
    """One optimization step on an augmented uint8 batch, trained at ``size`` px; (loss, number correct)
    stay on the device (no sync). An enabled ``scaler`` scales the fp16 loss so that small gradients do
    not underflow to zero, and skips the steps whose gradients overflowed."""
    with autocast(images.device, amp_dtype):
        logits = model(resize(normalize(images, config.mean, config.std, channels_last), size))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def read_back(pending: list) -> tuple:
    """(the pending steps' losses, their total correct) on the host. This is where the host waits for the device:
    a GPU runs the steps the host has queued while the host queues more, and reading a number back stalls that queue
    until every step before it is done. So the loop reads back only at the steps that need the numbers, and then all
    of them at once, in one copy."""
    values = torch.cat([torch.stack([loss.float() for loss, _, _ in pending]),
                        torch.stack([correct.float() for _, correct, _ in pending]).sum().view(1)]).cpu()
    return values[:-1], float(values[-1])


def diverged(step_losses: torch.Tensor, window: list) -> bool:
    """Whether training has failed, from the losses just read back and the last DIVERGENCE_WINDOW (these included).
    A non-finite loss or one far above chance is a blow-up (the weights are already wrecked: no point waiting); a
    window whose mean stays above twice chance has not learned and is not learning. One noisy step under the explosion
    bound is no failure, so the slow test reads a window's mean."""
    return bool(not torch.isfinite(step_losses).all() or step_losses.max() > EXPLOSION_LOSS
                or (len(window) >= DIVERGENCE_WINDOW and sum(window) / len(window) > DIVERGENCE_LOSS))


def precision_name(amp_dtype) -> str:
    """How a run's scores were computed, in words: 'bf16 autocast', 'fp16 autocast' or 'fp32'."""
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(amp_dtype, "fp32")


def measured_on(split: str, precision: str = "fp32") -> str:
    """How a card's ``<split>_acc`` figures were measured, for the split a run (or the script that ships it) scored."""
    return (f"on the {'test set' if split == 'test' else 'validation split (the test set was never scored)'}: "
            f"{precision}, eval mode, final epoch, no test-time augmentation (tta_{split}_acc, where present: mean of "
            "image and mirror logits)")


def train(config: TrainConfig, run_dir, callbacks=(), stop_event=None, resume=False, command: str = "") -> dict:
    return Trainer(config, run_dir, callbacks, stop_event, command=command).run(resume=resume)


def resume_config(run_dir, epochs: int | None = None, **moved) -> TrainConfig:
    """The config a run was started with; ``epochs`` may only be raised, and the settings declared
    ``resume`` (where the data lives, the device) may be given anew in ``moved`` (None keeps them)."""
    config = runs.read_config(run_dir)
    try:
        config = config_from_dict(config)
    except (TypeError, ConfigError) as error:
        raise runs.RunError(f"{Path(run_dir).name}: config.json is not a valid training config ({error})") from None
    if epochs is not None:
        if config.steps:
            raise ConfigError(f"this run trains a fixed {config.steps:,} steps (a budget's plan, or --steps): it resumes to "
                              "them, and --epochs does not apply")
        if epochs < config.epochs:
            raise ConfigError(f"--epochs may only be raised on resume ({config.epochs} -> {epochs})")
        config.epochs = epochs
    for name, value in moved.items():
        if value is not None:
            setattr(config, name, value)
    validate(config)
    if not (Path(run_dir) / runs.CHECKPOINT).is_file():
        raise runs.RunError(f"{Path(run_dir).name}: no checkpoint.pt to resume from")
    return config
