"""DDP arithmetic: `batch_size` is the global batch and every worker trains on its own shard, so 1 and
2 Ray Train workers take the same steps over the same images per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lgd_ray.cli import main
from lgd_ray.core.errors import UserError
from lgd_ray.core.students import build_student
from lgd_ray.core.train import (
    TrainSettings,
    shard_sampler,
    train_classifier,
    worker_batch_size,
)

from helpers import quadrant_set

ROOT = Path(__file__).resolve().parent.parent


class Recorded(torch.utils.data.Dataset):
    """A dataset that logs which items are read."""

    def __init__(self, data):
        self.data, self.seen = data, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.data[i]


def _epoch(world: int, rank: int, global_batch: int, epochs: int = 2) -> tuple[list[list[int]], list[list[int]]]:
    """Run `epochs` of train_classifier as worker `rank` of `world`: the items it read and its batch
    sizes, per epoch (what that worker's DDP process would do, minus the gradient all-reduce)."""
    data = Recorded(quadrant_set(9, 0))  # 36 images
    model = build_student("convnet2-w8", 4, 8, 1, seed=0)
    sizes: list[int] = []
    model.register_forward_hook(lambda m, inp, out: sizes.append(len(inp[0])))
    settings = TrainSettings(epochs=epochs, batch_size=worker_batch_size(global_batch, world), seed=3)
    train_classifier(model, data, settings, sampler=shard_sampler(data, world, rank, seed=3))
    per = len(data.seen) // epochs
    steps = len(sizes) // epochs
    return ([data.seen[e * per:(e + 1) * per] for e in range(epochs)],
            [sizes[e * steps:(e + 1) * steps] for e in range(epochs)])


def test_worker_batch_is_the_global_batch_split():
    assert [worker_batch_size(64, w) for w in (1, 2, 3, 8)] == [64, 32, 21, 8]
    with pytest.raises(UserError) as e:
        worker_batch_size(4, 8, "reference.batch_size")
    assert e.value.field == "reference.batch_size"
    assert shard_sampler(quadrant_set(2, 0), 1, 0, seed=0) is None  # one worker: train_classifier's shuffle


def test_two_workers_see_each_image_once_per_epoch_in_steps_of_the_global_batch():
    one_items, one_sizes = _epoch(1, 0, 16)
    ranks = [_epoch(2, r, 16) for r in (0, 1)]
    for epoch in range(2):
        a, b = (ranks[r][0][epoch] for r in (0, 1))
        assert not set(a) & set(b) and sorted(a + b) == sorted(one_items[epoch]) == list(range(36))
        # same number of steps, and per step the two workers together take the 1-worker batch
        global_sizes = [x + y for x, y in zip(ranks[0][1][epoch], ranks[1][1][epoch])]
        assert len(ranks[0][1][epoch]) == len(ranks[1][1][epoch]) == len(one_sizes[epoch])
        assert global_sizes == one_sizes[epoch] == [16, 16, 4]
    assert ranks[0][0][0] != ranks[0][0][1]  # reshuffled every epoch


def test_uneven_shards_pad_by_at_most_one_image_per_extra_worker():
    data = quadrant_set(9, 0).subset(range(35))
    shards = [list(shard_sampler(data, 3, r, seed=1)) for r in range(3)]
    assert [len(s) for s in shards] == [12, 12, 12]  # ceil(35 / 3): every worker takes the same steps
    flat = sum(shards, [])
    assert set(flat) == set(range(35)) and len(flat) - 35 == 1


@pytest.mark.parametrize("args, field", [
    (["ray.train_workers=4", "student.batch_size=2"], "student.batch_size"),
    (["ray.train_workers=4", "reference.batch_size=3"], "reference.batch_size"),
])
def test_batch_smaller_than_the_workers_exits_2(args, field, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")
    out = tmp_path / "out"
    assert main(["distill", str(ROOT / "jobs" / "demo.yaml"), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"lgd-ray: error: {field}: ") and "ray.train_workers" in err
    assert not out.exists()


def test_eval_batch_is_not_split():
    """Evaluation runs one task per seed, not DDP: eval.batch_size is not bound by the workers."""
    from lgd_ray.core.config import load_config

    assert load_config(None, ["ray.train_workers=4", "eval.batch_size=2"]).eval.batch_size == 2
