"""Why LGD's increments differ: cross-increment transfer (redundancy) and data cartography.

Redundancy (the paper's claim, METHOD.md): train the evaluation net on one increment I_i, test it
on every other increment I_j. High accuracy off the diagonal means I_j taught nothing I_i had not
(DiT ~95%); LGD aims for low (~58%). The unit of work is one (train increment, seed) run, so the
Ray layer can spread the K × seeds runs over a cluster; `cross_increment_matrix` runs them in-process.

Cartography (Swayamdipta et al. 2020): train once on the whole set and follow each sample's
probability of its true class over epochs; mean = confidence, std = variability.

Pure torch/numpy (never ray).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from lgd_ray.core.config import EvalConfig
from lgd_ray.core.data import ImageSet
from lgd_ray.core.evaluate import epochs_for_ipc
from lgd_ray.core.students import build_student
from lgd_ray.core.train import (
    TrainSettings,
    evaluate_accuracy,
    predict_logits,
    train_classifier,
)

# --------------------------------------------------------------------------- redundancy


def train_on_increment_and_test(train: ImageSet, tests: Sequence[ImageSet], settings: EvalConfig, seed: int, *,
                                num_classes: int, image_size: int, in_channels: int,
                                device: str | torch.device = "cpu") -> dict:
    """Train a fresh evaluation net on `train` (the eval protocol, seeded by `seed`) and test it on
    every set in `tests` (no augmentation). Returns seed, epochs, and per test set `acc` / `loss`
    (mean cross-entropy), in the order of `tests`."""
    epochs = settings.epochs or epochs_for_ipc(math.ceil(len(train) / num_classes))
    train_settings = TrainSettings.from_section(settings, seed, epochs)
    train_settings.validate("eval")
    model = build_student(settings.arch, num_classes, image_size, in_channels, seed=seed, field="eval.arch")
    history = train_classifier(model, train, train_settings, device=device)
    scores = [evaluate_accuracy(model, t, device=device) for t in tests]
    return {"seed": seed, "epochs": epochs, "train_loss": history[-1]["train_loss"],
            "acc": [a for a, _ in scores], "loss": [loss for _, loss in scores]}


def assemble(results: dict[tuple[int, int], dict], num_increments: int,
             seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-run results keyed by (train index, seed) → accuracy and loss arrays of shape S×K×K
    ([seed, train, test])."""
    k, s = num_increments, len(seeds)
    acc, loss = np.full((s, k, k), np.nan), np.full((s, k, k), np.nan)
    for si, seed in enumerate(seeds):
        for i in range(k):
            r = results[(i, seed)]
            acc[si, i], loss[si, i] = r["acc"], r["loss"]
    return acc, loss


def _offdiag(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(len(m), dtype=bool)]


def summarize_matrix(acc: np.ndarray, loss: np.ndarray) -> dict:
    """Mean off-diagonal (cross-increment) accuracy and loss of K×K matrices (already averaged over
    seeds). The diagonal is a net scored on its own training images, so it is reported apart and
    left out of the redundancy figure. Off-diagonal values are None when K < 2."""
    acc, loss = np.asarray(acc, dtype=float), np.asarray(loss, dtype=float)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or acc.shape != loss.shape:
        raise ValueError(f"need two K×K matrices, got {acc.shape} and {loss.shape}")
    k = len(acc)
    cross = k >= 2
    return {
        "num_increments": k,
        "cross_acc_mean": float(_offdiag(acc).mean()) if cross else None,
        "cross_loss_mean": float(_offdiag(loss).mean()) if cross else None,
        "self_acc_mean": float(np.diag(acc).mean()) if k else None,
        "self_loss_mean": float(np.diag(loss).mean()) if k else None,
        # row i: how well the net trained on I_i classifies the other increments
        "cross_acc_by_train": [float(np.delete(acc[i], i).mean()) for i in range(k)] if cross else None,
    }


