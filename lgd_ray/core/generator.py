"""The class-conditional diffusion generator: any diffusers denoiser, an optional VAE, a scheduler.

One directory layout for everything, the diffusers pipeline layout that `facebook/DiT-XL-2-256` uses:
`transformer/` (DiT) or `unet/`, optional `vae/`, `scheduler/`, plus an optional `lgd_ray.json`
with what diffusers does not save (class ids, provenance). Conventions, fixed here once:
- The null class for classifier-free guidance is index `num_classes` (DiT's 1000).
- A denoiser with twice the input channels predicts a learned variance (DiT's learned sigma); the
  ε half is guided, the σ half (DiT's v) goes to the scheduler untouched when it uses it.
- The sampling convention (`generator.convention`): `dit` samples as DiT, IGD and Minimax do, with
  DDPM's learned-range variance from v and CFG on ε channels :3 only (DiT's `forward_with_cfg`);
  `diffusers` takes the variance from the model's scheduler config and applies CFG to every ε
  channel. `auto`: `dit` for a DiT whose σ half was trained, `diffusers` for everything else.
- Pixel-space models work on images in [-1, 1]; latent models decode `z / latent_scale` (0.18215).
- `clip_sample` is always off: clipping x̂0 inside the scheduler removes the guidance term from x̂0
  while ε keeps it, which flips the net effect of guidance (see FINDINGS in the docs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    DDPMScheduler,
    DiTTransformer2DModel,
    UNet2DModel,
)

from .errors import UserError

META_FILE = "lgd_ray.json"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets"
CONVENTIONS = ("auto", "dit", "diffusers")  # generator.convention (config.py validates the same names)
# DiT's forward_with_cfg guides ε channels :3 of its 4 latent channels "for exact reproducibility" of
# its paper; channel 3 and the σ half come from the conditional pass.
DIT_CFG_CHANNELS = 3
# The sampler of `generator.scheduler: auto` for a generator whose folder names none (hub models, and
# folders written before lgd_ray.json named one: the shipped digits model, whose tables were made with it)
DEFAULT_SAMPLER = "ddim"


@dataclass
class GeneratorInfo:
    """What the engine needs to know about a generator beyond its weights."""

    num_classes: int
    class_ids: list[str]  # generator class index -> class id (e.g. a WordNet id)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: data hash, training config

    @property
    def sigma_trained(self) -> bool:
        """False for a model trained by this project: train_generator.py fits only the ε half (MSE),
        so its σ channels are untrained outputs, never a variance to sample with."""
        return "train" not in self.extra


def named_sampler(info: GeneratorInfo) -> str:
    """The sampler a generator folder names for itself (lgd_ray.json "sampler"), the one its samples
    were judged with; `lgd-ray train-generator` names ddpm (core/train_generator.py says why)."""
    return str(info.extra.get("sampler", DEFAULT_SAMPLER))


class Generator:
    """ε prediction with CFG, x̂0, one scheduler step and decoding, for any denoiser + optional VAE."""

    def __init__(self, denoiser: torch.nn.Module, scheduler, info: GeneratorInfo, vae: AutoencoderKL | None = None,
                 convention: str = "auto"):
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.scheduler = scheduler
        self.info = info
        cfg = denoiser.config
        self.in_channels = int(cfg.in_channels)
        self.learned_sigma = int(getattr(cfg, "out_channels", None) or self.in_channels) == 2 * self.in_channels
        self.sample_size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        self.latent_scale = float(vae.config.scaling_factor) if vae is not None else 1.0
        # the model's own DDPM variance (a DDIM config has none: DDPM's default), for `diffusers`
        self._own_variance = str(scheduler.config.get("variance_type") or "fixed_small")
        self.guidance_vae: AutoencoderTiny | None = None  # decodes x̂0 inside guided steps only (set_guidance_decoder)
        self.set_convention(convention)

    # --- shapes and classes -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def null_class(self) -> int:
        return self.info.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.sample_size, self.sample_size)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.out_channels) if self.vae is not None else self.in_channels

    @property
    def image_size(self) -> int:
        if self.vae is None:
            return self.sample_size
        return self.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device: str | torch.device) -> "Generator":
        self.denoiser.to(device)
        for vae in (self.vae, self.guidance_vae):
            if vae is not None:
                vae.to(device)
        return self

    # --- the math ----------------------------------------------------------------------------
    def set_convention(self, convention: str) -> None:
        """Choose how DDPM's variance and CFG are formed (module docstring); `auto` resolves here.

        Sets `convention` (`dit` or `diffusers`) and `cfg_channels` (the leading ε channels CFG
        combines), and rebuilds a DDPM scheduler with the convention's variance, same timesteps.
        """
        if convention not in CONVENTIONS:
            raise UserError("generator.convention", f"unknown convention {convention!r}",
                            f"choose one of: {', '.join(CONVENTIONS)}")
        if convention == "auto":
            dit = isinstance(self.denoiser, DiTTransformer2DModel) and self.learned_sigma and self.info.sigma_trained
            convention = "dit" if dit else "diffusers"
        if convention == "dit" and not self.learned_sigma:
            raise UserError("generator.convention", "dit needs a denoiser that predicts a learned variance "
                            f"({2 * self.in_channels} output channels, this one has {self.in_channels})",
                            "use generator.convention=diffusers (or auto)")
        self.convention = convention
        # a DiT of fewer than 3 channels (the pixel-space test models) guides all of its ε channels
        self.cfg_channels = min(DIT_CFG_CHANNELS, self.in_channels) if convention == "dit" else self.in_channels
        if isinstance(self.scheduler, DDPMScheduler) and self.scheduler.config.variance_type != self._variance():
            steps = self.scheduler.num_inference_steps
            self.scheduler = DDPMScheduler.from_config(self.scheduler.config, variance_type=self._variance())
            if steps:
                self.scheduler.set_timesteps(steps)

    def _variance(self) -> str:
        """DDPM's variance_type under this convention: DiT's learned range, or the model's own."""
        return "learned_range" if self.convention == "dit" else self._own_variance

    def set_scheduler(self, kind: str, num_steps: int) -> None:
        """Swap in DDIM or DDPM (from the model's own scheduler config) with `num_steps` steps; `auto`:
        the one the generator's folder names (`named_sampler`)."""
        cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[named_sampler(self.info) if kind == "auto" else kind]
        # DDIM (η = 0) adds no noise: its variance is never used, so only DDPM takes the convention's
        extra = {"variance_type": self._variance()} if cls is DDPMScheduler else {}
        self.scheduler = cls.from_config(self.scheduler.config, clip_sample=False, **extra)
        self.scheduler.set_timesteps(num_steps)

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor, cfg_scale: float = 1.0) -> torch.Tensor:
        """Raw denoiser output with CFG on ε channels :cfg_channels; the rest (σ too) is conditional.

        As DiT's `forward_with_cfg` does when `cfg_channels` is 3: the other channels are taken from
        the conditional pass, not combined.
        """
        n = x_t.shape[0]
        t_batch = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(n if cfg_scale == 1.0 else 2 * n)
        if cfg_scale == 1.0:
            return self._forward(x_t, t_batch, y)
        null = torch.full_like(y, self.null_class)
        out = self._forward(torch.cat([x_t, x_t]), t_batch, torch.cat([y, null]))
        cond, uncond = out[:n], out[n:]
        k = self.cfg_channels
        eps = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([eps, cond[:, k:]], dim=1)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x, t, class_labels=y, return_dict=False)[0]
        return out.float()

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε, σ part or None)."""
        c = self.in_channels
        return (out[:, :c], out[:, c:]) if self.learned_sigma else (out, None)

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[int(t)].float()

    def alpha_bar_after(self, step: int) -> torch.Tensor:
        """ᾱ of the timestep that sampling step `step` (a position in scheduler.timesteps, 0 = noisiest)
        lands on: the next timestep's, and after the last one the scheduler's final ᾱ (DDIM's
        final_alpha_cumprod; 1 for DDPM)."""
        timesteps = self.scheduler.timesteps
        if step + 1 < len(timesteps):
            return self.alpha_bar(timesteps[step + 1])
        final = getattr(self.scheduler, "final_alpha_cumprod", None)
        return torch.as_tensor(1.0 if final is None else final).float()

    def x0(self, x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Clean-sample prediction x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t (ε-parameterisation)."""
        ab = self.alpha_bar(t).to(x_t.device)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def eps_of(self, x_t: torch.Tensor, t: int | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The ε whose x̂0 is `x0`: ε = (x_t − √ᾱ_t x̂0) / √(1−ᾱ_t), the inverse of `x0`."""
        ab = self.alpha_bar(t).to(x_t.device)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def step(self, eps: torch.Tensor, sigma: torch.Tensor | None, t: int | torch.Tensor, x_t: torch.Tensor,
             generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """One scheduler step; DDPM noise comes from the per-sample generators (seed rule).

        Under learned range the σ half (v, unguided) sets the variance and the guided ε the mean:
        log σ_t² = (v+1)/2 · log β_t + (1 − (v+1)/2) · log β̃_t, as DiT's p_mean_variance.
        """
        out = eps
        ddpm = isinstance(self.scheduler, DDPMScheduler)
        # only DDPM reads σ; a DDIM built from a DDPM config still carries its variance_type key
        if ddpm and sigma is not None and self.scheduler.config.variance_type in ("learned", "learned_range"):
            out = torch.cat([eps, sigma], dim=1)
        kwargs = {"generator": generators} if ddpm else {}
        return self.scheduler.step(out, t, x_t, return_dict=False, **kwargs)[0]

    def set_vae_checkpointing(self, on: bool) -> None:
        """Recompute the VAE decoder's blocks in the backward instead of keeping their activations.

        diffusers' Decoder checks `torch.is_grad_enabled() and self.gradient_checkpointing` (not
        `self.training`), so it acts in eval mode inside the guided step and nowhere else; the
        encoder's flag is set too but the sampler never runs the encoder with autograd.
        """
        if self.vae is None or self.vae.is_gradient_checkpointing == on:
            return
        if on:
            self.vae.enable_gradient_checkpointing()
        else:
            self.vae.disable_gradient_checkpointing()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels in [-1, 1]) -> images in [0, 1], differentiable."""
        x = self.vae.decode(z / self.latent_scale, return_dict=False)[0] if self.vae is not None else z
        return ((x.float() + 1) / 2).clamp(0, 1)

    def set_guidance_decoder(self, vae: AutoencoderTiny | None) -> None:
        """A small decoder (TAESD's layout) for the x̂0 that guidance differentiates through; the
        stored images are still decoded by the full VAE. Latent models of the same latent channels only."""
        if vae is not None and (self.vae is None or int(vae.config.latent_channels) != self.in_channels):
            what = "a pixel-space model (no VAE to replace)" if self.vae is None else \
                f"{self.in_channels} latent channels, the decoder takes {vae.config.latent_channels}"
            raise UserError("generator.guidance_decoder", f"does not fit this generator: {what}",
                            "leave generator.guidance_decoder unset, or give a decoder of this model's latents")
        self.guidance_vae = vae.eval().requires_grad_(False).to(self.device) if vae is not None else None

    def decode_for_guidance(self, z: torch.Tensor) -> torch.Tensor:
        """Like `decode`, through the guidance decoder when one is set. A diffusers AutoencoderTiny takes
        the diffusion-space latents over its own scaling factor (1.0 for TAESD) and returns [-1, 1]."""
        if self.guidance_vae is None:
            return self.decode(z)
        x = self.guidance_vae.decode(z / float(self.guidance_vae.config.scaling_factor), return_dict=False)[0]
        return ((x.float() + 1) / 2).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> latents (pixel models: [-1, 1]); for training the tiny generators."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.sample() * self.latent_scale

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        sub = "transformer" if isinstance(self.denoiser, DiTTransformer2DModel) else "unet"
        self.denoiser.save_pretrained(path / sub)
        self.scheduler.save_pretrained(path / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(path / "vae")
        meta = {"num_classes": self.info.num_classes, "class_ids": self.info.class_ids, **self.info.extra}
        (path / META_FILE).write_text(json.dumps(meta, indent=1))


def _resolve_root(path: str) -> Path:
    if path.startswith("builtin:"):
        root = BUILTIN_DIR / path.split(":", 1)[1]
        if not root.is_dir():
            raise UserError("generator.path", f"no built-in generator {path!r}",
                            "run `lgd-ray train-generator --out DIR` and set generator.path=DIR")
        return root
    root = _local_or_hub(path, "generator.path")
    if root is None:
        raise UserError("generator.path", f"{path!r} is not a generator directory",
                        "give a diffusers directory (transformer/ or unet/, scheduler/) or a hub id")
    return root


def _local_or_hub(path: str, field: str) -> Path | None:
    """A local folder, or a hub id's snapshot (the local cache when offline, a download where the
    network allows); None for a path that is neither a folder nor shaped like an `owner/name` id."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path))
    except Exception as e:  # noqa: BLE001 -- every failure means the same thing to the user
        raise UserError(field, f"cannot load hub id {path!r} ({type(e).__name__})",
                        "download it where there is network (`hf download ID`) or give a local directory") from None


def _denoiser_class_count(root: Path, path: str) -> tuple[str, int]:
    for sub, key, offset in (("transformer", "num_embeds_ada_norm", 0), ("unet", "num_class_embeds", 1)):
        cfg_file = root / sub / "config.json"
        if cfg_file.is_file():
            n = json.loads(cfg_file.read_text()).get(key)
            if n is None:
                raise UserError("generator.path", f"{path} holds an unconditional model", "use a class-conditional model")
            return sub, int(n) - offset  # a UNet's last class embedding is the null class
    raise UserError("generator.path", f"{path} has neither transformer/ nor unet/", "give a diffusers directory in pipeline layout")


def read_generator_info(path: str) -> GeneratorInfo:
    """Classes and provenance without loading weights (the driver needs no 2.7 GB DiT)."""
    root = _resolve_root(path)
    _, default_classes = _denoiser_class_count(root, path)
    meta = json.loads((root / META_FILE).read_text()) if (root / META_FILE).is_file() else {}
    num_classes = int(meta.pop("num_classes", default_classes))
    class_ids = meta.pop("class_ids", None)
    if class_ids is None:
        if num_classes == 1000:  # ImageNet models: class index = position among the sorted wnids
            from .classes import imagenet_wnids

            class_ids = imagenet_wnids()
        else:
            class_ids = [str(i) for i in range(num_classes)]
    return GeneratorInfo(num_classes, list(class_ids), meta)


def is_latent(path: str) -> bool:
    """Whether the generator at `path` works in a VAE's latents (it has a `vae/` folder)."""
    return (_resolve_root(path) / "vae").is_dir()


def load_generator(path: str, *, device: str | torch.device = "cpu", convention: str = "auto") -> Generator:
    """Load from `builtin:NAME`, a local directory in pipeline layout, or a hub id (`convention`: see above)."""
    root = _resolve_root(path)
    sub, _ = _denoiser_class_count(root, path)
    quiet = {"low_cpu_mem_usage": False}  # the default wants `accelerate`, and warns without it
    denoiser = (DiTTransformer2DModel if sub == "transformer" else UNet2DModel).from_pretrained(root / sub, **quiet)
    vae = AutoencoderKL.from_pretrained(root / "vae", **quiet) if (root / "vae").is_dir() else None
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler") if (root / "scheduler").is_dir() else DDPMScheduler()
    gen = Generator(denoiser, scheduler, read_generator_info(path), vae, convention=convention)
    return gen.to(device)


def _decoder_root(path: str) -> Path:
    """A guidance decoder's folder: a local one, or a hub id's snapshot (the local cache when offline)."""
    p = _local_or_hub(path, "generator.guidance_decoder")
    if p is None or not (p / "config.json").is_file():
        raise UserError("generator.guidance_decoder", f"{path!r} is not an AutoencoderTiny folder",
                        "give a folder with config.json and the weights (e.g. a download of madebyollin/taesd)")
    name = json.loads((p / "config.json").read_text()).get("_class_name")
    if name != "AutoencoderTiny":
        raise UserError("generator.guidance_decoder", f"{path!r} holds a {name}, not an AutoencoderTiny",
                        "give a folder written by AutoencoderTiny.save_pretrained (TAESD's layout)")
    return p


def load_guidance_decoder(path: str) -> AutoencoderTiny:
    """A diffusers AutoencoderTiny from a local folder (config.json + weights) or a hub id such as
    madebyollin/taesd."""
    return AutoencoderTiny.from_pretrained(_decoder_root(path), low_cpu_mem_usage=False)


def check_guidance_decoder(generator_path: str, decoder_path: str) -> None:
    """The driver's check, from the config files alone (no weights): the folder is an AutoencoderTiny's
    and its latents are the generator's. A UserError on generator.guidance_decoder."""
    dec = json.loads((_decoder_root(decoder_path) / "config.json").read_text())
    vae_cfg = _resolve_root(generator_path) / "vae" / "config.json"
    if not vae_cfg.is_file():
        raise UserError("generator.guidance_decoder", f"{generator_path} is a pixel-space model (no vae/ to replace)",
                        "leave generator.guidance_decoder unset for it")
    latents = int(json.loads(vae_cfg.read_text()).get("latent_channels", 4))
    if int(dec.get("latent_channels", 4)) != latents:
        raise UserError("generator.guidance_decoder", f"takes {dec.get('latent_channels', 4)} latent channels, "
                        f"the generator's VAE makes {latents}", "give a decoder of this model's latents")


def tiny_guidance_decoder(latent_channels: int = 4, channels: int = 3, width: int = 8, seed: int = 0,
                          upsamplings: int = 1) -> AutoencoderTiny:
    """An AutoencoderTiny with random weights (seeded): TAESD's layout at width 64 and 3 upsamplings
    (`taesd_layout`), smaller for the tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks = upsamplings + 1
        return AutoencoderTiny(in_channels=channels, out_channels=channels, latent_channels=latent_channels,
                               encoder_block_out_channels=(width,) * blocks, decoder_block_out_channels=(width,) * blocks,
                               num_encoder_blocks=(1,) + (1,) * upsamplings, num_decoder_blocks=(1,) * upsamplings + (1,))


def taesd_layout(seed: int = 0) -> AutoencoderTiny:
    """madebyollin/taesd's architecture (diffusers' AutoencoderTiny defaults), random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny()


