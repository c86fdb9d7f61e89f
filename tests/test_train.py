"""lgd_ray.core.train: batched augmentation, CutMix math, schedules, seeded training that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DistributedSampler

from lgd_ray.core.students import build_student
from lgd_ray.core.train import (
    TrainSettings,
    augment_batch,
    cutmix_batch,
    evaluate_accuracy,
    lr_at,
    predict_logits,
    train_classifier,
)

from helpers import quadrant_set


def tiny_model(seed: int = 0) -> nn.Module:
    return build_student("convnet2-w8", 4, 8, 1, seed=seed)


# --------------------------------------------------------------------------- augmentation


def test_shift_keeps_shape_and_mass_and_is_seeded():
    x = torch.zeros(16, 1, 16, 16)
    x[:, :, 6:10, 6:10] = torch.rand(16, 1, 4, 4)  # centered blob; shifts are at most 16 // 8 = 2 px
    out = augment_batch(x, "shift", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    moved = [not torch.equal(o, i) for o, i in zip(out, x)]
    assert any(moved)
    # the pixels are the blob's own, translated: exactly one offset in [-2, 2]² reproduces each image
    for o, i in zip(out, x):
        offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        hits = [d for d in offsets if torch.equal(torch.roll(i, d, (1, 2)), o)]
        assert len(hits) == 1
    again = augment_batch(x, "shift", torch.Generator().manual_seed(0))
    other = augment_batch(x, "shift", torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)
    # tiny images still move by up to 1 px
    tiny = torch.zeros(64, 1, 4, 4)
    tiny[:, :, 1:3, 1:3] = 1
    assert not torch.equal(augment_batch(tiny, "shift", torch.Generator().manual_seed(0)), tiny)


def test_imagenet_augment_keeps_shape_range_and_is_seeded():
    x = torch.rand(8, 3, 16, 16)
    a = augment_batch(x, "imagenet", torch.Generator().manual_seed(0))
    b = augment_batch(x, "imagenet", torch.Generator().manual_seed(0))
    c = augment_batch(x, "imagenet", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, "none", torch.Generator()) is x
    with pytest.raises(ValueError):
        augment_batch(x, "rotate", torch.Generator())


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_targets_are_pixel_shares(seed):
    n, k = 6, 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 12).clone()  # image i is all i
    y = torch.arange(n)  # label i, so each pixel's value names its label
    mixed, t = cutmix_batch(x, y, k, prob=1.0, generator=torch.Generator().manual_seed(seed))
    assert t.shape == (n, k) and torch.allclose(t.sum(1), torch.ones(n))
    for i in range(n):
        shares = torch.stack([(mixed[i, 0] == c).float().mean() for c in range(k)])
        assert torch.allclose(t[i], shares, atol=1e-6)
    assert torch.equal(x, torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 12))  # input intact


def test_cutmix_off_gives_input_and_one_hot():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    out, t = cutmix_batch(x, y, 3, prob=0.0, generator=torch.Generator().manual_seed(0))
    assert out is x and torch.equal(t, torch.nn.functional.one_hot(y, 3).float())


# --------------------------------------------------------------------------- schedules and settings


def test_multistep_schedule_drops_at_two_thirds_and_five_sixths():
    s = TrainSettings(epochs=12, lr=0.3, schedule="multistep")
    lrs = [lr_at(s, e) for e in range(12)]
    assert lrs[:8] == [0.3] * 8
    assert lrs[8:10] == pytest.approx([0.3 * 0.2] * 2)
    assert lrs[10:] == pytest.approx([0.3 * 0.04] * 2)
    hist = train_classifier(tiny_model(), quadrant_set(2, 0), s)
    assert [h["lr"] for h in hist] == lrs and [h["epoch"] for h in hist] == list(range(1, 13))
    cos = TrainSettings(epochs=4, lr=1.0, schedule="cosine")
    assert [lr_at(cos, e) for e in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    assert lr_at(TrainSettings(epochs=1, schedule="multistep"), 0) == 0.01  # no drop before any training


def test_bad_settings_name_the_field():
    from lgd_ray.core.errors import UserError

    with pytest.raises(UserError) as e:
        TrainSettings(optimizer="lion").validate("eval")
    assert e.value.field == "eval.optimizer"
    with pytest.raises(UserError):
        train_classifier(tiny_model(), quadrant_set(2, 0), TrainSettings(augment="mixup"))


# --------------------------------------------------------------------------- training


def test_training_learns_a_separable_set():
    train, val = quadrant_set(16, seed=0), quadrant_set(16, seed=1)
    model = tiny_model()
    s = TrainSettings(epochs=15, batch_size=16, lr=0.05, schedule="constant", augment="shift")
    before = evaluate_accuracy(model, val)[0]

    def test(m):
        acc, loss = evaluate_accuracy(m, val)
        return {"val_acc": acc, "val_loss": loss}

    seen = []
    hist = train_classifier(model, train, s, eval_fn=test, eval_every=5, on_epoch=seen.append)
    assert seen == hist
    assert [h["epoch"] for h in hist if "val_acc" in h] == [5, 10, 15]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["val_acc"] >= 0.95 > before
    assert model.training  # evaluation leaves the mode as it found it


def test_same_seed_same_weights_other_seed_other_weights():
    data = quadrant_set(4, 0)

    def run(seed):
        model = tiny_model(seed=0)
        s = TrainSettings(epochs=3, batch_size=5, augment="imagenet", cutmix=0.5, seed=seed)
        train_classifier(model, data, s)
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_run_resumed_from_an_epoch_checkpoint_ends_with_the_same_weights(tmp_path):
    """Stop after epoch 4 of 6 (the process dies), restore weights and state from disk, finish: the
    bytes of an uninterrupted run. Optimizer momentum, the shuffle and the augmentation RNG all carry."""
    data = quadrant_set(4, 0)
    s = TrainSettings(epochs=6, batch_size=5, optimizer="sgd", augment="imagenet", cutmix=0.5, seed=3)
    whole = tiny_model()
    saved: list[int] = []
    train_classifier(whole, data, s, checkpoint_every=2, on_checkpoint=lambda st: saved.append(st["epoch"]))
    assert saved == [2, 4]  # none at the last epoch: the finished weights are the result itself

    class Died(Exception):
        pass

    first = tiny_model()

    def keep(state):
        torch.save(state, tmp_path / "state.pt")
        torch.save(first.state_dict(), tmp_path / "model.pt")
        if state["epoch"] == 4:
            raise Died

    with pytest.raises(Died):
        train_classifier(first, data, s, checkpoint_every=2, on_checkpoint=keep)
    resumed = tiny_model(seed=9)  # another init: every weight must come from the checkpoint
    resumed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    history = train_classifier(resumed, data, s, resume=torch.load(tmp_path / "state.pt", weights_only=True))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    ref = whole.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in resumed.state_dict().items())
    # and the stopped run had two epochs to go: the resumed run did real work
    assert any(not torch.equal(ref[k], v) for k, v in first.state_dict().items())


def test_distributed_sampler_gets_set_epoch():
    data = quadrant_set(4, 0)

    class Recording(DistributedSampler):
        epochs: list[int] = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)
            super().set_epoch(epoch)

    sampler = Recording(data, num_replicas=2, rank=1, shuffle=True, seed=0)
    hist = train_classifier(tiny_model(), data, TrainSettings(epochs=3, batch_size=4), sampler=sampler)
    assert sampler.epochs == [0, 1, 2] and len(hist) == 3


def test_evaluate_accuracy_and_predict_logits_math():
    data = quadrant_set(3, 0)  # 12 images, 3 of class 0

    class Zeros(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 4)

    acc, loss = evaluate_accuracy(Zeros(), data, batch_size=5)
    assert acc == pytest.approx(0.25)  # argmax of ties is class 0
    assert loss == pytest.approx(float(torch.log(torch.tensor(4.0))))
    model = tiny_model().eval()
    u8 = data.images
    assert torch.allclose(predict_logits(model, u8, batch_size=5), predict_logits(model, u8.float() / 255, 7))
    assert torch.allclose(predict_logits(model, u8), model(u8.float() / 255), atol=1e-6)


def test_parallel_decoding_trains_the_same_weights():
    """loader_workers only decode: the sampler's order and every random draw stay in the training process,
    so two decoding processes give bit-identical weights."""
    from lgd_ray.core.data import load_digits_split
    from lgd_ray.core.students import build_student
    from lgd_ray.core.train import TrainSettings, evaluate_accuracy, train_classifier

    data = load_digits_split("val").subset(range(96))
    nets = []
    for workers in (0, 2):
        net = build_student("convnet2-w8", 10, 8, 1, seed=0)
        train_classifier(net, data, TrainSettings(epochs=2, batch_size=32, augment="shift", seed=3,
                                                  loader_workers=workers))
        nets.append(net)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert evaluate_accuracy(nets[0], data) == evaluate_accuracy(nets[0], data, loader_workers=2)
