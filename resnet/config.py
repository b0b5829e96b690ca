"""Every training setting, declared once: type, default, bounds, help, whether the form shows it,
whether a resume may change it. The CLI flags, the Train form, the run queue's child command and
validation are all derived from these declarations (``SETTINGS``), and the presets are overrides.
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field

from .constants import IMAGE_SIZE, MEAN, PUBLISHED_MEAN, PUBLISHED_STD, STD, TRAIN_IMAGES
from .data import AUGMENTATIONS, DATA_DIR_HELP
from .errors import UserError
from .model import MAX_BLOCKS

OPTIMIZERS = ("adam", "sgd", "rmsprop", "adagrad")
SCHEDULES = ("constant", "onecycle", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")
SEED_LIMIT = 2**32  # torch.Generator seeds, and numpy's for the tests' data
# Training sizes a resolution schedule may use: the network downsamples by 8, so each gives a whole
# feature map (1, 2, 3 or 4 pixels square) that the global average pool reduces exactly.
RESOLUTIONS = tuple(range(8, IMAGE_SIZE + 1, 8))
BLOCKS_RULE = f"four whole numbers from 1 to {MAX_BLOCKS}, like 1,1,1,1"


class ConfigError(UserError, ValueError):
    pass


def setting(default, help: str, *, choices=None, minimum=None, maximum=None, above=None, below=None, form=None,
            advanced: bool = False, resume: bool = False, cli: bool = True):
    """A TrainConfig field with what every consumer needs to know about it.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones. ``form`` is the
    Train tab's label (None: not on the form; ``advanced`` puts it in the Advanced accordion).
    ``resume``: a resumed run may be given a new value (it does not change the run's math).
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "below": below,
            "form": form, "advanced": advanced, "resume": resume, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # The network
    blocks: tuple = setting((1, 1, 1, 1), "blocks per stage, e.g. 1,1,1,1 (published) or 2,2,2,2", form="Blocks per stage")
    dropout: float = setting(0.1, "dropout after every residual add", minimum=0, below=1, form="Dropout")
    whiten_stem: bool = setting(False, "initialise the first convolution from the training images' 3x3 patch covariance "
                                "(its whitening directions, as airbench does), so the first steps see decorrelated inputs")
    # The optimizer
    optimizer: str = setting("adam", "optimizer", choices=OPTIMIZERS, form="Optimizer")
    lr: float = setting(0.01, "(peak) learning rate", above=0, form="Learning rate")
    momentum: float = setting(0.9, "momentum (SGD, RMSprop)", minimum=0, below=1, form="Momentum (SGD, RMSprop)", advanced=True)
    weight_decay: float = setting(0.0, "L2 weight decay on conv and linear weights", minimum=0, form="Weight decay",
                                  advanced=True)
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    bias_lr_scale: float = setting(1.0, "learning-rate multiplier of BatchNorm parameters and biases", above=0)
    freeze_bn_scales: bool = setting(False, "keep every BatchNorm scale at its initial 1 (untrained): the next layer's "
                                     "weights can absorb any scale, so training it only moves their effective learning "
                                     "rate (Page's ResNet-9 and airbench freeze it)")
    batch_size: int = setting(64, "images per step (global under DDP)", minimum=1, form="Batch size")
    budget: str = setting("", "wall-clock budget from start to finished, such as 90s, 5m or 1h ('' = none): the run measures "
                          "this machine, then plans its steps so that training, probes and the final scoring end within it",
                          form="Time budget")
    epochs: int = setting(200, "passes over the training images (may be raised on resume; a budget plans its own)", minimum=1,
                          form="Epochs", resume=True)
    steps: int = setting(0, "train exactly N steps, the last epoch cut short where they end (0 = whole epochs); a budget's "
                         "plan sets it", minimum=0)
    schedule: str = setting("constant", "learning-rate schedule", choices=SCHEDULES, form="Learning-rate schedule", advanced=True)
    warmup: float = setting(0.0, "fraction of all steps spent warming up linearly from zero", minimum=0, below=1)
    label_smoothing: float = setting(0.0, "label smoothing of the loss", minimum=0, below=1, form="Label smoothing",
                                     advanced=True)
    ema: float = setting(0.0, "per-step decay of a weight average (0 = off)", minimum=0, below=1)
    ema_start: float = setting(0.0, "fraction of the steps after which the weight average starts from the weights of "
                               "then (before it, the trained network itself is scored); started a little after the last "
                               "resolution change, once the BatchNorm running statistics have followed the new size, it "
                               "never averages statistics of two training sizes", minimum=0, below=1)
    # The data
    augment: str = setting("original", "random crop padding and horizontal flip: standard (4 px), light (2 px), "
                           "original (the published crop) or none (the images as they are: no crop and no flip, so "
                           "alternate_flip has nothing to alternate)", choices=AUGMENTATIONS)
    alternate_flip: bool = setting(False, "flip each image on every other epoch instead of at random")
    resolution: str = setting("", "training resolution schedule: SIZE:UNTIL pairs, e.g. 16:0.5,24:0.75 trains at 16 px "
                              "for the first half of the steps, 24 px to three quarters, 32 px after ('' = 32 px throughout)",
                              form="Resolution schedule")
    mean: tuple = setting(PUBLISHED_MEAN, "per-channel mean of the inputs", cli=False)
    std: tuple = setting(PUBLISHED_STD, "per-channel std of the inputs", cli=False)
    limit_train: int = setting(0, "train on the first N images only (0 = all)", minimum=0, form="Training images")
    limit_test: int = setting(0, "evaluate on the first N test images only (0 = all)", minimum=0,
                              form="Test images scored per epoch", advanced=True)
    val_size: int = setting(0, "carve N seeded validation images from the training set (0 = none; at least 2: the "
                            "calibration temperature fits on one half and is reported on the other)", minimum=0,
                            below=TRAIN_IMAGES)
    split_seed: int | None = setting(None, "seed of the validation split (default: --seed); an experiment fixes it, so "
                                     "runs of different seeds hold out the same images", minimum=0, below=SEED_LIMIT)
    score_test: bool = setting(True, "score the test set at each epoch and at the end; when off, only the validation "
                               "split is scored (val_size must be set), for runs that choose a recipe: the test set is "
                               "then never scored")
    # Watching the run
    log_every: int = setting(50, "write a step record every N steps", minimum=1)
    probe_size: int = setting(0, "score N held-out images (validation if any, else test) in eval mode during training "
                              "(0 = off)", minimum=0)
    probes: int = setting(10, "probe scores per run, evenly spaced by steps whatever the machine's speed; each scores at most "
                          "--probe-size images, fewer where more would cost over 5 percent of the training since the last one",
                          minimum=0)
    score_every: int = setting(1, "score the held-out sets every N epochs (0 = only after the last epoch, which is always "
                               "scored)", minimum=0)
    tta: bool = setting(False, "also score flip test-time augmentation (the mean of image and mirror logits) at the end")
    eval_batch_size: int = setting(500, "images per evaluation forward pass", minimum=1, cli=False)
    # Where and how it runs
    seed: int = setting(0, "seed of the initialisation and every random draw", minimum=0, below=SEED_LIMIT, form="Seed",
                        advanced=True)
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, mps", resume=True)
    precision: str = setting("auto", "autocast precision (auto: bf16 where the hardware has it)", choices=PRECISIONS)
    channels_last: bool | None = setting(None, "channels_last memory layout (default: on for CPUs and autocast)")
    compile: bool = setting(False, "torch.compile the model")
    data_dir: str | None = setting(None, DATA_DIR_HELP,
                                   resume=True)
    weights_dtype: str = setting("float32", "dtype of the published weights file", choices=WEIGHTS_DTYPES)


SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FORM_SETTINGS = tuple(name for name, f in SETTINGS.items() if f.metadata["form"])
CLI_SETTINGS = tuple(name for name, f in SETTINGS.items() if f.metadata["cli"])
RESUME_SETTINGS = tuple(name for name, f in SETTINGS.items() if f.metadata["resume"])
# How big a run is, as opposed to how it learns: changing the preset keeps these as the form has them.
SIZE_SETTINGS = ("budget", "epochs", "limit_train", "limit_test", "seed")

PRESETS = {
    # Learns within minutes on a CPU (the Train tab's default, under a time budget): see QUICK_RUN. Each choice was
    # measured on a validation split: for one pass over 10,000 images (results/quick-recipe-search.json), then
    # against its alternatives under 1, 5 and 15-minute budgets (results/budget-search.json, docs/training-budgets.md).
    "quick": {
        "dropout": 0.0,
        "whiten_stem": True,  # +7.8 points at this budget: the first steps see decorrelated patches
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "batch_size": 64,
        "schedule": "onecycle",
        "warmup": 0.2,
        "label_smoothing": 0.2,
        "augment": "none",  # one pass over 10,000 images does not overfit; crops and flips only slow the start
        "resolution": "16:0.5,24:0.75",
        "mean": MEAN,
        "std": STD,
    },
    # The published recipe exactly: Adam 0.01, batch 64, 200 epochs, constant lr, its crop.
    "original": {},
    # The shipped weights' recipe (docs/training.md, "Shipped weights"); `python -m resnet ablation` measures what each part of
    # it, with a whitened stem, buys.
    "fast": {
        "dropout": 0.0,
        "optimizer": "sgd",
        "lr": 0.4,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "batch_size": 512,
        "epochs": 30,
        "schedule": "onecycle",
        "warmup": 0.15,
        "label_smoothing": 0.2,
        "augment": "standard",
        "alternate_flip": True,
        "mean": MEAN,
        "std": STD,
    },
}


# The Train tab's default run: a recipe that learns within minutes on a 2-core CPU, its size, and the
# watching every run started from the page gets (step rows a few seconds apart, a probe every ~30 s).
QUICK_RUN = {
    "preset": "quick",
    "size": {"budget": "2m", "epochs": 1, "limit_train": 0, "limit_test": 0},
    "watch": {"log_every": 5, "probe_size": 500, "probes": 20},
}


def validation_seed(config: TrainConfig) -> int:
    """The seed of a run's validation split: its ``split_seed`` where it fixes one, else its ``seed``."""
    return config.seed if config.split_seed is None else config.split_seed


WHERE_AND_WHAT_IS_SCORED = ("data_dir", "device", "score_test")


def differences(stored: dict, config: TrainConfig) -> str:
    """What a run's recorded config trains differently from ``config`` ('lr 0.1 -> 0.2, ...'); '' where nothing.

    Where it ran (``data_dir``, ``device``) is not a difference, nor is whether it also scored the test set
    (``score_test``: evaluation changes no weight), nor how the validation seed was given (``split_seed`` unset
    means the run's seed); a setting added since the record was written has its default.
    """
    before = config_from_dict(stored)
    old, new = dataclasses.asdict(before), dataclasses.asdict(config)
    old["split_seed"], new["split_seed"] = validation_seed(before), validation_seed(config)
    changed = [key for key in new if key not in WHERE_AND_WHAT_IS_SCORED and old[key] != new[key]]
    return ", ".join(f"{key} {old[key]} -> {new[key]}" for key in changed)


def kind(name: str):
    """The Python type a setting holds: bool, int, float, str or tuple (None allowed where declared)."""
    declared = SETTINGS[name].type
    return next(t for t in (bool, int, float, str, tuple) if declared is t or t in getattr(declared, "__args__", ()))


def make_config(preset: str = "fast", **overrides) -> TrainConfig:
    """A preset's config with explicit overrides applied (None means: keep the preset's)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig(**values)
    validate(config)
    return config


def config_from_dict(values: dict) -> TrainConfig:
    config = TrainConfig(**{k: v for k, v in values.items() if k in SETTINGS})
    config.blocks, config.mean, config.std = tuple(config.blocks), tuple(config.mean), tuple(config.std)
    validate(config)
    return config


def _number(name, value, whole: bool):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):  # before int(): int(nan) and int(inf) raise ValueError/OverflowError
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if whole and int(value) != value:
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return value


def _check_bounds(name: str, value, meta: dict) -> None:
    low, high, above, below = meta["minimum"], meta["maximum"], meta["above"], meta["below"]
    if low is not None and below is not None:
        if not low <= value < below:
            raise ConfigError(f"{name} must be in [{low}, {below}), got {value}")
    elif low is not None and value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")
    if above is not None and not value > above:
        raise ConfigError(f"{name} must be positive, got {value}" if above == 0 else f"{name} must be above {above}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high}, got {value}")


BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MIN_BUDGET_S, MAX_BUDGET_S = 20, 24 * 3600  # under 20 s, starting Python and loading the data leave nothing to train


def parse_budget(text) -> float:
    """``"90s"``, ``"5m"``, ``"1.5h"`` -> seconds; ``""`` -> 0 (no budget)."""
    if not isinstance(text, str):
        raise ConfigError(f"budget must be text such as 90s, 5m or 1h, got {text!r}")
    if not text.strip():
        return 0.0
    match = BUDGET.match(text)
    if not match:
        raise ConfigError(f"budget must be a number of seconds, minutes or hours such as 90s, 5m or 1h; got {text[:40]!r}")
    seconds = float(match[1]) * UNIT_SECONDS[match[2]]
    if not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:
        raise ConfigError(f"budget must be between {MIN_BUDGET_S}s and {MAX_BUDGET_S // 3600}h, got {text.strip()}")
    return seconds


def parse_resolution(text: str) -> list:
    """``"16:0.5,24:0.75"`` -> [(16, 0.5), (24, 0.75)]: train at 16 px until half of the steps are done,
    at 24 px until three quarters, at 32 px after. ``""`` is 32 px throughout."""
    if not isinstance(text, str):
        raise ConfigError(f"resolution must be text such as 16:0.5,24:0.75, got {text!r}")
    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, _, until = part.partition(":")
        try:
            phases.append((int(size), float(until)))
        except ValueError:
            raise ConfigError(f"resolution: {part!r} is not SIZE:UNTIL, e.g. 16:0.5 (16 px for the first half)") from None
    for size, until in phases:
        if size not in RESOLUTIONS[:-1]:
            raise ConfigError(f"resolution: {size} px is not one of {', '.join(map(str, RESOLUTIONS[:-1]))} "
                              f"(training ends at {IMAGE_SIZE} px)")
        if not 0 < until < 1:
            raise ConfigError(f"resolution: {size}:{until} must end at a fraction of the steps in (0, 1)")
    ends = [until for _, until in phases]
    if ends != sorted(set(ends)):
        raise ConfigError(f"resolution: the phases must end in increasing order, got {text!r}")
    return phases


def validate(c: TrainConfig) -> None:
    """Raise ConfigError with one clear sentence for the first invalid setting."""
    for name, f in SETTINGS.items():
        value, meta = getattr(c, name), f.metadata
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(meta['choices'])}")
        elif value is None and type(None) in getattr(f.type, "__args__", ()):
            continue
        elif kind(name) in (int, float):
            _check_bounds(name, _number(name, value, kind(name) is int), meta)
    check_blocks(c.blocks)
    parse_resolution(c.resolution)
    parse_budget(c.budget)
    if c.val_size == 1:
        raise ConfigError("val_size must be 0 or at least 2: the calibration temperature fits on one half of the "
                          "split and is reported on the other")
    if not c.score_test and not c.val_size:
        raise ConfigError("score_test off needs a validation split to score instead: give val_size (--val-size N)")


def parse_blocks(text) -> tuple:
    """``"2,2,2,2"`` (a form field, a flag) -> (2, 2, 2, 2); how many and how large is ``check_blocks``'s to say."""
    try:
        return tuple(int(b) for b in str(text).split(","))
    except ValueError:
        raise ConfigError(f"blocks must be {BLOCKS_RULE}; got {str(text)[:40]!r}") from None


def check_blocks(blocks) -> tuple:
    """Blocks per stage: four stages, each of 1 to MAX_BLOCKS BasicBlocks."""
    blocks = tuple(blocks)
    if len(blocks) != 4 or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BLOCKS for b in blocks):
        raise ConfigError(f"blocks must be {BLOCKS_RULE}; got {list(blocks)}")
    return blocks