def cross_increment_matrix(increments: Sequence[ImageSet], settings: EvalConfig, seeds: Sequence[int], *,
                           num_classes: int, image_size: int, in_channels: int,
                           device: str | torch.device = "cpu") -> dict:
    """All (train increment, seed) runs one after another in this process: the seed-mean K×K
    accuracy and loss, the per-seed arrays and `summarize_matrix` of the means."""
    results = {(i, seed): train_on_increment_and_test(inc, increments, settings, seed, num_classes=num_classes,
                                                      image_size=image_size, in_channels=in_channels, device=device)
               for seed in seeds for i, inc in enumerate(increments)}
    acc, loss = assemble(results, len(increments), seeds)
    return {"accuracy": acc.mean(0), "loss": loss.mean(0), "per_seed_accuracy": acc, "per_seed_loss": loss,
            **summarize_matrix(acc.mean(0), loss.mean(0))}


# --------------------------------------------------------------------------- cartography

REGIONS = ("easy", "ambiguous", "hard")


@dataclass(frozen=True)
class Regions:
    """Fixed cut-offs on the cartography map (the paper draws its regions by eye; these are ours).

    easy      : variability < high_variability and confidence >= easy_confidence (learnt, stays learnt)
    hard      : variability < high_variability and confidence <  hard_confidence (never learnt)
    ambiguous : everything else: variability >= high_variability (the net keeps changing its mind),
                or a steady but middling confidence. Swayamdipta et al. find this region the most
                informative for generalisation.
    The std of a probability in [0, 1] is at most 0.5; one that climbs linearly from 0 to 1 over
    training has std ≈ 0.29, so 0.2 separates "learnt late or flipping" from "settled early".
    """

    easy_confidence: float = 0.75
    hard_confidence: float = 0.25
    high_variability: float = 0.2

    def classify(self, confidence: np.ndarray, variability: np.ndarray) -> np.ndarray:
        steady = variability < self.high_variability
        region = np.full(confidence.shape, "ambiguous", dtype=object)
        region[steady & (confidence >= self.easy_confidence)] = "easy"
        region[steady & (confidence < self.hard_confidence)] = "hard"
        return region


def _region_summary(region: np.ndarray, confidence: np.ndarray, variability: np.ndarray) -> dict:
    n = len(region)
    out = {"n": n, **{r: float((region == r).mean()) if n else 0.0 for r in REGIONS}}
    out["mean_confidence"] = float(confidence.mean()) if n else float("nan")
    out["mean_variability"] = float(variability.mean()) if n else float("nan")
    return out


def cartography(model_factory: Callable[[], nn.Module], train: ImageSet, settings: TrainSettings, *,
                device: str | torch.device = "cpu", stage: Sequence[int] | np.ndarray | None = None,
                regions: Regions = Regions()) -> dict:
    """Train `model_factory()` on `train` and map every sample by its training dynamics.

    After each epoch the whole set is scored without augmentation (`predict_logits`), recording
    p(true label). Returns per-sample numpy arrays `confidence` (mean over epochs), `variability`
    (population std over epochs), `correctness` (share of epochs predicted right), `region`,
    `label`, `stage`; and `overall` / `per_stage` fractions of easy/ambiguous/hard. `stage` tags
    each sample (e.g. its LGD increment); None puts everything in stage 0.
    """
    stage_arr = np.zeros(len(train), dtype=np.int64) if stage is None else np.asarray(stage, dtype=np.int64)
    if stage_arr.shape != (len(train),):
        raise ValueError(f"stage needs one entry per sample ({len(train)}), got shape {stage_arr.shape}")
    model = model_factory()
    labels = train.labels
    probs: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []

    def measure(_record: dict) -> None:
        logits = predict_logits(model, train.images, device=device)
        probs.append(logits.softmax(1).gather(1, labels[:, None])[:, 0])
        hits.append(logits.argmax(1) == labels)

    train_classifier(model, train, settings, device=device, on_epoch=measure)
    p = torch.stack(probs).double().numpy()  # epochs × N
    confidence, variability = p.mean(0), p.std(0)
    region = regions.classify(confidence, variability)
    per_stage = {int(s): _region_summary(region[stage_arr == s], confidence[stage_arr == s],
                                         variability[stage_arr == s]) for s in np.unique(stage_arr)}
    return {
        "epochs": len(probs),
        "confidence": confidence,
        "variability": variability,
        "correctness": torch.stack(hits).double().mean(0).numpy(),
        "region": region,
        "label": labels.numpy().copy(),
        "stage": stage_arr,
        "regions": asdict(regions),
        "overall": _region_summary(region, confidence, variability),
        "per_stage": per_stage,
    }