# --- a registry of architectures (random weights): tests, training the tiny ones, and the bench ---
def _dit(num_classes: int, image_size: int, channels: int, layers: int, heads: int, head_dim: int,
         patch: int = 2, learned_sigma: bool = False) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=2 * channels if learned_sigma else channels, num_layers=layers,
        sample_size=image_size, patch_size=patch, num_embeds_ada_norm=num_classes,
        norm_num_groups=1,
    )


def _unet(num_classes: int, image_size: int, channels: int, widths: tuple[int, ...]) -> UNet2DModel:
    n = len(widths)
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        layers_per_block=1, down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), norm_num_groups=8,
        num_class_embeds=num_classes + 1,  # + the null class for classifier-free guidance
    )


def _tiny_vae(channels: int = 3) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16,
    )


def _sd_vae() -> AutoencoderKL:
    """The architecture of stabilityai/sd-vae-ft-mse (DiT's VAE), random weights."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=256, scaling_factor=0.18215,
    )


ARCHITECTURES: dict[str, Any] = {
    # name: (denoiser factory(num_classes, image_size, channels), vae factory or None)
    "unet-tiny": (lambda n, s, c: _unet(n, s, c, (32, 64)), None),
    "unet-micro": (lambda n, s, c: _unet(n, s, c, (8, 16)), None),
    "dit-tiny": (lambda n, s, c: _dit(n, s, c, layers=4, heads=4, head_dim=32), None),
    "dit-micro": (lambda n, s, c: _dit(n, s, c, layers=1, heads=2, head_dim=8, learned_sigma=True), None),
    "dit-micro-vae": (lambda n, s, c: _dit(n, s // 2, 4, layers=1, heads=2, head_dim=8, learned_sigma=True), _tiny_vae),
    "dit-xl-2-256": (lambda n, s, c: _dit(n, 32, 4, layers=28, heads=16, head_dim=72, learned_sigma=True), _sd_vae),
    "dit-b-2-256": (lambda n, s, c: _dit(n, 32, 4, layers=12, heads=12, head_dim=64, learned_sigma=True), _sd_vae),
}


def create_generator(arch: str, num_classes: int, image_size: int = 8, channels: int = 1,
                     class_ids: list[str] | None = None, seed: int = 0, convention: str = "auto") -> Generator:
    """A generator with random weights (seeded), e.g. `create_generator("unet-tiny", 10, 8, 1)`."""
    if arch not in ARCHITECTURES:
        raise UserError("generator.arch", f"unknown architecture {arch!r}", f"choose one of: {', '.join(ARCHITECTURES)}")
    make_denoiser, make_vae = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        denoiser = make_denoiser(num_classes, image_size, channels)
        vae = make_vae() if make_vae is not None else None
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    ids = class_ids or [str(i) for i in range(num_classes)]
    return Generator(denoiser, scheduler, GeneratorInfo(num_classes, ids, {"arch": arch}), vae, convention=convention)
