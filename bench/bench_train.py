"""Training throughput: the published pipeline against ours, same model, same images, one process.

(a) published: torchvision ``CIFAR10`` + PIL transforms (RandomCrop(32, padding=[0, 2, 3, 4]),
    RandomHorizontalFlip, ToTensor, Normalize), a DataLoader with 2 workers, fp32, batch 64,
    Adam 0.01, ``model.train()``, and the published loop's per-step ``loss.item()`` / accuracy.
(b) ours at the same recipe (Adam 0.01, batch 64, same model): the pieces of ``resnet.train``:
    the whole training set on the device, ``augment`` of a whole batch at once, and the trainer's own
    ``train_step`` (bf16/fp16 autocast and channels_last where ``resolve_precision("auto")`` finds support).

Each pipeline runs ``--warmup`` steps, then ``--steps`` timed steps (the device is synchronized
around the timed part); with ``--rounds`` > 1 the two alternate, so a busy machine slows both alike.
Prints a table (and ``--json OUT`` writes it): images/s of each and the ratio.

    python bench/bench_train.py --data-dir ../shared/data/cifar10 --steps 100 --warmup 10
    python bench/bench_train.py --sizes --steps 20      # ours at the study's three sizes, side by side
    python bench/bench_train.py --layouts --batch 512   # ours in NCHW against channels_last, side by side
    python bench/bench_train.py --resolutions           # ours at each training resolution, side by side
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet.config import PRECISIONS, RESOLUTIONS, make_config, parse_blocks
from resnet.constants import IMAGE_SIZE, PUBLISHED_MEAN, PUBLISHED_STD
from resnet.data import DATA_DIR_HELP, ORIGINAL_PADDING, augment, load_split, resolve_data_dir
from resnet.model import BLOCK_CHOICES, BasicBlock, build_model
from resnet.train import (
    build_optimizer,
    default_channels_last,
    describe_device,
    resolve_device,
    resolve_precision,
    steps_in_epoch,
    train_step,
)

PUBLISHED = make_config("original")  # Adam 0.01 at batch 64: the published loop's settings
BATCH, LR = PUBLISHED.batch_size, PUBLISHED.lr


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ---- (a) the published pipeline ---------------------------------------------------------------
class InMemoryCIFAR10(torch.utils.data.Dataset):
    """torchvision CIFAR10's ``__getitem__`` over the same arrays, for data sets without the official md5s."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as torchvision stores it
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def published_dataset(data_dir):
    import torchvision.transforms as T
    from torchvision.datasets import CIFAR10

    transform = T.Compose([
        T.RandomCrop(32, padding=list(ORIGINAL_PADDING)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(PUBLISHED_MEAN, PUBLISHED_STD),
    ])
    try:
        dataset = CIFAR10(root=str(resolve_data_dir(data_dir)), train=True, download=False, transform=transform)
        return dataset, "torchvision CIFAR10"
    except RuntimeError:  # not the official files (a test-sized copy): same items, same transforms
        images, labels = load_split(data_dir, train=True)
        return InMemoryCIFAR10(images, labels, transform), "in-memory copy (files are not the official ones)"


def published_model(blocks):
    """Our module tree (the published names and shapes) with torch's own nn.Dropout, as published."""
    model = build_model(blocks, dropout=0.1)
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.dropout = torch.nn.Dropout(0.1)
    return model


def published_steps(device, data_dir, workers: int, blocks, batch: int):
    """A generator: each ``next`` runs one training step of the published loop."""
    dataset, source = published_dataset(data_dir)
    torch.manual_seed(0)
    model = published_model(blocks).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)

    def steps():
        train_loss = correct = total = 0
        while True:  # a new epoch (and new workers) whenever the loader runs out, as in the published loop
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                optimizer.zero_grad()
                outputs = model(inputs)
                loss = criterion(outputs, targets)
                loss.backward()
                optimizer.step()
                train_loss += loss.item()
                correct += outputs.max(1)[1].eq(targets).sum().item()
                total += targets.size(0)
                yield len(targets)

    return steps(), {"data": source, "precision": "fp32", "channels_last": False, "workers": workers}


