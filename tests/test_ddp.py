"""Two CPU processes over gloo: the run finishes, rank 0 alone writes, and --batch-size is the global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import REPO, free_port

from resnet import runs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
@pytest.mark.parametrize("device", [
    "cpu",  # gloo
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two CUDA GPUs")),
])
def test_torchrun_two_processes_finish_and_only_rank_0_writes(tiny_data, tmp_path, device):
    run = tmp_path / "run"
    command = [str(TORCHRUN), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               "-m", "resnet", "train", "--preset", "original", "--out", str(run), "--data-dir", str(tiny_data),
               "--limit-train", "32", "--limit-test", "16", "--batch-size", "16", "--epochs", "2",
               "--precision", "fp32", "--device", device, "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished: test accuracy" in done.stdout
    assert "Traceback" not in done.stderr

    assert sorted(p.name for p in run.iterdir()) == sorted(
        [runs.CONFIG, runs.METRICS, runs.STATUS, runs.CHECKPOINT, runs.WEIGHTS, runs.CARD])
    rows = runs.read_metrics(run)
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "each record once: a second writer would duplicate them"
    # 32 images in global batches of 16: two steps an epoch (per-process batches of 16 would make one).
    assert keys == [("step", 1), ("step", 2), ("epoch", 2), ("step", 3), ("step", 4), ("epoch", 4)]
    assert runs.read_status(run)["status"] == "finished"
    card = json.loads((run / runs.CARD).read_text())
    assert card["provenance"]["world_size"] == 2
    assert card["training"]["batch_size"] == 16


# ---- which images each process trains on ------------------------------------------------------
def _join(rank: int, world: int) -> None:
    """Make this spawned process rank ``rank`` of ``world`` on this host, one thread each (two share the cores)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    _join(rank, world)
    os.environ["MASTER_PORT"] = str(port)
    import resnet.train as train
    from resnet.config import make_config
    from resnet.constants import PUBLISHED_MEAN, PUBLISHED_STD

    seen = []
    original_build = train.build_model

    def build_and_watch(*args, **kwargs):
        model = original_build(*args, **kwargs)

        def record(module, inputs):
            if module.training:
                # Image i is filled with the value i, so its first pixel, un-normalized, names it.
                x = inputs[0][:, 0, 0, 0] * PUBLISHED_STD[0] + PUBLISHED_MEAN[0]
                seen.append(torch.round(x * 255).long().tolist())

        model.register_forward_pre_hook(record)
        return model

    train.build_model = build_and_watch
    count = 32
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 32, 32).contiguous()
    data = train.Dataset(images, torch.arange(count) % 10, images[:8], torch.arange(8))
    config = make_config("original", batch_size=16, epochs=2, augment="none", precision="fp32", device="cpu",
                               log_every=1, eval_batch_size=8)
    outcome = train.Trainer(config, run_dir, data=data).run()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"outcome": outcome["status"], "batches": seen}))


def test_spawned_processes_split_each_global_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["outcome"] for r in results] == ["finished", "finished"]

    batches = [r["batches"] for r in results]
    assert [len(b) for b in batches] == [4, 4]  # 2 epochs x (32 // 16) steps, on each rank
    for step in range(4):
        halves = [batches[rank][step] for rank in range(world)]
        assert [len(h) for h in halves] == [8, 8], "each process takes batch_size / world images"
        assert set(halves[0]).isdisjoint(halves[1])
    for epoch in range(2):
        steps = [i for rank in range(world) for step in (2 * epoch, 2 * epoch + 1) for i in batches[rank][step]]
        assert sorted(steps) == list(range(32)), "every image exactly once an epoch, across both processes"

    assert [r["step"] for r in runs.read_metrics(tmp_path / "run") if r["kind"] == "epoch"] == [2, 4]


# ---- a resumed run under DDP logs what the uninterrupted one logs -------------------------------
def _resume_worker(rank: int, world: int, ports: list, root: str) -> None:
    _join(rank, world)
    import threading

    from resnet.config import make_config
    from resnet.train import Dataset, Trainer

    count = 64
    images = (torch.arange(count * 3 * 32 * 32) * 7919 % 256).to(torch.uint8).view(count, 3, 32, 32)
    data = Dataset(images, torch.arange(count) % 10, images[:8], torch.arange(8))
    # 4 steps an epoch and a step row every 3: the stop is asked after row 3 and acted on at the epoch's end,
    # where each process holds the epoch's sums and the one step since that row.
    config = make_config("original", batch_size=16, epochs=2, augment="none", precision="fp32", device="cpu",
                         log_every=3, eval_batch_size=8)

    def run(name, port, stop_at=None, resume=False):
        os.environ["MASTER_PORT"] = str(port)
        event = threading.Event()
        ask = lambda row: row["kind"] == "step" and row["step"] == stop_at and event.set()  # noqa: E731
        return Trainer(config, Path(root, name), callbacks=[ask], stop_event=event, data=data).run(resume=resume)["status"]

    outcomes = [run("whole", ports[0]), run("resumed", ports[1], stop_at=3), run("resumed", ports[2], resume=True)]
    Path(root, f"rank{rank}.json").write_text(json.dumps(outcomes))


def test_a_run_resumed_under_ddp_logs_the_same_rows_as_the_uninterrupted_run(tmp_path):
    world = 2
    mp.spawn(_resume_worker, args=(world, [free_port() for _ in range(3)], str(tmp_path)), nprocs=world, join=True)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)] == [
        ["finished", "stopped", "finished"]] * world

    def rows(name):
        return [(r["kind"], r["step"], r["train_loss"], r["train_acc"]) for r in runs.read_metrics(tmp_path / name)
                if r["kind"] in ("step", "epoch")]

    whole, resumed = rows("whole"), rows("resumed")
    assert [r[:2] for r in resumed] == [r[:2] for r in whole] == [
        ("step", 3), ("epoch", 4), ("step", 6), ("epoch", 8)]
    for before, after in zip(whole, resumed, strict=True):
        # Each process's share counted once: rank 0's sums restored on every rank would count them twice.
        assert after[2:] == pytest.approx(before[2:], rel=1e-6), f"{after[:2]}"
