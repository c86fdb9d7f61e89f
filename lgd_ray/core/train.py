"""Classifier training: one seeded loop shared by the students, the reference θ* and evaluation.

Ray Train workers call `train_classifier` with a DDP-wrapped model and a DistributedSampler; the
evaluation protocol calls it in-process. Datasets yield (uint8 C×H×W, int label); batches go to
the device as uint8 (4× less traffic), become float in [0, 1] there and are augmented there as a
batch, with every random draw taken from one seeded generator, so a seed fixes the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lgd_ray.core.config import AUGMENTS, TrainingConfig, check_training
from lgd_ray.core.errors import UserError
from lgd_ray.core.progress import progress_bar

JITTER = 0.2  # brightness/contrast/saturation factors drawn from [1 - JITTER, 1 + JITTER]


# --------------------------------------------------------------------------- augmentation


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (CPU by default), then move: the same seed gives the same
    # augmentation on CPU and GPU.
    return (torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo).to(device)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-m, m]² (m = max(1, H//8)), zero fill."""
    n, _, h, w = x.shape
    m = max(1, h // 8)
    d = torch.randint(-m, m + 1, (2, n), generator=g, device=g.device).to(x.device)
    p = F.pad(x, (m, m, m, m))
    rows = (m + d[0])[:, None] + torch.arange(h, device=x.device)  # n×h
    cols = (m + d[1])[:, None] + torch.arange(w, device=x.device)  # n×w
    idx = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: n×h×w×c.
    return p[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _imagenet(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(scale 0.5-1, ratio 3/4-4/3) to the same size + h-flip + colour jitter,
    batched as one affine grid_sample."""
    n, c = x.shape[:2]
    dev = x.device
    area = _uniform(n, 0.5, 1.0, g, dev)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), g, dev))
    cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx, cy = _uniform(n, -1, 1, g, dev) * (1 - cw), _uniform(n, -1, 1, g, dev) * (1 - ch)
    flip = torch.where(_uniform(n, 0, 1, g, dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, cx, ch, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    b, k, s = (_uniform(n, 1 - JITTER, 1 + JITTER, g, dev).view(n, 1, 1, 1) for _ in range(3))
    x = x * b
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = (x - mean) * k + mean
    if c == 3:
        gray = _gray(x)
        x = (x - gray) * s + gray
    return x.clamp(0.0, 1.0)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a float [0, 1] batch on its device; all randomness comes from `generator`."""
    if kind == "none":
        return x
    if kind == "shift":
        return _shift(x, generator)
    if kind == "imagenet":
        return _imagenet(x, generator)
    raise ValueError(f"unknown augment {kind!r}; choose one of {AUGMENTS}")


def cutmix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, prob: float, alpha: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) with probability `prob` per batch: paste one box from a permuted
    batch; soft targets weight the two labels by their pixel share. Returns (images, N×K targets)."""
    g = generator if generator is not None else torch.default_generator
    targets = F.one_hot(y, num_classes).to(torch.float32)
    if float(torch.rand(1, generator=g, device=g.device)) >= prob:
        return x, targets
    n, _, h, w = x.shape
    # torch has no seeded Beta sampler; a numpy one seeded from the generator keeps determinism.
    beta_seed = int(torch.randint(2**31 - 1, (1,), generator=g, device=g.device))
    lam = float(np.random.default_rng(beta_seed).beta(alpha, alpha))
    perm = torch.randperm(n, generator=g, device=g.device).to(x.device)
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx = int(torch.randint(w, (1,), generator=g, device=g.device))
    cy = int(torch.randint(h, (1,), generator=g, device=g.device))
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    kept = 1.0 - (x2 - x1) * (y2 - y1) / (h * w)  # the exact share after clipping the box
    targets = kept * targets + (1.0 - kept) * targets[perm.to(targets.device)]
    return x, targets


# --------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (defaults: the field's SGD protocol, Minimax)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adamw
    weight_decay: float = 5e-4
    schedule: str = "multistep"  # multistep (×0.2 at 2/3 and 5/6) | cosine | constant
    augment: str = "none"  # none | shift | imagenet
    cutmix: float = 0.0  # probability per batch; 0 = off
    seed: int = 0
    amp: bool = True  # bf16 autocast, CUDA only
    # processes decoding batches in parallel (DataLoader workers); the order, and so the run, is the same
    # for any number: the sampler and every random draw stay in the training process
    loader_workers: int = 0

    @classmethod
    def from_section(cls, section: TrainingConfig, seed: int, epochs: int | None = None) -> TrainSettings:
        """The settings of a config section (student, reference, eval); `epochs` overrides its own."""
        return cls(epochs=section.epochs if epochs is None else epochs, batch_size=section.batch_size,
                   lr=section.lr, optimizer=section.optimizer, weight_decay=section.weight_decay,
                   schedule=section.schedule, augment=section.augment, cutmix=getattr(section, "cutmix", 0.0),
                   seed=seed)

    def validate(self, section: str = "train") -> None:
        """Raise a UserError naming `section.key` (e.g. "eval.optimizer") for a bad value."""
        check_training(section, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                       weight_decay=self.weight_decay, schedule=self.schedule, augment=self.augment, cutmix=self.cutmix)


def lr_at(settings: TrainSettings, epoch: int) -> float:
    """Learning rate for 0-based `epoch` (set once per epoch)."""
    e, lr = settings.epochs, settings.lr
    if settings.schedule == "multistep":  # Minimax: MultiStepLR([2E//3, 5E//6], gamma=0.2)
        m1, m2 = max(1, 2 * e // 3), max(1, 5 * e // 6)
        return lr * 0.2 ** ((epoch >= m1) + (epoch >= m2))
    if settings.schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / e))
    return lr


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


# --------------------------------------------------------------------------- data parallel


def worker_batch_size(global_batch: int, world_size: int, field: str = "student.batch_size") -> int:
    """Images per worker per step. The configured batch is the global one, split evenly over the
    DDP workers (rounded down), so adding workers changes where a step runs, not its size or lr."""
    if global_batch < world_size:
        raise UserError(field, f"{global_batch} is less than ray.train_workers={world_size}",
                        f"the batch is global, split over the workers: use at least {world_size}")
    return global_batch // world_size


def shard_sampler(dataset: Dataset, world_size: int, rank: int, seed: int) -> Sampler | None:
    """This worker's share of the set, disjoint from the others' and reshuffled every epoch from
    `seed` (train_classifier calls set_epoch). DistributedSampler pads by repeating at most
    world_size − 1 images so all workers take the same number of steps. None for one worker:
    train_classifier's own seeded shuffle."""
    if world_size <= 1:
        return None
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


# --------------------------------------------------------------------------- loops


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is taken to be in [0, 1] already."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _num_classes(model: nn.Module, dataset: Dataset) -> int:
    n = getattr(getattr(model, "module", model), "num_classes", None) or getattr(dataset, "num_classes", None)
    if n is None:
        raise ValueError("cutmix needs num_classes: give the model or the dataset a num_classes attribute")
    return int(n)


def _autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


# --------------------------------------------------------------------------- soft labels (RDED)

SOFT_LABEL_TEMPERATURE = 20.0  # RDED's temperature with CutMix (ImageNet-1K protocol)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) · T², batch mean (the KD / RDED loss).

    The T² keeps the gradient's size independent of T: for large T the loss tends to
    Σ_c (Δ_c − mean Δ)² / (2C) with Δ = student − teacher logits, a logit-matching loss.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def train_classifier(model: nn.Module, dataset: Dataset, settings: TrainSettings, *,
                     device: str | torch.device = "cpu", sampler: Sampler | None = None,
                     eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int = 0,
                     on_epoch: Callable[[dict], None] | None = None, progress: bool = False,
                     teacher: nn.Module | None = None, temperature: float = SOFT_LABEL_TEMPERATURE,
                     checkpoint_every: int = 0, on_checkpoint: Callable[[dict], None] | None = None,
                     resume: dict | None = None) -> list[dict]:
    """Train `model` in place; return one record per epoch: epoch, train_loss, lr, and the
    `eval_fn(model)` metrics every `eval_every` epochs and after the last (when eval_fn is given).

    Every `checkpoint_every` epochs (before the last) `on_checkpoint(state)` gets what, beside the
    model's weights, a resumed run needs to continue as if never stopped: the epochs done, the
    optimizer, both generators and the history. `resume` is such a state, with the weights already
    loaded into `model` by the caller; training then continues at the next epoch, with the same bytes.

    With a `teacher` this is the soft-label protocol (RDED): every augmented, CutMix'ed batch is
    labelled by the frozen teacher and the loss is `soft_label_loss`; the set's labels are unused.

    `sampler` (e.g. a DistributedSampler) replaces the seeded shuffle and gets `set_epoch`.
    """
    settings.validate()
    if teacher is not None and not temperature > 0:
        raise UserError("eval.temperature", f"must be > 0, got {temperature}", "use e.g. 20")
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = torch.device(device)
    model.to(device)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(device).eval()
    shuffle_gen = torch.Generator().manual_seed(settings.seed)
    aug_gen = torch.Generator().manual_seed(settings.seed + 1_000_003)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=shuffle_gen, pin_memory=device.type == "cuda", **loader_options(settings.loader_workers))
    num_classes = _num_classes(model, dataset) if settings.cutmix > 0 else 0
    opt = make_optimizer(model, settings)
    history: list[dict] = []
    start = 0
    if resume is not None:
        start, history = int(resume["epoch"]), list(resume["history"])
        opt.load_state_dict(resume["optimizer"])
        shuffle_gen.set_state(resume["rng"]["shuffle"])
        aug_gen.set_state(resume["rng"]["augment"])
    bar = progress_bar(range(start, settings.epochs), desc="train", disable=not progress, leave=False,
               initial=start, total=settings.epochs)
    for epoch in bar:
        lr = lr_at(settings, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        total, count = torch.zeros((), device=device), 0
        for x, y in loader:
            x = _to_unit(x.to(device, non_blocking=True))
            y = y.to(device, non_blocking=True)
            x = augment_batch(x, settings.augment, aug_gen)
            target = y
            if settings.cutmix > 0:
                x, target = cutmix_batch(x, y, num_classes, settings.cutmix, generator=aug_gen)
            with _autocast(device, settings.amp):
                logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits.float(), target)
            else:  # the mixed image is what the teacher labels; CutMix's targets are unused
                with torch.no_grad(), _autocast(device, settings.amp):
                    teacher_logits = teacher(x).float()
                if logits.shape != teacher_logits.shape:
                    raise ValueError(f"student logits {tuple(logits.shape)} and teacher logits "
                                     f"{tuple(teacher_logits.shape)} differ: the teacher must score the same classes")
                loss = soft_label_loss(logits, teacher_logits, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
            count += len(y)
        record = {"epoch": epoch + 1, "train_loss": float(total) / count, "lr": lr}
        if eval_fn is not None and ((eval_every > 0 and (epoch + 1) % eval_every == 0) or epoch + 1 == settings.epochs):
            record.update(eval_fn(model))
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if on_epoch is not None:
            on_epoch(record)
        if on_checkpoint is not None and checkpoint_every > 0 and (epoch + 1) % checkpoint_every == 0 \
                and epoch + 1 < settings.epochs:
            on_checkpoint({"epoch": epoch + 1, "optimizer": opt.state_dict(), "history": list(history),
                           "rng": {"shuffle": shuffle_gen.get_state(), "augment": aug_gen.get_state()}})
    bar.close()
    if teacher is not None:
        teacher.train(teacher_was_training)
    return history


def train_soft_label(student: nn.Module, teacher: nn.Module, dataset: Dataset, settings: TrainSettings, *,
                     temperature: float = SOFT_LABEL_TEMPERATURE, **kwargs) -> list[dict]:
    """`train_classifier` with the soft-label protocol: the frozen `teacher` labels every batch."""
    return train_classifier(student, dataset, settings, teacher=teacher, temperature=temperature, **kwargs)


def loader_options(workers: int) -> dict:
    """DataLoader options for `workers` decoding processes with a bounded prefetch (2 batches each).
    Not persistent: every epoch's iterator draws its base seed from the shuffle generator, as the
    in-process loader does, so the shuffle (and the run) is the same for any number of workers."""
    if workers <= 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "prefetch_factor": 2}


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                      device: str | torch.device = "cpu", loader_workers: int = 0) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy over `dataset` (no augmentation)."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    correct, loss_sum, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_options(loader_workers)):
        x = _to_unit(x.to(device))
        y = y.to(device)
        with _autocast(device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return float(correct) / count, float(loss_sum) / count


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (float32, on CPU) for N×C×H×W images, uint8 in [0, 255] or float in [0, 1]."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = _to_unit(images[i:i + batch_size].to(device))
        with _autocast(device):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
