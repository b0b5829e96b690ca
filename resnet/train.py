"""The trainer: whole data set as tensors on the device, batched augmentation, one plain loop.

Every random draw is a pure function of (seed, epoch, step), so a run stopped anywhere and
resumed from its checkpoint continues exactly as if it had never stopped.
"""

import contextlib
import dataclasses
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

from . import runs
from .constants import MEAN, PUBLISHED_MEAN, PUBLISHED_STD, STD
from .data import AUGMENTATIONS, augment, load_split, normalize, split_validation
from .evaluate import autocast, evaluate
from .model import build_model, count_parameters
from .weights import atomic_write_bytes, atomic_write_json, make_card, save_weights

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adagrad")
SCHEDULES = ("constant", "onecycle", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")
DIVERGENCE_WINDOW = 50
DIVERGENCE_LOSS = 2 * math.log(10)  # twice the loss of a uniform guess over 10 classes


@dataclass
class TrainConfig:
    blocks: tuple = (1, 1, 1, 1)
    dropout: float = 0.1
    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    batch_size: int = 64
    epochs: int = 200
    schedule: str = "constant"
    warmup: float = 0.0  # fraction of all steps spent warming up linearly from zero
    label_smoothing: float = 0.0
    ema: float = 0.0  # per-step decay of an exponential moving average of the weights; 0 = off
    augment: str = "original"
    alternate_flip: bool = False  # flip each image on every other epoch instead of at random
    mean: tuple = PUBLISHED_MEAN
    std: tuple = PUBLISHED_STD
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None  # None: see default_channels_last
    compile: bool = False
    limit_train: int = 0  # 0 = all images
    limit_test: int = 0
    val_size: int = 0
    log_every: int = 50
    eval_batch_size: int = 500
    data_dir: str | None = None
    weights_dtype: str = "float32"


SEED_LIMIT = 2**32  # torch.Generator seeds, and numpy's for the tests' data

PRESETS = {
    # The published recipe exactly: Adam 0.01, batch 64, 200 epochs, constant lr, its crop.
    "original": {},
    # Our time-to-accuracy recipe (README "Shipped weights"); `python -m resnet ablation` measures what each part buys.
    "fast": dict(
        dropout=0.0,
        optimizer="sgd",
        lr=0.4,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        batch_size=512,
        epochs=30,
        schedule="onecycle",
        warmup=0.15,
        label_smoothing=0.2,
        augment="standard",
        alternate_flip=True,
        mean=MEAN,
        std=STD,
    ),
}


class ConfigError(ValueError):
    pass


def make_config(preset: str = "fast", **overrides) -> TrainConfig:
    """A preset's config with explicit overrides applied (None means: keep the preset's)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig(**values)
    validate(config)
    return config


def config_from_dict(values: dict) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in fields})
    config.blocks, config.mean, config.std = tuple(config.blocks), tuple(config.mean), tuple(config.std)
    validate(config)
    return config


def _number(name, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):  # before int(): int(nan) and int(inf) raise ValueError/OverflowError
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return value


def validate(c: TrainConfig) -> None:
    """Raise ConfigError with one clear sentence for the first invalid setting."""
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {c.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if c.augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {c.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if c.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {c.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if _number("lr", c.lr) <= 0:
        raise ConfigError(f"lr must be positive, got {c.lr}")
    if not 0 <= _number("dropout", c.dropout) < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {c.dropout}")
    if not 0 <= _number("momentum", c.momentum) < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {c.momentum}")
    if _number("weight_decay", c.weight_decay) < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {c.weight_decay}")
    if not 0 <= _number("warmup", c.warmup) < 1:
        raise ConfigError(f"warmup must be a fraction in [0, 1), got {c.warmup}")
    if not 0 <= _number("label_smoothing", c.label_smoothing) < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if not 0 <= _number("ema", c.ema) < 1:
        raise ConfigError(f"ema must be a decay in [0, 1), got {c.ema}")
    for name in ("batch_size", "epochs", "log_every", "eval_batch_size"):
        if _number(name, getattr(c, name), int) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(c, name)}")
    for name in ("limit_train", "limit_test", "val_size", "seed"):
        if _number(name, getattr(c, name), int) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
    if c.seed >= SEED_LIMIT:
        raise ConfigError(f"seed must be below 2**32, got {c.seed}")
    blocks = tuple(c.blocks)
    if len(blocks) != 4 or not all(isinstance(b, int) and 1 <= b <= 8 for b in blocks):
        raise ConfigError(f"blocks must be four whole numbers from 1 to 8, got {list(blocks)}")
    if c.weights_dtype not in WEIGHTS_DTYPES:
        raise ConfigError(f"weights_dtype must be float32, float16 or bfloat16, got {c.weights_dtype!r}")


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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but no CUDA GPU is available")
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
    if device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
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
    return f"cpu: {_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}{bf16}, {torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of a step: a pure function, so resuming needs no scheduler state."""
    if config.schedule == "constant":
        return config.lr
    progress = step / max(1, total_steps)
    if progress < config.warmup:
        return config.lr * progress / config.warmup
    rest = (progress - config.warmup) / max(1e-12, 1 - config.warmup)
    if config.schedule == "onecycle":
        return config.lr * (1 - rest)
    return config.lr * 0.5 * (1 + math.cos(math.pi * rest))


def build_optimizer(config: TrainConfig, model) -> torch.optim.Optimizer:
    # Weight decay on BatchNorm scales and biases only fights the normalization; leave them free.
    decay = [p for p in model.parameters() if p.ndim > 1]
    free = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": free, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.Adagrad(groups, lr=config.lr)


def _step_seed(config: TrainConfig, epoch: int, step: int, rank: int) -> int:
    return (config.seed * 1_000_003 + epoch * 10_007 + step) * 64 + rank


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
    train_x, train_y = load_split(config.data_dir, train=True)
    test_x, test_y = load_split(config.data_dir, train=False)
    val_x = val_y = None
    if config.val_size:
        train_x, train_y, val_x, val_y = split_validation(train_x, train_y, config.val_size, config.seed)
    if config.limit_train:
        train_x, train_y = train_x[: config.limit_train], train_y[: config.limit_train]
    if config.limit_test:
        test_x, test_y = test_x[: config.limit_test], test_y[: config.limit_test]
    if config.batch_size > len(train_x):
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(train_x)} training images")
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Dataset(move(train_x), move(train_y), test_x, test_y, val_x, val_y)


