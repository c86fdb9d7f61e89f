"""`lgd-ray bench --flops`: counted FLOPs of one denoising step and of one kept image, per component.

Counted, not modelled: `torch.utils.flop_counter.FlopCounterMode` runs around the project's own code
path (`sampler.denoise` for one step, `sampler.guided_step`, `Generator.decode`, `sampler.score_images`),
one image, and its module tracker splits the count by the model each op ran in: the denoiser (both CFG
halves), the VAE decoder (`post_quant_conv` + `decoder`), the students θ_i and θ*. "other" is what ran
outside every model; the split adds up to the total by construction. Forward and backward are told
apart by counting the same step once more with `guided_step(backward=False)`.

Conventions: 2 FLOPs per multiply-accumulate (FlopCounterMode's; DiT's paper quotes DiT-XL/2 at
118.6 "Gflops", which are multiply-accumulates); matmuls, convolutions and attention count,
elementwise ops (norms, activations, the resize, the scheduler) count zero. FLOPs depend on shapes
only, not on the device or dtype, so a CPU run gives a GPU's figures. The models are frozen: the
backward of a linear or conv layer computes the input gradient only, one forward's worth (it would
be two with weight gradients, as IGD's surrogate has).

Rows (`VARIANTS`; a later option, such as a smaller guidance decoder, is one more function there):
- `unguided`: DiT's own sampler: every step is a no-grad CFG forward; one decode per image.
- `lgd`: this project: window steps run `guided_step` (denoiser forward with grad, decoder, resize,
  θ_i and θ*, one backward to x_t), the others are unguided; κ candidates per kept image, each decoded
  and scored once at the end (`sample_items`).
- `igd`: IGD's guidance (ICLR 2025) as a counted harness (`igd_guided_step`; IGD's sampler is not part
  of this project): autograd through the DiT and the decoder, then for each of 4 surrogate checkpoints
  (ConvNet-6 at the generator's 256 px, weights as leaves) the gradient of the training loss w.r.t. the
  weights with `create_graph`, its cosine to the precomputed real-data gradient, and a backward of
  that cosine to x_t: a double backward through the surrogate plus its own pass back through the decoder
  and the DiT. 16 of 50 steps guided (`igd_guided_steps`), one image per slot, decoded once per step
  (the x̂0 of the CFG-mixed ε). Left out: the real-data gradients (once per class, not per step) and
  its deviation term; autograd left on outside the window costs IGD memory, not FLOPs.
- `lgd_x0`: `distill.grad_space=x0`, the gradient w.r.t. x̂0 with ε̂ held fixed: the denoiser runs
  without autograd, so its backward is gone.
- `lgd_prune`, `lgd_x0_prune`: `distill.prune_at`/`prune_keep`: the κ candidates run to the pruning
  step, each x̂0 there is decoded and scored once, and only the survivors finish.
- `lgd_x0_narrow`: `distill.grad_space=x0` on the 9-step window `narrow_window` ([37, 45], the noisy top
  of the jobs' [10, 45]); no pruning, so every candidate reaches the end and the gate chooses among them.
- `lgd_taesd`, `lgd_x0_taesd`: `generator.guidance_decoder`: an AutoencoderTiny (TAESD's layout)
  decodes x̂0 for the gradient; the kept images are still decoded by the full VAE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ..core.generator import Generator, create_generator
from ..core.guidance import in_window
from ..core.sampler import SampleSettings, denoise, guided_step, quantize, score_images
from ..core.students import build_student
from ..engine.store import OutputDir

COMPONENTS = ("denoiser", "decoder", "students")
PARTS = tuple(f"{c}_{d}" for c in COMPONENTS for d in ("fwd", "bwd")) + ("other",)
TERA = 1e12
aten = torch.ops.aten


def _as_counted(cuda_op):
    def formula(*args, **kwargs):  # the registry's entry takes tensors; marked raw so it is not wrapped twice
        return flop_counter.flop_registry[cuda_op](*args, **kwargs)

    formula._get_raw = True
    return formula


# CPU's fused attention kernel is missing from FlopCounterMode's registry (the CUDA kernels are in it):
# without this, attention would count zero on CPU. The formulas are those torch uses for the CUDA kernels.
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _as_counted(aten._scaled_dot_product_flash_attention),
                 aten._scaled_dot_product_flash_attention_for_cpu_backward:
                     _as_counted(aten._scaled_dot_product_flash_attention_backward)}


@dataclass
class FlopsSpec:
    arch: str = "dit-micro-vae"
    num_classes: int = 10  # of the generator; the students and IGD's surrogate classify the same classes
    image_size: int = 16  # generator images (latent models: the decoded size)
    channels: int = 3
    student: str = "convnet2-w8"  # θ_i (jobs: convnet6)
    reference: str = "convnet2-w8"  # θ* (jobs: convnet6)
    student_size: int = 16  # side the students score at (jobs: 224)
    cfg_scale: float = 4.0
    num_steps: int = 50
    window: tuple[int, int] = (10, 45)  # guided step indices, inclusive (0 = cleanest)
    k: int = 3  # candidates per kept image
    igd_surrogate: str = "convnet2-w8"  # jobs: convnet6, at the generator's image size
    igd_checkpoints: int = 4
    igd_guided_steps: int = 16
    prune_at: int = 38  # the pruned rows: at this step index each slot keeps prune_keep of its κ candidates
    prune_keep: int = 1
    # the narrow-window row: 9 guided steps at the noisy top of `window`, every candidate finishing
    narrow_window: tuple[int, int] = (37, 45)


def jobs_spec(arch: str) -> FlopsSpec:
    """The ImageNet-1K paper job (jobs/imagenet1k_ipc50.yaml; a test holds them equal): 1000 classes,
    CFG 4, 50 steps, window [10, 45], κ = 3, ConvNet-6 θ_i and θ* at 224 px."""
    return FlopsSpec(arch=arch, num_classes=1000, image_size=256, student="convnet6", reference="convnet6",
                     student_size=224, igd_surrogate="convnet6")


# ------------------------------------------------------------------ counting


def module_roles(gen: Generator, *classifiers: torch.nn.Module) -> dict[str, str]:
    """Component of each module the step calls outside any other module, under the name
    FlopCounterMode's tracker gives such a module: its class name."""
    named = [("denoiser", gen.denoiser), *(("students", m) for m in classifiers)]
    if gen.guidance_vae is not None:
        named.append(("decoder", gen.guidance_vae.decoder))
    if gen.vae is not None:
        named += [("decoder", gen.vae.decoder)]  # AutoencoderKL.decode is a method, not a module call
        if gen.vae.post_quant_conv is not None:
            named.append(("decoder", gen.vae.post_quant_conv))
    roles: dict[str, str] = {}
    for component, module in named:
        name = type(module).__name__
        if roles.setdefault(name, component) != component:
            raise ValueError(f"{component} and {roles[name]} are both {name}: the count cannot tell them apart")
    return roles