# ---- (b) ours ---------------------------------------------------------------------------------
def our_steps(device, data_dir, precision: str, blocks, batch: int, channels_last: bool | None = None, size: int = IMAGE_SIZE):
    """``channels_last`` None: the trainer's own choice for this device and precision; ``size``: the training resolution."""
    config = make_config("original", optimizer="adam", lr=LR, batch_size=batch, blocks=blocks, precision=precision)
    amp_dtype = resolve_precision(config.precision, device)
    if channels_last is None:
        channels_last = default_channels_last(device, amp_dtype)
    train_x, train_y = (t.to(device) for t in load_split(data_dir, train=True))
    torch.manual_seed(0)
    model = build_model(config.blocks, config.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(config, model)
    steps_per_epoch = steps_in_epoch(len(train_x), batch)

    def steps():
        sums = [0.0, 0.0, 0]  # kept on the device, as the trainer does: no sync per step
        epoch = 0
        while True:
            epoch += 1
            order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch)).to(device)
            for step in range(steps_per_epoch):
                generator = torch.Generator(device).manual_seed(epoch * 100_003 + step)
                index = order[step * batch : (step + 1) * batch]
                images, labels = augment(train_x[index], generator, config.augment), train_y[index]
                loss, correct = train_step(model, optimizer, images, labels, config, amp_dtype, channels_last, size)
                sums[0] += loss * len(labels)
                sums[1] += correct
                sums[2] += len(labels)
                yield len(labels)

    dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    return steps(), {"data": "tensors on the device, batched augment", "precision": dtype, "channels_last": channels_last,
                     "size": size}


# ---- timing -----------------------------------------------------------------------------------
def timed(steps, device, count: int) -> tuple:
    synchronize(device)
    start = time.perf_counter()
    images = sum(next(steps) for _ in range(count))
    synchronize(device)
    return images, time.perf_counter() - start


def race(pipelines: dict, args, device) -> dict:
    """Warm every pipeline up, then time them in turn for ``args.rounds`` rounds (a busy machine slows all alike)."""
    for steps, _ in pipelines.values():
        timed(steps, device, args.warmup)
    totals = {name: [0, 0.0] for name in pipelines}
    for _ in range(args.rounds):
        for name, (steps, _) in pipelines.items():
            images, seconds = timed(steps, device, args.steps)
            totals[name][0] += images
            totals[name][1] += seconds
    return {name: {**info, "images": totals[name][0], "seconds": round(totals[name][1], 3),
                   "images_per_s": round(totals[name][0] / totals[name][1], 1)}
            for name, (_, info) in pipelines.items()}


def setting(args, device) -> dict:
    return {"device": describe_device(device), "torch": torch.__version__, "batch_size": args.batch, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds}


def compare(args, device) -> dict:
    result = race({
        "published": published_steps(device, args.data_dir, args.workers, args.blocks, args.batch),
        "ours": our_steps(device, args.data_dir, args.precision, args.blocks, args.batch),
    }, args, device)
    ratio = result["ours"]["images_per_s"] / result["published"]["images_per_s"]
    return {**setting(args, device), "blocks": list(args.blocks), "published": result["published"], "ours": result["ours"],
            "ratio": round(ratio, 2)}


def compare_sizes(args, device) -> dict:
    """Ours at every size the study compares: images/s, and the time per image relative to the published size."""
    result = race({"-".join(map(str, blocks)): our_steps(device, args.data_dir, args.precision, blocks, args.batch)
                   for blocks in BLOCK_CHOICES}, args, device)
    base = result["1-1-1-1"]["images_per_s"]
    sizes = {name: {**row, "time_ratio": round(base / row["images_per_s"], 2)} for name, row in result.items()}
    return {**setting(args, device), "sizes": sizes}


