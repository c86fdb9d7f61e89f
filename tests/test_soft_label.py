"""The soft-label protocol (RDED, ImageNet-1K): a frozen teacher relabels every augmented batch and the
student minimises KL(teacher/T ‖ student/T)·T². Math of the loss, then training on tiny nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lgd_ray.core.data import load_digits_split, random_subset_per_class
from lgd_ray.core.errors import UserError
from lgd_ray.core.evaluate import evaluate_seed, soft_label_settings
from lgd_ray.core.students import build_student
from lgd_ray.core.train import (
    SOFT_LABEL_TEMPERATURE,
    TrainSettings,
    predict_logits,
    soft_label_loss,
    train_classifier,
    train_soft_label,
)


def _logits(seed: int, n: int = 6, c: int = 10, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_loss_is_t_squared_kl_teacher_to_student(t):
    s, te = _logits(0), _logits(1)
    p_t = F.softmax(te / t, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / t, dim=1))).sum(1).mean()
    torch.testing.assert_close(soft_label_loss(s, te, t), kl * t * t, rtol=1e-5, atol=1e-6)


def test_zero_iff_same_distribution():
    te = _logits(2)
    assert soft_label_loss(te + 5.0, te, 20.0).abs() < 1e-5  # a per-row shift changes no probability
    assert soft_label_loss(_logits(3), te, 20.0) > 1e-3


def test_temperature_scales_with_the_logits():
    """Scaling the logits and T by a multiplies the loss by a²: T² cancels the 1/T² of the KL."""
    s, te = _logits(4), _logits(5)
    for a in (2.0, 10.0):
        torch.testing.assert_close(soft_label_loss(a * s, a * te, a * 20.0), a * a * soft_label_loss(s, te, 20.0),
                                   rtol=1e-4, atol=1e-6)


def test_high_temperature_limit_is_logit_matching():
    s, te = _logits(6), _logits(7)
    d = s - te
    d = d - d.mean(1, keepdim=True)
    limit = (d ** 2).sum(1).mean() / (2 * s.shape[1])
    torch.testing.assert_close(soft_label_loss(s, te, 1e3), limit, rtol=1e-2, atol=0)
    # and the gradient keeps its size as T grows (the reason for T²)
    g = []
    for t in (20.0, 200.0):
        x = s.clone().requires_grad_(True)
        soft_label_loss(x, te, t).backward()
        g.append(x.grad.norm())
    assert 0.5 < float(g[1] / g[0]) < 2.0


def test_default_temperature_is_rded():
    assert SOFT_LABEL_TEMPERATURE == 20.0


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits():
    return load_digits_split("train"), load_digits_split("val")


@pytest.fixture(scope="module")
def teacher(digits):
    """A tiny net trained on the real digits: the frozen relabeller."""
    train, _ = digits
    net = build_student("convnet2-w8", 10, 8, 1, seed=0)
    train_classifier(net, train, TrainSettings(epochs=12, batch_size=64, lr=0.05, augment="none", seed=0))
    return net.eval().requires_grad_(False)


def _kl_to_teacher(student, teacher, images, t: float = 1.0) -> float:
    return float(soft_label_loss(predict_logits(student, images), predict_logits(teacher, images), t)) / (t * t)


def _soft_settings(epochs: int = 25) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=32, lr=0.03, optimizer="adamw", weight_decay=0.01,
                         schedule="cosine", augment="shift", cutmix=1.0, seed=0)


def test_student_moves_toward_the_teacher(digits, teacher):
    train, val = digits
    distilled = train.subset(random_subset_per_class(train.labels, 10, seed=0))  # a 10-IPC "distilled" set
    student = build_student("convnet2-w8", 10, 8, 1, seed=1)
    before = _kl_to_teacher(student, teacher, val.images)
    agree_before = float((predict_logits(student, val.images).argmax(1)
                          == predict_logits(teacher, val.images).argmax(1)).float().mean())
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = train_soft_label(student, teacher, distilled, _soft_settings(), temperature=SOFT_LABEL_TEMPERATURE)
    after = _kl_to_teacher(student, teacher, val.images)
    agree_after = float((predict_logits(student, val.images).argmax(1)
                         == predict_logits(teacher, val.images).argmax(1)).float().mean())
    assert after < 0.5 * before, (before, after)
    assert agree_after > agree_before + 0.3 and agree_after > 0.6, (agree_before, agree_after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for k, v in teacher.state_dict().items():  # frozen: never updated
        assert torch.equal(v, teacher_state[k])
    assert not teacher.training


def test_labels_are_not_used(digits, teacher):
    """The teacher is the only supervision: scrambled dataset labels give the same student."""
    train, _ = digits
    subset = train.subset(random_subset_per_class(train.labels, 3, seed=0))
    scrambled = type(subset)(subset.images, subset.labels.roll(1), subset.class_ids)
    weights = []
    for data in (subset, scrambled):
        student = build_student("convnet2-w8", 10, 8, 1, seed=1)
        train_soft_label(student, teacher, data, _soft_settings(epochs=2))
        weights.append(student.state_dict())
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k])


def test_seeded(digits, teacher):
    train, _ = digits
    subset = train.subset(random_subset_per_class(train.labels, 3, seed=0))
    runs = []
    for _ in range(2):
        student = build_student("convnet2-w8", 10, 8, 1, seed=1)
        runs.append(train_soft_label(student, teacher, subset, _soft_settings(epochs=2)))
    assert runs[0] == runs[1]


def test_bad_temperature_and_mismatched_teacher(digits, teacher):
    train, _ = digits
    subset = train.subset(range(20))
    student = build_student("convnet2-w8", 10, 8, 1, seed=1)
    with pytest.raises(UserError, match="temperature"):
        train_soft_label(student, teacher, subset, _soft_settings(1), temperature=0.0)
    other = build_student("convnet2-w8", 7, 8, 1, seed=1)
    with pytest.raises(ValueError, match="same classes"):
        train_soft_label(student, other, subset, _soft_settings(1))


def test_protocol_settings_and_evaluate_seed(digits, teacher):
    s = soft_label_settings()
    assert (s.arch, s.epochs, s.optimizer, s.lr, s.weight_decay, s.schedule, s.cutmix, s.protocol, s.temperature) == (
        "resnet18", 300, "adamw", 1e-3, 0.01, "cosine", 1.0, "soft", 20.0)
    train, val = digits
    distilled = train.subset(random_subset_per_class(train.labels, 5, seed=0))
    settings = soft_label_settings(arch="convnet2-w8", epochs=3, batch_size=32, augment="shift", eval_every=1)
    r = evaluate_seed(distilled, val, settings, 0, teacher=teacher, num_classes=10, image_size=8, in_channels=1)
    assert r["protocol"] == "soft" and r["temperature"] == 20.0 and r["epochs"] == 3
    assert 0 <= r["final_acc"] <= 1 and r["best_acc"] >= r["final_acc"] and len(r["history"]) == 3
    with pytest.raises(UserError) as e:  # soft without a teacher
        evaluate_seed(distilled, val, settings, 0, num_classes=10, image_size=8, in_channels=1)
    assert e.value.field == "eval.teacher"
    with pytest.raises(ValueError, match="only soft"):  # a teacher would be silently unused
        evaluate_seed(distilled, val, soft_label_settings(protocol="hard"), 0, teacher=teacher, num_classes=10,
                      image_size=8, in_channels=1)