def count(fn: Callable[[], object], roles: dict[str, str]) -> dict[str, int]:
    """FLOPs of fn() by component (COMPONENTS + "other"), forward and backward together."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    counts = counter.get_flop_counts()
    out = dict.fromkeys(COMPONENTS, 0)
    for name, ops in counts.items():
        if name in roles:  # root modules only: a submodule's name has a dot and is never a role
            out[roles[name]] += sum(ops.values())
    out["other"] = counter.get_total_flops() - sum(out.values())
    if out["other"] < 0:
        raise RuntimeError(f"the module split exceeds the total ({out}): two components ran nested")
    return out


def split(forward: dict[str, int], whole: dict[str, int]) -> dict[str, int]:
    """PARTS of a step from its forward-only count and its whole count."""
    parts = {}
    for c in COMPONENTS:
        parts[f"{c}_fwd"], parts[f"{c}_bwd"] = forward[c], whole[c] - forward[c]
    parts["other"] = whole["other"]
    return parts


def forward_only(whole: dict[str, int]) -> dict[str, int]:
    return split(whole, whole)


def components(parts: dict[str, int]) -> dict[str, int]:
    """PARTS summed per component (fwd + bwd), "other" kept."""
    return {**{c: parts[f"{c}_fwd"] + parts[f"{c}_bwd"] for c in COMPONENTS}, "other": parts["other"]}


# ------------------------------------------------------------------ the models and the steps


@dataclass
class Models:
    gen: Generator
    student: torch.nn.Module
    reference: torch.nn.Module
    spec: FlopsSpec
    counted: dict = field(default_factory=dict)  # a count made once serves every row (see memo)

    def memo(self, key: tuple, fn: Callable[[], dict[str, int]]) -> dict[str, int]:
        """fn()'s count, counted once per key (and guidance decoder): the rows share steps, and a DiT-XL/2
        step takes minutes to count on a CPU."""
        key = (*key, type(self.gen.guidance_vae).__name__)
        if key not in self.counted:
            self.counted[key] = fn()
        return dict(self.counted[key])

    @property
    def roles(self) -> dict[str, str]:
        return module_roles(self.gen, self.student, self.reference)

    @property
    def device(self) -> torch.device:
        return self.gen.device

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: a latent at the noisiest timestep and its class."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, *self.gen.latent_shape, generator=g)
        return x.to(self.device), torch.zeros(1, dtype=torch.long, device=self.device)

    def settings(self, **kw) -> SampleSettings:
        s = self.spec
        return SampleSettings(**{"num_steps": s.num_steps, "cfg_scale": s.cfg_scale, "lam": 0.1, "omega": 0.5,
                                 "student_size": s.student_size, **kw})


def build_models(spec: FlopsSpec, device: str | torch.device = "cpu") -> Models:
    gen = create_generator(spec.arch, spec.num_classes, spec.image_size, spec.channels).to(device)
    gen.set_scheduler("ddpm", spec.num_steps)
    nets = [build_student(arch, spec.num_classes, spec.student_size, gen.image_channels, seed=i)
            .to(device).eval().requires_grad_(False) for i, arch in ((1, spec.student), (2, spec.reference))]
    return Models(gen, nets[0], nets[1], spec)


def one_step(m: Models, s: SampleSettings, student=None, reference=None) -> None:
    """`denoise` over one step (the noisiest timestep), then the scheduler back to its steps."""
    m.gen.scheduler.set_timesteps(1)
    try:
        _, labels = m.inputs()
        denoise(m.gen, [0], labels, labels, s, student, reference)
    finally:
        m.gen.scheduler.set_timesteps(m.spec.num_steps)


def unguided_step(m: Models) -> dict[str, int]:
    """PARTS of one step outside the window: `denoise` without autograd, both CFG halves."""
    return forward_only(count(lambda: one_step(m, m.settings(lam=0.0, window=(0, 0))), m.roles))


def lgd_step(m: Models, **levers) -> dict[str, int]:
    """PARTS of one LGD guided step: `denoise` over one guided step (guided_step inside), with the
    forward told apart by `guided_step(backward=False)` on the same input. `levers`: SampleSettings
    fields such as grad_space="x0"."""
    return m.memo(("lgd_step", *sorted(levers.items())), lambda: _lgd_step(m, levers))


def _lgd_step(m: Models, levers: dict) -> dict[str, int]:
    s = m.settings(window=(0, 0), **levers)
    whole = count(lambda: one_step(m, s, m.student, m.reference), m.roles)
    x, labels = m.inputs()
    t = m.gen.scheduler.timesteps[0]
    fwd = count(lambda: guided_step(m.gen, x * m.gen.scheduler.init_noise_sigma, t, labels, labels, s,
                                    m.student, m.reference, backward=False), m.roles)
    return split(fwd, whole)


def final_decode(m: Models) -> dict[str, int]:
    """PARTS of what each candidate costs after its last step: the decode `sample_items` stores."""
    z, _ = m.inputs()

    def counted() -> dict[str, int]:
        with torch.no_grad():
            return forward_only(count(lambda: quantize(m.gen.decode(z)), m.roles))

    return m.memo(("final_decode",), counted)


def final_score(m: Models) -> dict[str, int]:
    """PARTS of scoring a stored image with θ_i and θ* (`score_images`, as `sample_items` does)."""
    img = torch.zeros(1, m.gen.image_channels, m.gen.image_size, m.gen.image_size, dtype=torch.uint8, device=m.device)
    _, labels = m.inputs()
    return forward_only(count(lambda: score_images(img, labels, m.student, m.reference, 0.5, m.spec.student_size),
                              m.roles))


def influence(img: torch.Tensor, labels: torch.Tensor, surrogate: torch.nn.Module, weights: dict[str, torch.Tensor],
              g_real: torch.Tensor) -> torch.Tensor:
    """IGD's influence term for one checkpoint: cos(∇_w L(surrogate_w(img)), g_real), kept differentiable
    in img (the weight gradient is taken with `create_graph`, so a backward of it is a double backward)."""
    loss = F.cross_entropy(torch.func.functional_call(surrogate, weights, (img,)), labels)
    g = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    return F.cosine_similarity(torch.cat([v.flatten() for v in g]), g_real, dim=0)


def igd_guided_step(gen: Generator, x: torch.Tensor, t, labels: torch.Tensor, gen_labels: torch.Tensor,
                    cfg_scale: float, surrogate: torch.nn.Module, checkpoints: list[dict[str, torch.Tensor]],
                    real_grads: list[torch.Tensor], backward: bool = True) -> torch.Tensor | None:
    """∇_{x_t} Σ_checkpoints influence(x̂0): a counted harness of what IGD's sampler computes per guided
    step (module docstring), not a sampler. One backward to x_t per checkpoint, autograd kept between.

    `backward=False` runs the forwards only (DiT, decoder, each checkpoint's loss).
    """
    gen.set_vae_checkpointing(False)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        eps, _ = gen.split(gen.model_output(x_in, t, gen_labels, cfg_scale))
        img = gen.decode(gen.x0(x_in, t, eps))  # the surrogate sees the decoded image at full size
        if not backward:
            for weights in checkpoints:
                F.cross_entropy(torch.func.functional_call(surrogate, weights, (img,)), labels)
            return None
        grad = torch.zeros_like(x_in)
        for weights, g_real in zip(checkpoints, real_grads):
            sim = influence(img, labels, surrogate, weights, g_real)
            grad = grad + torch.autograd.grad(sim, x_in, retain_graph=True)[0]
    return grad


def igd_step(m: Models) -> dict[str, int]:
    """PARTS of one IGD guided step (`igd_guided_step`); "students" holds the surrogate checkpoints.

    The module tracker loses the surrogate's double backward (those ops run in autograd nodes that the
    first backward made, outside any module's hooks), so it lands in "other". It is moved to "students"
    after checking that it is exactly the surrogate's: the influence gradients counted on their own,
    with the decoded image as the leaf, must cost what the step's "students" + "other" cost.
    """
    s = m.spec
    size, ch = m.gen.image_size, m.gen.image_channels
    surrogate = build_student(s.igd_surrogate, s.num_classes, size, ch, seed=3).to(m.device).eval()
    checkpoints, real_grads = [], []
    for i in range(s.igd_checkpoints):  # random weights stand in for IGD's training-trajectory checkpoints
        net = build_student(s.igd_surrogate, s.num_classes, size, ch, seed=10 + i)
        checkpoints.append({k: p.detach().to(m.device).requires_grad_(True) for k, p in net.named_parameters()})
        real_grads.append(torch.randn(sum(p.numel() for p in net.parameters()),
                                      generator=torch.Generator().manual_seed(i)).to(m.device))
    x, labels = m.inputs()
    x = x * m.gen.scheduler.init_noise_sigma
    t = m.gen.scheduler.timesteps[0]
    roles = module_roles(m.gen, surrogate)

    def run(backward: bool):
        return lambda: igd_guided_step(m.gen, x, t, labels, labels, s.cfg_scale, surrogate, checkpoints, real_grads,
                                       backward=backward)

    def alone():
        leaf = torch.rand(1, ch, size, size, device=m.device, requires_grad=True)
        img = leaf * 1.0  # the tracker's hooks refuse a leaf inside autograd.grad
        for weights, g_real in zip(checkpoints, real_grads):
            torch.autograd.grad(influence(img, labels, surrogate, weights, g_real), leaf, retain_graph=True)

    fwd, whole, own = count(run(False), roles), count(run(True), roles), count(alone, roles)
    if whole["students"] + whole["other"] != own["students"] + own["other"]:
        raise RuntimeError(f"IGD step: what the tracker left unattributed ({whole['other']}) is not the surrogate's")
    whole = {**whole, "students": whole["students"] + whole["other"], "other": 0}
    return split(fwd, whole)


# ------------------------------------------------------------------ rows: a step and its kept image


@dataclass
class Row:
    name: str
    what: str
    step: dict[str, int]  # PARTS of one step of this row's own kind (guided; unguided for the baseline)
    candidates: int  # κ images sampled per kept image
    guided_steps: int  # per candidate (before the pruning step, when candidates are pruned)
    unguided_steps: int
    final: dict[str, int]  # PARTS per candidate after its last step (decode, score)
    # candidate pruning: `survivors` of the κ run `guided_after` + `unguided_after` more steps and the
    # final decode; `prune` = PARTS per candidate of scoring its x̂0 at the pruning step
    survivors: int = 0
    guided_after: int = 0
    unguided_after: int = 0
    prune: dict[str, int] | None = None


def per_kept_image(row: Row, unguided: dict[str, int]) -> dict[str, int]:
    """FLOPs per component of one kept image: κ × (guided × step + unguided × unguided step + final),
    `unguided` being the PARTS of an unguided step; pruned: κ × (the steps to the pruning step + scoring
    x̂0) + survivors × (the remaining steps + final)."""
    step, plain, final = components(row.step), components(unguided), components(row.final)
    if not row.survivors:
        return {key: row.candidates * (row.guided_steps * step[key] + row.unguided_steps * plain[key] + final[key])
                for key in step}
    prune = components(row.prune)
    return {key: row.candidates * (row.guided_steps * step[key] + row.unguided_steps * plain[key] + prune[key])
            + row.survivors * (row.guided_after * step[key] + row.unguided_after * plain[key] + final[key])
            for key in step}


def unguided_row(m: Models, base: dict[str, int]) -> Row:
    return Row("unguided", "DiT's sampler: no-grad CFG forwards, one decode", base, 1, 0, m.spec.num_steps,
               final_decode(m))


def lgd_row(m: Models, base: dict[str, int]) -> Row:
    guided = sum(in_window(i, m.spec.window) for i in range(m.spec.num_steps))  # as `denoise` decides
    decode, score = final_decode(m), final_score(m)
    final = {k: decode[k] + score[k] for k in PARTS}
    return Row("lgd", f"this project: guided_step on {guided} of {m.spec.num_steps} steps, κ = {m.spec.k}, "
               "each candidate decoded and scored", lgd_step(m), m.spec.k, guided, m.spec.num_steps - guided, final)


def lgd_x0_row(m: Models, base: dict[str, int]) -> Row:
    """distill.grad_space=x0: ∇S w.r.t. x̂0 with ε̂ held fixed, so no backward through the denoiser."""
    row = lgd_row(m, base)
    row.name, row.step = "lgd_x0", lgd_step(m, grad_space="x0")
    row.what = "distill.grad_space=x0: as lgd, ∇S w.r.t. x̂0 (ε̂ held fixed): no denoiser backward"
    return row


def lgd_x0_narrow_row(m: Models, base: dict[str, int]) -> Row:
    """distill.grad_space=x0 with distill.window=`narrow_window`: the same counted step as lgd_x0 on
    fewer steps, and all κ candidates finish, so rank selection (and its gate) chooses among final images."""
    row = lgd_x0_row(m, base)
    lo, hi = m.spec.narrow_window
    row.guided_steps = sum(in_window(i, m.spec.narrow_window) for i in range(m.spec.num_steps))
    row.unguided_steps = m.spec.num_steps - row.guided_steps
    row.name = "lgd_x0_narrow"
    row.what = (f"distill.grad_space=x0 and distill.window=[{lo}, {hi}]: {row.guided_steps} guided steps of "
                f"{m.spec.num_steps}, every candidate finishes")
    return row


def guidance_decoder_for(gen: Generator):
    """TAESD's layout (madebyollin/taesd) for a decoder of 3 upsamplings such as sd-vae-ft-mse, else a
    tiny AutoencoderTiny of as many upsamplings (random weights: FLOPs depend on shapes only)."""
    from ..core.generator import taesd_layout, tiny_guidance_decoder

    ups = len(gen.vae.config.block_out_channels) - 1
    return taesd_layout() if ups == 3 else tiny_guidance_decoder(gen.in_channels, gen.image_channels, upsamplings=ups)


def lgd_taesd_row(m: Models, base: dict[str, int]) -> Row:
    """generator.guidance_decoder: x̂0 decoded by an AutoencoderTiny inside guided steps; the stored
    images still by the full VAE (the final decode is unchanged)."""
    row = lgd_row(m, base)
    if m.gen.vae is None:
        raise ValueError("a guidance decoder needs a latent model")
    m.gen.set_guidance_decoder(guidance_decoder_for(m.gen))
    try:
        row.step = lgd_step(m)
    finally:
        m.gen.set_guidance_decoder(None)
    row.name = "lgd_taesd"
    row.what = ("generator.guidance_decoder: as lgd, x̂0 decoded for ∇S by an AutoencoderTiny (TAESD's layout at "
                "256 px), stored images by the full VAE")
    return row


def lgd_x0_taesd_row(m: Models, base: dict[str, int]) -> Row:
    row = lgd_taesd_row(m, base)
    m.gen.set_guidance_decoder(guidance_decoder_for(m.gen))
    try:
        row.step = lgd_step(m, grad_space="x0")
    finally:
        m.gen.set_guidance_decoder(None)
    row.name, row.what = "lgd_x0_taesd", "distill.grad_space=x0 and generator.guidance_decoder together"
    return row


def _pruned(m: Models, row: Row) -> Row:
    """`row` with distill.prune_at / prune_keep (the spec's): κ candidates to the pruning step, then
    prune_keep of them; scoring x̂0 there costs one decode and both students per candidate."""
    s = m.spec
    before = [i for i in range(s.num_steps) if i >= s.prune_at]  # the noisier steps run first
    after = [i for i in range(s.num_steps) if i < s.prune_at]
    g_before = sum(in_window(i, s.window) for i in before)
    g_after = sum(in_window(i, s.window) for i in after)
    decode, score = final_decode(m), final_score(m)
    prune = {k: decode[k] + score[k] for k in PARTS}  # the same ops as scoring a final image
    return Row(row.name + "_prune", row.what + f"; candidates pruned at step {s.prune_at} to {s.prune_keep} of "
               f"{s.k} (distill.prune_at={s.prune_at}, prune_keep={s.prune_keep})", row.step, row.candidates,
               g_before, len(before) - g_before, row.final, s.prune_keep, g_after, len(after) - g_after, prune)


def lgd_prune_row(m: Models, base: dict[str, int]) -> Row:
    return _pruned(m, lgd_row(m, base))


def lgd_x0_prune_row(m: Models, base: dict[str, int]) -> Row:
    return _pruned(m, lgd_x0_row(m, base))


def igd_row(m: Models, base: dict[str, int]) -> Row:
    s = m.spec
    return Row("igd", f"IGD-style harness: {s.igd_checkpoints} surrogate checkpoints ({s.igd_surrogate} at "
               f"{m.gen.image_size} px), double backward each, {s.igd_guided_steps} of {s.num_steps} steps guided",
               igd_step(m), 1, s.igd_guided_steps, s.num_steps - s.igd_guided_steps, final_decode(m))


VARIANTS: list[Callable[[Models, dict[str, int]], Row]] = [unguided_row, lgd_row, lgd_x0_row, lgd_prune_row,
                                                          lgd_x0_prune_row, lgd_x0_narrow_row, lgd_taesd_row,
                                                          lgd_x0_taesd_row, igd_row]


def run_flops_bench(spec: FlopsSpec, out: str | None = None, variants=None, device: str | None = None) -> dict:
    """Count every row of `variants` (default VARIANTS) on `device` (default: CUDA if present, else CPU:
    the counts are the same), write flops.json + flops.md into `out`."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    m = build_models(spec, device)
    base = unguided_step(m)
    rows = {}
    for make in variants or VARIANTS:
        t = time.perf_counter()
        row = make(m, base)
        kept = per_kept_image(row, base)
        rows[row.name] = {**asdict(row), "step_total": sum(row.step.values()), "per_kept_image": kept,
                          "per_kept_image_total": sum(kept.values()), "seconds": time.perf_counter() - t}
    report = {"spec": asdict(spec), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "unit": "FLOP (2 per multiply-accumulate), one image", "unguided_step": base,
              "rows": rows, "seconds": time.perf_counter() - t0}
    if "lgd" in rows:  # what `lgd-ray plan` reads: guided image-step / unguided image-step
        report["guided_over_unguided"] = rows["lgd"]["step_total"] / sum(base.values())
    if out:
        d = OutputDir(out)
        d.write_text("flops.json", json.dumps(report, indent=1))
        d.write_text("flops.md", format_flops(report))
    return report


# ------------------------------------------------------------------ the table


def _t(v: float) -> str:
    return f"{v / TERA:,.2f}" if v >= TERA / 100 or v == 0 else f"{v / TERA:.2g}"


def format_flops(r: dict) -> str:
    """Markdown: TFLOP per step by component and direction, then TFLOP per kept image by component."""
    s, rows = r["spec"], r["rows"]
    u_step = sum(r["unguided_step"].values())
    u_image = rows["unguided"]["per_kept_image_total"] if "unguided" in rows else None
    other = any(row["step"]["other"] or row["final"]["other"] for row in rows.values())
    head = [f"{c} {d}" for c in COMPONENTS for d in ("fwd", "bwd")] + (["other"] if other else [])
    keys = [k for k in PARTS if other or k != "other"]
    title = (f"Counted FLOPs of `{s['arch']}` (CFG {s['cfg_scale']:g}, {s['num_steps']} steps), students "
             f"{s['student']} / {s['reference']} at {s['student_size']} px, one image; torch {r['torch']} "
             "FlopCounterMode, 2 FLOPs per multiply-accumulate. FLOPs do not depend on the device.")
    lines = [title, "",
             "TFLOP per step:", "",
             "| step | " + " | ".join(head) + " | total | × unguided step |", "|---" * (len(head) + 3) + "|"]
    for name, row in rows.items():
        total = row["step_total"]
        lines.append(f"| {name} | " + " | ".join(_t(row["step"][k]) for k in keys)
                     + f" | {_t(total)} | {total / u_step:.2f}x |")
    comps = [*COMPONENTS, *(["other"] if other else [])]
    lines += ["", "TFLOP per kept image:", "",
              "| run | κ | guided + unguided steps | final per candidate | " + " | ".join(comps)
              + " | total | × unguided image |", "|---" * (len(comps) + 6) + "|"]
    for name, row in rows.items():
        total = row["per_kept_image_total"]
        ratio = f"{total / u_image:.1f}x" if u_image else "–"
        steps = f"{row['guided_steps']} + {row['unguided_steps']}"
        if row.get("survivors"):
            steps += f", then {row['survivors']}: {row['guided_after']} + {row['unguided_after']}"
        lines.append(f"| {name} | {row['candidates']} | {steps} | "
                     f"{_t(sum(row['final'].values()))} | " + " | ".join(_t(row["per_kept_image"][c]) for c in comps)
                     + f" | {_t(total)} | {ratio} |")
    lines += [""] + [f"- {name}: {row['what']}" for name, row in rows.items()]
    if "guided_over_unguided" in r:
        lines.append(f"- guided / unguided step (what `lgd-ray plan` uses without a GPU bench): "
                     f"{r['guided_over_unguided']:.2f}x")
    return "\n".join(lines) + "\n"