class Stop:
    """Why the loop ended early; shared by every rank through an all-reduce (largest wins)."""

    NONE, STOPPED, DIVERGED = 0, 1, 2


class Trainer:
    """One run: ``Trainer(config, run_dir).run()`` trains, writing the run folder as it goes."""

    def __init__(self, config: TrainConfig, run_dir, callbacks=(), stop_event=None, data: Dataset | None = None,
                 command: str = ""):
        validate(config)
        self.command = command
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
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.channels_last = (config.channels_last if config.channels_last is not None
                              else default_channels_last(self.device, self.amp_dtype))
        self.data = data or load_data(config, self.device)
        self.steps_per_epoch = len(self.data.train_x) // config.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs

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

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        config = self.config
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                (self.run_dir / runs.METRICS).unlink(missing_ok=True)
            atomic_write_json(self.run_dir / runs.CONFIG, dataclasses.asdict(config))
            self._status("running", "resumed" if resume else "started")
        try:  # a failure anywhere from here (a bad checkpoint too) is reported, not left as "running"
            torch.manual_seed(config.seed)
            model = build_model(config.blocks, config.dropout).to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = build_optimizer(config, model)
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None
            position = {"epoch": 1, "step_in_epoch": 0, "elapsed_s": 0.0, "sums": [0.0, 0.0, 0]}
            if resume:
                checkpoint = torch.load(self.run_dir / runs.CHECKPOINT, map_location=self.device, weights_only=True)
                model.load_state_dict(checkpoint["model"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                if ema is not None:
                    ema.load_state_dict(checkpoint["ema"])
                position = checkpoint["position"]
                if self.writes:  # rows past the checkpoint (a kill mid-epoch, or after an epoch row but before its
                    # checkpoint) are trained again from here: drop them, and any torn line, so each step appears once
                    done = (position["epoch"] - 1) * self.steps_per_epoch + position["step_in_epoch"]
                    kept = [row for row in runs.read_metrics(self.run_dir) if row["step"] <= done]
                    atomic_write_bytes(self.run_dir / runs.METRICS, "".join(json.dumps(row) + "\n" for row in kept).encode())
            trained = model
            if self.distributed:
                trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if config.compile:
                trained = torch.compile(trained)
            return self._loop(model, trained, optimizer, ema, position)
        except Exception as error:
            self._status("failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            if self.distributed and dist.is_initialized():
                dist.destroy_process_group()

    def _loop(self, model, trained, optimizer, ema, position) -> dict:
        config, data = self.config, self.data
        started = time.perf_counter() - position["elapsed_s"]
        elapsed = lambda: time.perf_counter() - started  # noqa: E731
        window_losses = []
        log_sums = [0.0, 0.0, 0]  # loss sum, correct, seen since the last step record
        log_time = 0.0
        epoch_train_time = position.get("train_time", 0.0)
        epoch_sums = list(position["sums"])
        per_rank = config.batch_size // self.world
        for epoch in range(position["epoch"], config.epochs + 1):
            order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
            order = order.to(self.device)
            flip_parity = None
            if config.alternate_flip:
                base = torch.rand(len(data.train_x), generator=torch.Generator().manual_seed(config.seed)) < 0.5
                flip_parity = (base ^ bool(epoch % 2)).to(self.device)
            first_step = position["step_in_epoch"] if epoch == position["epoch"] else 0
            if first_step == 0:
                epoch_sums, epoch_train_time = [0.0, 0.0, 0], 0.0
            for step_in_epoch in range(first_step, self.steps_per_epoch):
                step = (epoch - 1) * self.steps_per_epoch + step_in_epoch
                tick = time.perf_counter()
                seed = _step_seed(config, epoch, step_in_epoch, self.rank)
                torch.manual_seed(seed)  # dropout
                generator = torch.Generator(self.device).manual_seed(seed)
                start = step_in_epoch * config.batch_size + self.rank * per_rank
                index = order[start : start + per_rank]
                images = augment(data.train_x[index], generator, config.augment, None if flip_parity is None else flip_parity[index])
                labels = data.train_y[index]
                lr = lr_at(config, step, self.total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                detached, correct = train_step(trained, optimizer, images, labels, config, self.amp_dtype, self.channels_last)
                if ema is not None:
                    ema.update_parameters(model)
                window_losses.append(detached)
                for sums in (log_sums, epoch_sums):
                    sums[0] += detached * len(labels)
                    sums[1] += correct
                    sums[2] += len(labels)
                spent = time.perf_counter() - tick
                log_time += spent
                epoch_train_time += spent
                done = step + 1
                stop = Stop.STOPPED if self.stop_event is not None and self.stop_event.is_set() else Stop.NONE
                check = done % config.log_every == 0 or step_in_epoch + 1 == self.steps_per_epoch or stop
                if check:
                    window = torch.stack(window_losses[-DIVERGENCE_WINDOW:]).float().cpu()
                    window_losses = window_losses[-DIVERGENCE_WINDOW:]
                    if not torch.isfinite(window).all() or (len(window) >= DIVERGENCE_WINDOW and window.mean() > DIVERGENCE_LOSS):
                        stop = Stop.DIVERGED
                stop = self._agree(stop)
                if done % config.log_every == 0 and stop != Stop.DIVERGED:
                    loss_sum, correct_sum, seen = self._reduce(log_sums)
                    self._emit({
                        "kind": "step", "epoch": epoch, "step": done, "train_loss": loss_sum / seen,
                        "train_acc": correct_sum / seen, "lr": lr,
                        "images_per_s": seen / max(log_time, 1e-9), "elapsed_s": elapsed(),
                    })
                    log_sums, log_time = [0.0, 0.0, 0], 0.0
                if stop == Stop.DIVERGED:
                    message = f"diverged at epoch {epoch}, step {done}: the loss became non-finite or stayed above {DIVERGENCE_LOSS:.2f}; try a smaller learning rate"
                    self._status("diverged", message)
                    return {"status": "diverged", "message": message}
                if stop == Stop.STOPPED:
                    self._checkpoint(model, optimizer, ema, epoch, step_in_epoch + 1, elapsed(), epoch_sums, epoch_train_time)
                    message = f"stopped at epoch {epoch}, step {done}; resume to continue"
                    self._status("stopped", message)
                    return {"status": "stopped", "message": message}
            # The lr of the epoch's last step (computed: a run resumed right after that step runs no step here).
            lr = lr_at(config, epoch * self.steps_per_epoch - 1, self.total_steps)
            record = self._epoch_record(model, ema, epoch, epoch_sums, epoch_train_time, lr, elapsed)
            self._emit(record)
            self._checkpoint(model, optimizer, ema, epoch + 1, 0, elapsed(), [0.0, 0.0, 0], 0.0)
        return self._finish(model, ema, elapsed())

    def _agree(self, stop: int) -> int:
        if not self.distributed:
            return stop
        flag = torch.tensor([stop], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _reduce(self, sums) -> tuple:
        values = torch.tensor([float(s) for s in sums], dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(values)
        loss_sum, correct, seen = values.tolist()
        return loss_sum, correct, max(seen, 1)

    def _scored_model(self, model, ema):
        return ema.module if ema is not None else model

    def _evaluate(self, model, images, labels) -> dict:
        return evaluate(model, images, labels, self.config.mean, self.config.std, self.config.eval_batch_size,
                        amp_dtype=self.amp_dtype, channels_last=self.channels_last)

    def _epoch_record(self, model, ema, epoch, sums, train_time, lr, elapsed) -> dict:
        loss_sum, correct, seen = self._reduce(sums)
        record = {
            "kind": "epoch", "epoch": epoch, "step": epoch * self.steps_per_epoch,
            "train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": lr,
            "images_per_s": seen / max(train_time, 1e-9),
        }
        if self.writes:
            scored = self._scored_model(model, ema)
            test = self._evaluate(scored, self.data.test_x, self.data.test_y)
            record.update(test_loss=test["test_loss"], test_acc=test["test_acc"])
            if self.data.val_x is not None:
                val = self._evaluate(scored, self.data.val_x, self.data.val_y)
                record.update(val_loss=val["test_loss"], val_acc=val["test_acc"])
        if self.distributed:
            dist.barrier()
        record["elapsed_s"] = elapsed()
        return record

    def _checkpoint(self, model, optimizer, ema, epoch, step_in_epoch, elapsed_s, sums, train_time) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "position": {"epoch": epoch, "step_in_epoch": step_in_epoch, "elapsed_s": elapsed_s,
                         "sums": [float(s) for s in sums], "train_time": train_time},
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        self._save_checkpoint(state)

    def _finish(self, model, ema, elapsed_s) -> dict:
        config = self.config
        if not self.writes:
            return {"status": "finished", "message": f"finished (rank {self.rank}; rank 0 scores the model and writes the files)"}
        scored = self._scored_model(model, ema)
        final = evaluate(scored, self.data.test_x, self.data.test_y, config.mean, config.std, config.eval_batch_size)
        tta = evaluate(scored, self.data.test_x, self.data.test_y, config.mean, config.std, config.eval_batch_size, tta=True)
        curve = [
            {k: r[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "elapsed_s") if k in r}
            for r in runs.read_metrics(self.run_dir) if r["kind"] == "epoch"
        ]
        card = make_card(
            scored, config.mean, config.std,
            parameters=count_parameters(scored),
            test_acc=final["test_acc"], test_loss=final["test_loss"], tta_test_acc=tta["test_acc"],
            per_class_acc=final["per_class_acc"], confusion=final["confusion"], ece=final["ece"],
            test_images=final["count"],
            measured="fp32, eval mode, final epoch, no test-time augmentation (tta_test_acc: mean of image and mirror logits)",
            training=dataclasses.asdict(config),
            curve=curve,
            provenance={
                "command": self.command,
                "git_commit": self.git_commit,
                "device": describe_device(self.device),
                "world_size": self.world,
                "torch": torch.__version__,
                "elapsed_s": elapsed_s,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        save_weights(scored, self.run_dir / runs.WEIGHTS, card, dtype=getattr(torch, config.weights_dtype))
        message = f"finished: test accuracy {final['test_acc']:.2%} after {config.epochs} epochs"
        self._status("finished", message)
        return {"status": "finished", "message": message, **final}


def train_step(model, optimizer, images, labels, config: TrainConfig, amp_dtype, channels_last: bool):
    """One optimization step on an augmented uint8 batch; (loss, number correct) stay on the device (no sync)."""
    with autocast(images.device, amp_dtype):
        logits = model(normalize(images, config.mean, config.std, channels_last))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def train(config: TrainConfig, run_dir, callbacks=(), stop_event=None, resume=False, command: str = "") -> dict:
    return Trainer(config, run_dir, callbacks, stop_event, command=command).run(resume=resume)


def resume_config(run_dir, epochs: int | None = None) -> TrainConfig:
    """The config a run was started with; only ``epochs`` may be raised on resume."""
    config = runs.read_config(run_dir)
    try:
        config = config_from_dict(config)
    except (TypeError, ConfigError) as error:
        raise runs.RunError(f"{Path(run_dir).name}: config.json is not a valid training config ({error})") from None
    if epochs is not None:
        if epochs < config.epochs:
            raise ConfigError(f"--epochs may only be raised on resume ({config.epochs} -> {epochs})")
        config.epochs = epochs
    if not (Path(run_dir) / runs.CHECKPOINT).is_file():
        raise runs.RunError(f"{Path(run_dir).name}: no checkpoint.pt to resume from")
    return config