def compare_resolutions(args, device) -> dict:
    """Ours at every training resolution a schedule may use, side by side: the cost of a low-resolution step."""
    result = race({f"{size}px": our_steps(device, args.data_dir, args.precision, args.blocks, args.batch, size=size)
                   for size in RESOLUTIONS}, args, device)
    full = result[f"{IMAGE_SIZE}px"]["images_per_s"]
    sizes = {name: {**row, "time_ratio": round(full / row["images_per_s"], 2)} for name, row in result.items()}
    return {**setting(args, device), "blocks": list(args.blocks), "resolutions": sizes}


def compare_layouts(args, device) -> dict:
    """Ours in the default memory layout against channels_last, same precision: what the trainer's default is worth here."""
    result = race({layout: our_steps(device, args.data_dir, args.precision, args.blocks, args.batch, channels_last)
                   for layout, channels_last in (("nchw", False), ("channels_last", True))}, args, device)
    ratio = result["channels_last"]["images_per_s"] / result["nchw"]["images_per_s"]
    return {**setting(args, device), "blocks": list(args.blocks), "layouts": result, "ratio": round(ratio, 2),
            "trainer_default": "channels_last" if default_channels_last(device, resolve_precision(args.precision, device))
            else "nchw"}


def print_table(report: dict) -> None:
    print(f"{report['device']}, torch {report['torch']}, batch {report['batch_size']}, "
          f"{report['steps']} steps x {report['rounds']} round(s) after {report['warmup']} warm-up")
    if "layouts" in report:
        print(f"{'layout (ours, ' + report['layouts']['nchw']['precision'] + ')':<40} {'images/s':>10}")
        for name, row in report["layouts"].items():
            print(f"{name:<40} {row['images_per_s']:>10.1f}")
        print(f"{'ratio channels_last / nchw':<40} {report['ratio']:>9.2f}x   "
              f"(trainer default here: {report['trainer_default']})")
        return
    if "resolutions" in report:
        print(f"{'resolution (ours)':<40} {'images/s':>10} {'time per image vs 32px':>26}")
        for name, row in report["resolutions"].items():
            print(f"{name:<40} {row['images_per_s']:>10.1f} {row['time_ratio']:>25.2f}x")
        return
    if "sizes" in report:
        print(f"{'blocks (ours)':<40} {'images/s':>10} {'time per image vs 1-1-1-1':>26}")
        for name, row in report["sizes"].items():
            print(f"{name:<40} {row['images_per_s']:>10.1f} {row['time_ratio']:>25.2f}x")
        return
    published, ours = report["published"], report["ours"]
    rows = [
        (f"published ({published['precision']}, {published['workers']} workers)", published["images_per_s"]),
        (f"ours ({ours['precision']}{', channels_last' if ours['channels_last'] else ''})", ours["images_per_s"]),
    ]
    print(f"{'pipeline':<40} {'images/s':>10}")
    for name, value in rows:
        print(f"{name:<40} {value:>10.1f}")
    print(f"{'ratio ours / published':<40} {report['ratio']:>9.2f}x")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=50, help="timed steps per pipeline and round (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--rounds", type=positive_int, default=1, help="alternate the pipelines this many times")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="ours only")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the published pipeline")
    parser.add_argument("--batch", type=positive_int, default=BATCH,
                        help=f"batch size of every pipeline (default {BATCH}, the published one)")
    parser.add_argument("--blocks", type=parse_blocks, default=(1, 1, 1, 1), help="blocks per stage of ours (default 1,1,1,1)")
    parser.add_argument("--json", metavar="OUT", help="also write the report to this JSON file")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--sizes", action="store_true", help="ours at blocks 1-1-1-1, 2-2-2-2 and 3-3-3-3 instead")
    modes.add_argument("--layouts", action="store_true", help="ours in NCHW against channels_last instead")
    modes.add_argument("--resolutions", action="store_true", help="ours at 8, 16, 24 and 32 px training resolution instead")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    mode = (compare_sizes if args.sizes else compare_layouts if args.layouts
            else compare_resolutions if args.resolutions else compare)
    report = mode(args, device)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
