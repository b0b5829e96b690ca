"""Runs planned to a wall-clock budget, and what watching any run may cost.

A budget (``--budget 5m``) counts from the moment the training process starts to the moment its run
reads ``finished``: starting Python, loading the data, measuring this machine, training, probing,
checkpoints and the final scoring all come out of it. The trainer measures what one image costs at
each training size on this machine (``Rates``), and ``plan`` turns the seconds left into a number of
steps: a one-cycle or cosine schedule needs its length before the first step, and the resolution
schedule is a fraction of that length. The plan is then part of the run's config, so a stopped run
resumes to the same steps, schedule and resolution phases whatever machine it resumes on.

A few steps measured at the start miss what a long run meets (another process on the cores, a phase slower than
its first steps), so a budgeted run re-fits its length to its own pace at a few points of its progress
(``REPLAN_AT``). The schedules are functions of progress, and a re-fit bends progress from that step on
(``progress_at``): the lr and the resolution carry on from where they were, and the steps left follow the same
schedule shape, faster or slower. Each re-fit is recorded in the plan, so a resume follows it too.

Everything here is a pure function of numbers, except ``process_age_s``, which reads the clock.
"""

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, parse_resolution
from .constants import IMAGE_SIZE

MARGIN = 0.04  # of the budget, kept free: the speed of a long run wanders a few percent from a few measured steps
PROBE_SHARE = 0.05  # the probes' cost, as a share of the training compute between two of them
# A short run should not spend a quarter of its time scoring once it has stopped learning: on a slow CPU the
# 10,000 test images alone would take most of a minute, so a budget scores as many of them as a fifth of it affords.
FINAL_SHARE = 0.2
MIN_TEST_IMAGES = 500  # fewer would make the final figure a coin toss (a 95% interval of about +-4 points)
# Scoring an image is its forward pass; training it is a forward and a backward pass, about three forwards.
TRAIN_PER_SCORE = 3.0
# A machine's first run plans its final scoring before it has scored anything: at TRAIN_PER_SCORE times its 32 px
# training pace, less this share. Scoring batches of 500 met 2.6-3.0 times that pace on the 2-core EPYC (the plans
# in bench/results/budget.json, budget-sustained-0.93.json and budget-speeds-23f79fb.json), and a guess on the fast
# side would overrun the budget. The pace the final scoring meets is kept for the next run (resnet.speeds).
FIRST_SCORE_DISCOUNT = 1 / 6
# Where a budgeted run re-fits its length, as progress through its schedules. Each size of the default resolution
# schedule (16 px to 0.5, 24 px to 0.75) has been trained for a while by the re-fit after its phase begins.
REPLAN_AT = (0.2, 0.4, 0.6, 0.8)
MIN_STEPS_MET = 5  # a size's own pace counts once it has trained this many steps; before, the measured one, scaled


def describe_duration(seconds: float) -> str:
    """A time span in words: 90 -> '1 min 30 s', 300 -> '5 min', 3600 -> '1 h', 8857 -> '2 h 28 min' (seconds only
    under an hour), and '?' where it is not known (an estimate from no progress)."""
    if not math.isfinite(seconds):
        return "?"
    if seconds >= 3600:
        seconds = round(seconds / 60) * 60
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes) + [f"{rest} s"] * bool(rest)
    return " ".join(parts) or "0 s"


