"""The field's evaluation: train a fresh net on the distilled set only, test on real val.

The settings are the config's `eval` section (`EvalConfig`): `protocol` hard trains on the set's
labels; soft has a frozen teacher (`core.teacher`) relabel every augmented batch (RDED, ImageNet-1K).
One seed = one `evaluate_seed` call (the Ray layer runs one task per seed); `summarize` turns the
per-seed results into mean ± std of both the final and the best-seen test accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from lgd_ray.core.config import EvalConfig
from lgd_ray.core.errors import UserError
from lgd_ray.core.students import build_student
from lgd_ray.core.train import TrainSettings, evaluate_accuracy, train_classifier


def epochs_for_ipc(ipc: int) -> int:
    """The field's epochs by images per class (IDC/Minimax protocol): 2000 for IPC ≤ 10, 1500 for
    ≤ 50, 1000 for ≤ 200, 500 above. Smaller sets get more epochs for a comparable step count."""
    if ipc <= 10:
        return 2000
    if ipc <= 50:
        return 1500
    if ipc <= 200:
        return 1000
    return 500


def evaluate_seed(train_set: Dataset, val_set: Dataset, settings: EvalConfig, seed: int, *,
                  num_classes: int, image_size: int, in_channels: int,
                  device: str | torch.device = "cpu", progress: bool = False,
                  teacher: torch.nn.Module | None = None) -> dict:
    """Train one evaluation net from scratch (init and training seeded by `seed`) and test it.
    `teacher` is the soft protocol's relabeller (needed for it, refused for hard).

    Returns seed, epochs, protocol (and temperature when soft), final_acc / final_loss (after the
    last epoch), best_acc / best_epoch (over the tests every `eval_every` epochs), the history.
    """
    soft = settings.protocol == "soft"
    if soft and teacher is None:
        raise UserError("eval.teacher", "eval.protocol=soft needs a teacher", "set eval.teacher")
    if not soft and teacher is not None:
        raise ValueError(f"a teacher was given for eval.protocol={settings.protocol!r}; only soft uses one")
    ipc = math.ceil(len(train_set) / num_classes)
    epochs = settings.epochs or epochs_for_ipc(ipc)
    train_settings = TrainSettings.from_section(settings, seed, epochs)
    train_settings.validate("eval")
    model = build_student(settings.arch, num_classes, image_size, in_channels, seed=seed, field="eval.arch")

    def test(m: torch.nn.Module) -> dict:
        acc, loss = evaluate_accuracy(m, val_set, device=device)
        return {"val_acc": acc, "val_loss": loss}

    history = train_classifier(model, train_set, train_settings, device=device, eval_fn=test,
                               eval_every=settings.eval_every, progress=progress, teacher=teacher,
                               temperature=settings.temperature)
    tested = [h for h in history if "val_acc" in h]
    best = max(tested, key=lambda h: h["val_acc"])  # first epoch reaching the maximum
    return {
        "seed": seed,
        "epochs": epochs,
        "protocol": settings.protocol,
        **({"temperature": settings.temperature} if soft else {}),
        "final_acc": history[-1]["val_acc"],
        "final_loss": history[-1]["val_loss"],
        "best_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "history": history,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def summarize(per_seed: list[dict]) -> dict:
    """Mean ± sample std (ddof=1; 0 for one seed) of final and best accuracy over seeds.

    Report both: `final_*` is the honest number; `best_*` is what the field's papers report,
    and it is optimistic, because picking the best epoch on the test set uses the test set for
    model selection.
    """
    if not per_seed:
        raise ValueError("no per-seed results to summarize")
    final = [float(r["final_acc"]) for r in per_seed]
    best = [float(r["best_acc"]) for r in per_seed]
    (final_mean, final_std), (best_mean, best_std) = _mean_std(final), _mean_std(best)
    return {
        "n": len(per_seed),
        "seeds": [r.get("seed") for r in per_seed],
        "final_acc_mean": final_mean,
        "final_acc_std": final_std,
        "best_acc_mean": best_mean,
        "best_acc_std": best_std,
        "final_acc": final,
        "best_acc": best,
    }


def mean_se(per_generation_seed: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Grand mean and its standard error over G generation seeds × E evaluation seeds each.

    SE² = max(s_b²/G, s_w²/(G·E)): s_b² is the sample variance of the G per-generation-seed means,
    which carries both sources of noise (the images drawn and the evaluator's seed); s_w² is the
    pooled within-seed variance, the evaluation noise alone, kept as a floor because with G = 2 the
    first estimate has one degree of freedom and can come out near zero by luck. One seed of one:
    SE = 0 (nothing to estimate it from)."""
    groups = [list(map(float, g)) for g in per_generation_seed if len(g)]
    if not groups:
        raise ValueError("no accuracies")
    means = [sum(g) / len(g) for g in groups]
    grand = sum(means) / len(means)
    n_g, n_all = len(groups), sum(len(g) for g in groups)
    between = sum((m - grand) ** 2 for m in means) / (n_g - 1) / n_g if n_g > 1 else 0.0
    dof = n_all - n_g
    within = sum((v - m) ** 2 for g, m in zip(groups, means) for v in g) / dof / n_all if dof > 0 else 0.0
    return grand, math.sqrt(max(between, within))


def evaluate_set(train_set: Dataset, val_set: Dataset, settings: EvalConfig, *, num_classes: int,
                 image_size: int, in_channels: int, device: str | torch.device = "cpu",
                 progress: bool = False, teacher: torch.nn.Module | None = None) -> dict:
    """All seeds one after another in this process: the summary plus `per_seed` and `settings`."""
    per_seed = [evaluate_seed(train_set, val_set, settings, s, num_classes=num_classes, image_size=image_size,
                              in_channels=in_channels, device=device, progress=progress, teacher=teacher)
                for s in settings.seeds]
    return {**summarize(per_seed), "per_seed": per_seed, "settings": dataclasses.asdict(settings)}


def soft_label_settings(**overrides) -> EvalConfig:
    """RDED's ImageNet-1K protocol (what IGD/LGD report there): ResNet-18, 300 epochs, AdamW lr 1e-3
    wd 0.01, cosine, batch 200 (RDED's for IPC 50 on 1000 classes), CutMix on every batch, with a
    frozen teacher relabelling each batch at T = 20. Our RandomResizedCrop keeps scale 0.5-1
    (RDED: 0.08-1). The teacher is yours to give (`teacher=`)."""
    base = dict(arch="resnet18", epochs=300, batch_size=200, lr=1e-3, optimizer="adamw", weight_decay=0.01,
                schedule="cosine", augment="imagenet", cutmix=1.0, seeds=[0, 1, 2], protocol="soft", temperature=20.0)
    return EvalConfig(**{**base, **overrides})
