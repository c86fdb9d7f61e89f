"""Train a small class-conditional diffusion model from scratch (the demo's generator, or one for a user's folder).

Standard DDPM ε-prediction MSE with 10% label dropout to the null class, so the same model serves
classifier-free guidance. Latent models (with a VAE) train in the VAE's latent space.

Two parts of the field's recipe (DDPM, ADM, DiT) that a from-scratch model on a user's folder needs:
- the saved weights are an exponential moving average of the trained ones (`ema`), what those
  papers sample from (README "A generator for your folder" measures it against the last iterate);
- natural images are flipped left-right at random (`flip`); digits and text must not be.

The folder names its sampler, DDPM (lgd_ray.json "sampler", what `generator.scheduler: auto` samples
with): sampled by DDIM (η = 0) a quarter of such a model's photo samples end in a field of coloured
noise its deterministic path never removes, and DDPM's fresh noise at each step leaves none (README
"The sampler of a small generator").
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .data import ImageSet
from .errors import UserError
from .generator import Generator, create_generator
from .progress import progress_bar

TRAINED_SAMPLER = "ddpm"  # the sampler a trained folder names (module docstring)


@dataclass
class GeneratorTrainSettings:
    arch: str = "unet-tiny"
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    label_dropout: float = 0.1
    ema: float = 0.999  # decay of the saved EMA weights; 0 saves the last iterate
    flip: bool = False  # random left-right flips (natural images only)
    max_minutes: float | None = None  # stop early at a wall-clock budget (CPU laptops)
    seed: int = 0

    def validate(self) -> None:
        """One line on the first bad field (before a Ray task starts, whose errors would not be one line)."""
        if self.steps < 3:
            raise UserError("train-generator --steps", f"must be >= 3, got {self.steps}", "train for more steps")
        if not 0.0 <= self.ema < 1.0:
            raise UserError("train-generator --ema", f"must be in [0, 1), got {self.ema}",
                            "give e.g. --ema 0.999, or 0 for none")


def train_generator(data: ImageSet, s: GeneratorTrainSettings, *, device: str = "cpu", progress: bool = True,
                    extra_meta: dict | None = None, last_iterate_path: str | None = None,
                    on_step: Callable[[int], None] | None = None) -> Generator:
    """The trained generator (its EMA weights when `s.ema` > 0). `last_iterate_path`: also save the last
    iterate there, as DiT's checkpoints keep both, so one run measures what the EMA adds. `on_step(n)`:
    called after each of the n steps done (a Ray task reports its progress to the driver with it)."""
    s.validate()
    gen = create_generator(s.arch, data.num_classes, data.image_size, data.in_channels,
                           class_ids=list(data.class_ids), seed=s.seed).to(device)
    model = gen.denoiser.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False) if s.ema > 0 else None
    # 5% warm-up, but at least two steps (OneCycle divides by the warm-up length)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=max(0.05, 2 / s.steps))
    g = torch.Generator().manual_seed(s.seed)
    images = data.images.float().div(255).to(device)
    labels = data.labels.to(device)
    ab = gen.scheduler.alphas_cumprod.to(device)
    steps = range(s.steps)
    bar = None
    if progress:

        steps = bar = progress_bar(steps, desc="train-generator", unit="step")
    start, done = time.time(), 0
    for step in steps:
        idx = torch.randint(0, len(images), (s.batch_size,), generator=g).to(device)
        batch = images[idx]
        if s.flip:
            flip = torch.rand(s.batch_size, generator=g).to(device) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        with torch.no_grad():
            x0 = gen.encode(batch)
        y = labels[idx].clone()
        drop = torch.rand(s.batch_size, generator=g).to(device) < s.label_dropout
        y[drop] = gen.null_class
        t = torch.randint(0, len(ab), (s.batch_size,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = model(x_t, t, class_labels=y, return_dict=False)[0]
        eps, _ = gen.split(out)
        loss = F.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            update_ema(ema, model, min(s.ema, (1 + step) / (10 + step)))
        done = step + 1
        if on_step is not None:
            on_step(done)
        if bar is not None and step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if s.max_minutes is not None and time.time() - start > 60 * s.max_minutes:
            break
    if bar is not None:
        bar.close()
    gen.denoiser.eval().requires_grad_(False)
    gen.info.extra.update({"sampler": TRAINED_SAMPLER,
                           "train": {**asdict(s), "steps_done": done, "seconds": round(time.time() - start, 3)},
                           **(extra_meta or {})})
    if last_iterate_path is not None:  # saved before the EMA weights take the denoiser's place
        gen.info.extra["train"]["saved"] = "last iterate"
        gen.save_pretrained(last_iterate_path)
        del gen.info.extra["train"]["saved"]
    if ema is not None:
        gen.denoiser = ema.eval()
    return gen


def flips_by_default(data_name: str) -> bool:
    """Whether training flips left-right unless told: an image folder holds natural images (flipped, as
    the field's generators are); the digits must not be mirrored."""
    return data_name != "digits"


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameters and float buffers alike. The caller warms the decay
    up as (1 + n)/(10 + n) so the first steps are not pinned to the random initial weights."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)