def process_age_s() -> float:
    """Seconds since this process started (Linux; 0 elsewhere): the budget includes starting Python and
    importing torch, which come before any of the package's code runs."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def size_shares(resolution: str, start: float = 0.0) -> dict:
    """{training size: share of the progress from ``start`` to the end} of a resolution schedule:
    ``"16:0.5,24:0.75"`` -> {16: .5, 24: .25, 32: .25}, and from 0.6 on -> {24: .15, 32: .25}."""
    shares, begin = {}, 0.0
    for size, until in [*parse_resolution(resolution), (IMAGE_SIZE, 1.0)]:
        span = min(until, 1.0) - max(begin, start)
        if span > 0:
            shares[size] = shares.get(size, 0.0) + span
        begin = max(begin, until)
    return shares


def progress_at(step: int, knots: list) -> float:
    """A step's progress through its run's schedules, 0 at the first step and 1 at the last: linear between the
    knots [(step, progress), ..., (total steps, 1.0)], so a run re-fitted at a knot keeps its lr and resolution
    continuous there."""
    (s0, p0), (s1, p1) = next(((a, b) for a, b in itertools.pairwise(knots) if step < b[0]), knots[-2:])
    return p0 + (p1 - p0) * (step - s0) / max(1, s1 - s0)


def first_score_rate(train_rate: float) -> float:
    """Scored images per second, guessed from the training images per second at 32 px (see FIRST_SCORE_DISCOUNT)."""
    return TRAIN_PER_SCORE * (1 - FIRST_SCORE_DISCOUNT) * train_rate


def probe_images(probe_size: int, images_between: float, resolution: str) -> int:
    """How many held-out images one probe scores: ``probe_size``, or fewer where scoring that many would cost
    more than PROBE_SHARE of the training compute since the last probe. A probe scores at full size; a training
    image at 16 px costs a quarter of one at 32 px."""
    if not probe_size:
        return 0
    scale = sum(share * (size / IMAGE_SIZE) ** 2 for size, share in size_shares(resolution).items())
    affordable = math.floor(PROBE_SHARE * TRAIN_PER_SCORE * images_between * scale)
    return max(1, min(probe_size, affordable))


def probe_interval(total_steps: int, probes: int) -> int:
    """Steps between probes: at least ``probes`` of them, evenly spaced by progress, whatever the machine's speed."""
    return max(1, total_steps // max(1, probes)) if probes else 0


def step_seconds(rates: dict, batch_size: int, met: dict) -> dict:
    """{size: seconds one step takes}: as this run has met it, where it has trained that size for MIN_STEPS_MET
    steps (``met``: size -> (seconds, steps)), else as measured at the start (``rates``: size -> images/s), scaled
    by how far the sizes met so far ran from their measurement."""
    measured = {size: batch_size / rate for size, rate in rates.items()}
    known = {size: seconds / steps for size, (seconds, steps) in met.items() if steps >= MIN_STEPS_MET}
    expected = sum(measured[size] * met[size][1] for size in known)
    scale = sum(met[size][0] for size in known) / expected if known else 1.0
    return {size: known.get(size, each * scale) for size, each in measured.items()}


def refit(seconds_left: float, step: int, progress: float, resolution: str, step_s: dict, overhead_s: float) -> int:
    """The step a run at ``step``, ``progress`` of the way through its schedules, should end at to spend
    ``seconds_left`` more: the progress left is spread evenly over the steps left, each size's share of it at that
    size's seconds a step, plus ``overhead_s`` a step for what comes between steps (probes, checkpoints, logging).
    At least one more step: the schedules end at the last one."""
    left = 1.0 - progress
    each = sum(share / left * step_s[size] for size, share in size_shares(resolution, progress).items()) + overhead_s
    return step + max(1, math.floor(seconds_left / each))


@dataclass(frozen=True)
class Rates:
    """This machine's speeds for one run, as measured at its start or met by an earlier run of its kind: training
    images per second at each size, scored (evaluated) images per second at full size (a first run's is a guess,
    first_score_rate), and the seconds one checkpoint takes to write."""

    train: dict
    score: float
    checkpoint_s: float


@dataclass(frozen=True)
class Plan:
    """A budget's run: its length in steps and where the seconds were planned to go."""

    budget_s: float
    spent_s: float  # before planning: process start, data, model, measuring
    steps: int
    epochs: int
    test_images: int  # scored once at the end (0: the run scores only a validation split)
    train_s: float
    probe_s: float
    checkpoint_s: float
    final_s: float
    margin_s: float
    probe_images: int
    rates: dict

    def settings(self) -> dict:
        """The training settings the plan fixes: the run's config records them, so a resume follows them."""
        return {"steps": self.steps, "epochs": self.epochs, "score_every": 0,
                **({"limit_test": self.test_images} if self.test_images else {})}


def plan(budget_s: float, spent_s: float, rates: Rates, *, batch_size: int, steps_per_epoch: int, resolution: str,
         probes: int, probe_size: int, test_images: int, val_images: int = 0, tta: bool = False) -> Plan:
    """The number of steps that ends the run, scoring included, at the budget less a margin.

    After the last step the run scores ``test_images`` test images at most (0 where it scores no test set), as
    many as FINAL_SHARE of the budget affords, and a validation split of ``val_images`` twice (its score, then the
    calibration temperature's fit). Held-out sets are not scored between epochs (``score_every`` 0): the probes
    draw the curve.
    """
    seconds_per_image = sum(share / rates.train[size] for size, share in size_shares(resolution).items())
    passes = 2 if tta else 1
    affordable = math.floor(FINAL_SHARE * budget_s * rates.score / passes)
    test_images = min(test_images, max(MIN_TEST_IMAGES, affordable))
    final_images = test_images * passes + 2 * val_images
    final_s = final_images / rates.score + rates.checkpoint_s  # the weights file: one more write
    margin_s = MARGIN * budget_s
    available = budget_s - spent_s - final_s - margin_s
    steps, epochs, probe_s, checkpoint_s, each = 0, 1, 0.0, 0.0, 0
    for _ in range(4):  # the probes and checkpoints depend on the length they take time from: settle it
        steps = max(0, math.floor((available - probe_s - checkpoint_s) / (batch_size * seconds_per_image)))
        epochs = max(1, math.ceil(steps / steps_per_epoch))
        interval = probe_interval(steps, probes)
        each = probe_images(probe_size, interval * batch_size, resolution) if interval else 0
        probe_s = (steps // interval if interval else 0) * each / rates.score
        checkpoint_s = epochs * rates.checkpoint_s
    if steps < 1:
        raise ConfigError(f"a {describe_duration(budget_s)} budget leaves no time to train here: {spent_s:.0f} s went to "
                          f"starting and measuring, and scoring {final_images:,} images takes {final_s:.0f} s")
    return Plan(budget_s=budget_s, spent_s=spent_s, steps=steps, epochs=epochs, test_images=test_images,
                train_s=steps * batch_size * seconds_per_image, probe_s=probe_s, checkpoint_s=checkpoint_s, final_s=final_s,
                margin_s=margin_s, probe_images=each,
                rates={"train": {str(size): rate for size, rate in rates.train.items()}, "score": rates.score,
                       "checkpoint_s": rates.checkpoint_s})


def summary(plan_record: dict) -> str:
    """The plan in one sentence for the Train tab: what the budget bought and where its seconds were planned to go."""
    p = plan_record
    scored = f" of {p['test_images']:,} test images" if p.get("test_images") else ""
    refits = ", ".join(f"{r['steps']:,} at {r['progress']:.0%}" for r in p.get("refits", []))
    refitted = f", re-fitted to this run's own pace ({refits})" if refits else ""
    # Plans recorded before speeds were kept between runs all measured.
    started = "start and measure this machine" if p.get("rates_from", "measured").startswith("measured") else \
        "start (this machine's speeds from an earlier run)"
    return (f"{describe_duration(p['budget_s'])} budget: {p['steps']:,} steps planned over {p['epochs']} epoch"
            f"{'s' if p['epochs'] != 1 else ''}{refitted}; as first planned, {p['spent_s']:.0f} s to {started}, "
            f"{p['train_s']:.0f} s training, {p['probe_s'] + p['checkpoint_s']:.0f} s probes and "
            f"checkpoints, {p['final_s']:.0f} s final scoring{scored}")