def flag(name: str) -> str:
    """A setting's command-line flag: ``label_smoothing`` -> ``--label-smoothing`` (a switch's off form adds ``no-``)."""
    return "--" + name.replace("_", "-")


def cli_args(preset: str, overrides: dict) -> list:
    """The `python -m resnet train` flags for a preset plus the overrides that change it (None = keep the preset's)."""
    args = ["--preset", preset]
    base = TrainConfig(**PRESETS.get(preset, {}))
    for name, value in overrides.items():
        if value is None or value == getattr(base, name):
            continue
        if kind(name) is bool:
            args.append(flag(name) if value else "--no-" + flag(name)[2:])
        else:
            args += [flag(name), str(to_form(name, value))]
    return args


def to_form(name: str, value):
    """A setting's value as a form field or a flag writes it (blocks as "1,1,1,1"); ``from_form`` reads it back."""
    return ",".join(str(int(b)) for b in value) if kind(name) is tuple and not isinstance(value, str) else value


def from_form(name: str, value):
    """A form or raw-API value as the setting's type: 2.0 -> 2 for whole numbers, "1,1,1,1" -> (1, 1, 1, 1).
    Anything else comes back as it came, for ``validate`` to refuse by name (None keeps the preset's)."""
    if kind(name) is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if name == "blocks" and value is not None:
        return parse_blocks(value)
    if kind(name) is str and isinstance(value, str):
        return value.strip()
    return value
