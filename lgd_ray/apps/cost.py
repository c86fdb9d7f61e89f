"""`lgd-ray plan`: GPU-hours and wall time of a distillation run before it is paid for.

The model is the pipeline's own structure, multiplied out per stage:
- sampling: slots × κ × (unguided steps + guided steps × guided/unguided cost ratio) × seconds per
  image-step; guided steps are the window's, and only where λ > 0 (stage 0 is unguided, κ = 1);
- training θ_i on D_i = I_0 ∪ … ∪ I_i: student epochs × |D_i| ÷ training images/s per GPU;
- wall time on N GPUs: sampling chunks go to ⌊N / gpus_per_sampler⌋ actors in rounds (chunks are
  the unit of work, so a stage never takes less than one chunk), then Ray Train runs on
  `ray.train_workers` GPUs (DDP, assumed to scale linearly), plus a fixed start-up per sampling stage and per training run.
The figures come from a `lgd-ray bench --out DIR` run (bench.json), from a measured distill
(`--from-run`), or from the stated assumptions below with the guided/unguided step ratio counted in
FLOPs (flops.json of `lgd-ray bench --flops`: the shipped one, or `--flops FILE`); the plan prints
which, because every number downstream is only as good as they are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.config import Config
from ..core.data import resolve_classes
from ..core.errors import UserError
from ..core.evaluate import epochs_for_ipc
from ..core.work import chunk, stage_ipc, stage_items

REFERENCE_RESOLUTION = 224  # training throughputs below are per GPU at this side length
IMAGENET_TRAIN_PER_CLASS = 1281  # ImageNet-1K: 1,281,167 training images / 1000 classes


@dataclass(frozen=True)
class Figures:
    """Per-GPU costs; `with_cfg` says whether `image_step_s` already pays for CFG's second forward."""

    image_step_s: float  # one unguided denoising step of one image (batched), seconds
    guided_ratio: float  # guided step / unguided step (forward with grad, one backward, decode, S)
    with_cfg: bool
    train_images_per_s: dict[str, float]  # by student family at 224 px, per GPU, bf16
    stage_overhead_s: float  # per stage: sampler actors start, load the generator, receive θ
    train_overhead_s: float  # per training run: Ray Train starts its workers, loads the set, validates
    source: str
    # the same ratio for distill.grad_space=x0 (no denoiser backward), where it was counted; else None
    x0_guided_ratio: float | None = None


# Assumptions for DiT-XL/2 (256 px, 32×32×4 latents) on one H100 SXM in bf16, stated so they can be
# checked and replaced by `lgd-ray bench --arch dit-xl-2-256 --out DIR` on the real GPU:
# - an unguided step with CFG 4.0 (two DiT forwards) costs 0.8 ms per image. DiT's paper puts a forward
#   at 118.6 "GFLOPs", which are multiply-accumulates: counted, the step is 0.47 TFLOP (flops.json), so
#   0.8 ms means ~590 TFLOP/s sustained, ~60% of dense bf16 peak;
# - a guided step costs the counted FLOP ratio times that (COUNTED_FLOPS, written by `lgd-ray bench
#   --arch dit-xl-2-256 --flops --out lgd_ray/assets/flops`): the denoiser's backward to x_t (both CFG
#   halves), the VAE decoder forward + backward at 256 px, θ_i and θ* at 224 px: 2.24 TFLOP against
#   0.47, 4.7×. That takes a guided step to run at the unguided step's FLOP/s; a GPU bench measures the
#   time ratio instead. (The former 7.5× set 1.7 TFLOP against 0.24, a multiply-accumulate count);
# - student training with instance norm at 224 px: ConvNet-6 4000 img/s, ResNet-18 / ResNetAP-10
#   3000 img/s per GPU (data in memory, augmentation on the GPU as train.py does it);
# - 90 s per stage for sampler actors to start and load the 2.7 GB generator and the VAE, and 30 s per
#   training run for Ray Train to start its workers, read the set and validate.
COUNTED_FLOPS = Path(__file__).resolve().parent.parent / "assets" / "flops" / "flops.json"


def counted_ratio(path: str | Path, field: str = "--flops") -> tuple[float, str]:
    """(guided/unguided FLOPs per image-step, a line naming what was counted) from a flops.json
    (`lgd-ray bench --flops --out DIR`; a DIR is accepted too)."""
    p = Path(path)
    if p.is_dir():
        p = p / "flops.json"
    if not p.is_file():
        raise UserError(field, f"{p} not found", "give the flops.json written by `lgd-ray bench --flops --out DIR`")
    try:
        report = json.loads(p.read_text())
        ratio, spec = float(report["guided_over_unguided"]), report["spec"]
        what = f"{spec['arch']}, CFG {float(spec['cfg_scale']):g}"
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(field, f"{p} is not a flops report ({type(e).__name__}: {e})",
                        "rerun `lgd-ray bench --flops --out DIR` and pass DIR/flops.json") from None
    if not ratio > 0:
        raise UserError(field, f"{p} has a non-positive guided/unguided ratio", "rerun the bench")
    shown = str(COUNTED_FLOPS.relative_to(COUNTED_FLOPS.parents[3])) if p.resolve() == COUNTED_FLOPS else str(p)
    return ratio, f"guided/unguided step counted in FLOPs ({shown}: {what})"


_ASSUMED_TIMES = Figures(  # the guided/unguided ratio is the counted one, set by figures_from_flops
    image_step_s=0.8e-3, guided_ratio=float("nan"), with_cfg=True,
    train_images_per_s={"convnet": 4000.0, "resnet18": 3000.0, "resnetap10": 3000.0},
    stage_overhead_s=90.0, train_overhead_s=30.0, source="assumed: DiT-XL/2 on one H100, bf16 (see lgd_ray/apps/cost.py)",
)


def figures_from_flops(path: str | Path) -> Figures:
    """The assumed figures with the guided/unguided step ratios counted in a flops.json."""
    ratio, what = counted_ratio(path)
    p = Path(path) / "flops.json" if Path(path).is_dir() else Path(path)
    report = json.loads(p.read_text())
    x0 = report.get("rows", {}).get("lgd_x0")
    x0_ratio = x0["step_total"] / sum(report["unguided_step"].values()) if x0 else None
    return replace(_ASSUMED_TIMES, guided_ratio=ratio, x0_guided_ratio=x0_ratio, source=f"{_ASSUMED_TIMES.source}; {what}")


ASSUMED_H100_DIT_XL = figures_from_flops(COUNTED_FLOPS)


def figures_from_bench(path: str | Path, base: Figures = ASSUMED_H100_DIT_XL) -> Figures:
    """Step figures from a bench.json (`lgd-ray bench --out DIR`; a DIR is accepted too); the
    training throughputs and start-up stay `base`'s, since the bench does not measure them."""
    p = Path(path)
    if p.is_dir():
        p = p / "bench.json"
    if not p.is_file():
        raise UserError("--bench", f"{p} not found", "give the bench.json written by `lgd-ray bench --out DIR`")
    try:
        report = json.loads(p.read_text())
        step, spec = report["step"], report.get("spec", {})
        image_step_s = float(step["unguided_step_s"]) / int(step["batch"])
        ratio = float(step["guided_over_unguided"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError("--bench", f"{p} is not a bench report ({type(e).__name__}: {e})",
                        "rerun `lgd-ray bench --out DIR` and pass DIR/bench.json") from None
    if not (image_step_s > 0 and ratio > 0):
        raise UserError("--bench", f"{p} has non-positive step times", "rerun the bench")
    with_cfg = float(spec.get("cfg_scale", 1.0)) != 1.0  # the bench samples without CFG unless it says so
    source = f"bench {p} ({report.get('device', '?')}, {spec.get('arch', '?')}); training and start-up assumed"
    return replace(base, image_step_s=image_step_s, guided_ratio=ratio, with_cfg=with_cfg, source=source)


def train_throughput(arch: str, image_size: int, figures: Figures, field: str = "student.arch") -> float:
    """Images/s per GPU for `arch` at `image_size` (cost taken to grow with the pixel count)."""
    family = "convnet" if arch.startswith("convnet") else arch
    if family not in figures.train_images_per_s:
        raise UserError(field, f"no training throughput for {arch!r}",
                        f"use one of {', '.join(figures.train_images_per_s)}")
    return figures.train_images_per_s[family] * (REFERENCE_RESOLUTION / image_size) ** 2


@dataclass
class StagePlan:
    stage: int
    slots: int  # images kept (work items)
    candidates: int  # κ per slot (1 at stage 0)
    guided_steps: int  # per candidate (before pruning, with distill.prune_at)
    unguided_steps: int
    chunks: int
    chunk_slots: int  # slots in the largest chunk
    sample_gpu_s: float
    train_images: int  # |D_stage| that θ_stage trains on after sampling; 0 after the last stage
    train_gpu_s: float
    # image-steps per slot, all candidates (κ × steps; fewer when candidates are pruned partway)
    guided_image_steps: float = 0.0
    unguided_image_steps: float = 0.0


@dataclass
class RunPlan:
    num_classes: int
    ipc: int
    stages: list[StagePlan]
    figures: Figures
    cfg_factor: float
    train_workers: int
    train_gpus: float  # GPUs Ray Train holds while θ_i trains
    gpus_per_sampler: float
    reference_gpu_s: float  # training θ* on the real set (size from real_train_images)
    real_images: int
    reference_in_run: bool  # no reference.path: the run trains θ* first; else the train-reference job does
    eval_gpu_s_per_seed: float
    guided_ratio: float = 0.0  # the guided/unguided step ratio this config samples at (x̂0 space has its own)

    @property
    def sample_gpu_s(self) -> float:
        return sum(s.sample_gpu_s for s in self.stages)

    @property
    def train_gpu_s(self) -> float:
        return sum(s.train_gpu_s for s in self.stages)

    def sampling_wall_s(self, s: StagePlan, gpus: int) -> float:
        """Rounds of whole chunks on ⌊gpus / gpus_per_sampler⌋ actors (a shared GPU runs each slower)."""
        if not s.slots or not s.sample_gpu_s:
            return 0.0
        g = self.gpus_per_sampler
        actors = max(1, math.floor(gpus / g + 1e-9))
        chunk_s = s.sample_gpu_s * s.chunk_slots / s.slots / min(g, 1.0)
        return math.ceil(s.chunks / actors) * chunk_s

    def training_wall_s(self, s: StagePlan) -> float:
        return s.train_gpu_s / self.train_workers  # DDP taken to scale linearly

    def stage_wall_s(self, s: StagePlan, gpus: int) -> float:
        train = self.figures.train_overhead_s + self.training_wall_s(s) if s.train_images else 0.0
        return self.figures.stage_overhead_s + self.sampling_wall_s(s, gpus) + train

    def reference_wall_s(self) -> float:
        """θ* trained inside the run (no reference.path), before stage 0; 0 when it is given."""
        if not self.reference_in_run:
            return 0.0
        return self.figures.train_overhead_s + self.reference_gpu_s / self.train_workers

    def wall_s(self, gpus: int) -> float:
        return self.reference_wall_s() + sum(self.stage_wall_s(s, gpus) for s in self.stages)

    @property
    def busy_gpu_s(self) -> float:
        return self.sample_gpu_s + self.train_gpu_s + (self.reference_gpu_s if self.reference_in_run else 0.0)

    def check_gpus(self, gpus: int) -> None:
        """The run must fit: Ray Train waits forever for GPUs the cluster does not have."""
        if gpus < 1:
            raise UserError("--gpus", f"must be >= 1, got {gpus}", "give the cluster's GPU count, e.g. --gpus 8")
        if gpus < self.train_gpus:
            raise UserError("--gpus", f"{gpus} GPUs cannot hold ray.train_workers x ray.gpus_per_train_worker = "
                            f"{self.train_gpus:g}", "give more GPUs or lower ray.train_workers")


def num_classes_of(cfg: Config) -> int:
    """Class count from the config alone (presets or lists); the data root is never touched."""
    if cfg.data.classes is None:
        if cfg.data.name == "digits":
            return 10
        raise UserError("data.classes", "the plan needs the class list", "set data.classes to a preset or a list")
    return len(resolve_classes(cfg.data.classes))


def real_train_images(cfg: Config, num_classes: int) -> int:
    """Size of the real training split θ* learns from: exact for the digits, else ImageNet's average."""
    if cfg.data.name == "digits":
        from ..core.data import load_source

        return len(load_source("digits", None, cfg.data.train_split, cfg.data.classes, None))
    return IMAGENET_TRAIN_PER_CLASS * num_classes


def make_plan(cfg: Config, figures: Figures = ASSUMED_H100_DIT_XL) -> RunPlan:
    """Per-stage GPU-seconds of the run `cfg` describes (wall time is asked per GPU count)."""
    d, g = cfg.distill, cfg.generator
    c = num_classes_of(cfg)
    uses_cfg = g.cfg_scale != 1.0
    cfg_factor = 1.0 if uses_cfg == figures.with_cfg else (2.0 if uses_cfg else 0.5)
    window_steps = d.window[1] - d.window[0] + 1
    step_s = figures.image_step_s * cfg_factor
    # x̂0-space guidance skips the denoiser's backward: its own counted ratio, where the figures have one
    ratio = figures.x0_guided_ratio if d.grad_space == "x0" and figures.x0_guided_ratio else figures.guided_ratio
    train_rate = train_throughput(cfg.student.arch, cfg.data.image_size, figures)
    stages, kept = [], 0
    for stage in range(d.stages + 1):
        ipc = stage_ipc(stage, d.ipc_seed, d.ipc_per_stage)
        chunks = chunk(stage_items(stage, c, ipc), d.chunk_size)
        slots = c * ipc
        k = d.k if stage > 0 else 1
        guided = window_steps if stage > 0 and d.lam > 0 else 0
        unguided = g.num_steps - guided
        g_steps, u_steps = k * guided, k * unguided
        if stage > 0 and d.prune_at >= 0 and d.prune_keep < k:  # κ to the pruning step, then prune_keep
            win = [guided > 0 and d.window[0] <= i <= d.window[1] for i in range(g.num_steps)]
            gb, ga = sum(win[d.prune_at:]), sum(win[:d.prune_at])
            guided, unguided = gb, g.num_steps - d.prune_at - gb
            g_steps = k * gb + d.prune_keep * ga
            u_steps = k * unguided + d.prune_keep * (d.prune_at - ga)
        g_steps *= 1 + (d.time_travel if stage > 0 and d.lam > 0 else 0)  # each repeat is one more guided step
        sample = 0.0 if stage == 0 and d.seed_source else slots * (u_steps + g_steps * ratio) * step_s
        kept += slots
        train_images = kept if stage < d.stages else 0
        stages.append(StagePlan(stage, slots, k, guided, unguided, len(chunks), max(len(ch) for ch in chunks),
                                sample, train_images, cfg.student.epochs * train_images / train_rate, g_steps, u_steps))
    real = real_train_images(cfg, c)
    reference = cfg.reference.epochs * real / train_throughput(cfg.reference.arch, cfg.data.image_size, figures,
                                                                "reference.arch")
    ipc_total = kept // c
    eval_epochs = cfg.eval.epochs or epochs_for_ipc(ipc_total)
    eval_gpu_s = eval_epochs * kept / train_throughput(cfg.eval.arch, cfg.data.image_size, figures, "eval.arch")
    r = cfg.ray
    # A CPU config (0 GPUs per worker) is planned as if each worker had one GPU.
    return RunPlan(c, ipc_total, stages, figures, cfg_factor, r.train_workers,
                   train_gpus=r.train_workers * (r.gpus_per_train_worker or 1.0),
                   gpus_per_sampler=r.gpus_per_sampler or 1.0, reference_gpu_s=reference, real_images=real,
                   reference_in_run=not cfg.reference.path, eval_gpu_s_per_seed=eval_gpu_s, guided_ratio=ratio)


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _wall(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def format_plan(plan: RunPlan, gpus: list[int], name: str = "") -> str:
    """The per-stage table, totals and the assumptions, as printed by `lgd-ray plan`."""
    s0 = plan.stages[0]
    guided = next((s for s in plan.stages if s.guided_steps), None)
    per_stage = plan.stages[-1].slots // plan.num_classes if len(plan.stages) > 1 else 0
    head = (f"plan{' for ' + name if name else ''}: {plan.num_classes} classes, IPC {plan.ipc} = "
            f"{s0.slots // plan.num_classes} + {len(plan.stages) - 1} × {per_stage}, "
            f"{s0.unguided_steps} steps, {guided.guided_steps if guided else 0} guided, "
            f"κ = {guided.candidates if guided else 1}")
    f = plan.figures
    lines = [head,
             f"figures: {f.source}",
             (f"  {f.image_step_s * 1e3:.2f} ms per image-step ({'with' if f.with_cfg else 'without'} CFG; "
              f"×{plan.cfg_factor:g} for this config), guided step {f.guided_ratio:.1f}× unguided"
              + (f" ({plan.guided_ratio:.1f}× with ∇ w.r.t. x̂0, this config's)" if plan.guided_ratio
                 and plan.guided_ratio != f.guided_ratio else "")
              + f", start-up {f.stage_overhead_s:.0f} s per sampling stage, {f.train_overhead_s:.0f} s per training run"),
             "  training img/s per GPU at 224 px: " + ", ".join(f"{k} {v:.0f}" for k, v in f.train_images_per_s.items()),
             ""]
    cols = ["stage", "images", "κ", "chunks", "sample GPU-h", "train on", "train GPU-h"] + [f"wall @{n}" for n in gpus]
    rows = []
    if plan.reference_in_run:
        rows.append(["θ*", "-", "-", "-", "-", str(plan.real_images), _h(plan.reference_gpu_s)]
                    + [_wall(plan.reference_wall_s()) for _ in gpus])
    for s in plan.stages:
        rows.append([str(s.stage), str(s.slots), str(s.candidates), str(s.chunks), _h(s.sample_gpu_s),
                     str(s.train_images) if s.train_images else "-", _h(s.train_gpu_s) if s.train_images else "-"]
                    + [_wall(plan.stage_wall_s(s, n)) for n in gpus])
    rows.append(["total", str(sum(s.slots for s in plan.stages)), "", str(sum(s.chunks for s in plan.stages)),
                 _h(plan.sample_gpu_s), "", _h(plan.busy_gpu_s - plan.sample_gpu_s)] + [_wall(plan.wall_s(n)) for n in gpus])
    rows.append(["GPU-h billed", "", "", "", "", "", ""] + [f"{plan.wall_s(n) * n / 3600:.0f}" for n in gpus])
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    fmt = lambda r: "  ".join(v.rjust(w) for v, w in zip(r, widths))
    lines += [fmt(cols), fmt(["-" * w for w in widths]), *map(fmt, rows), ""]
    lines.append(f"busy GPU-hours {_h(plan.busy_gpu_s)}; billed = wall × N: sampling runs ⌊N / {plan.gpus_per_sampler:g}⌋ "
                 f"actors, training {plan.train_workers} Ray Train worker(s) while the other GPUs wait")
    if not plan.reference_in_run:
        lines.append(f"reference θ* (the train-reference job, not above): {_h(plan.reference_gpu_s)} GPU-h for "
                     f"~{plan.real_images} real images, compute only: JPEG decoding may bound it")
    lines.append(f"evaluation (not above): {_h(plan.eval_gpu_s_per_seed)} GPU-h per seed of eval training "
                 f"(the soft-label protocol adds a teacher forward per batch, ~+1/3)")
    return "\n".join(lines)


# ------------------------------------------------------------------ calibration from a measured run


def _run_records(run: str) -> tuple[Config, list[dict]]:
    from ..engine.run import load_run_config
    from ..engine.store import OutputDir

    out = OutputDir(run)
    if not out.exists("config.json"):
        raise UserError("--from-run", f"{run} is not a distill output (no config.json)", "give the --out folder of a distill")
    cfg = load_run_config(run)
    lines = out.read_bytes("metrics.jsonl").decode().splitlines() if out.exists("metrics.jsonl") else []
    return cfg, [json.loads(x) for x in lines if x.strip()]


def _rounds(chunks: int, cfg: Config) -> int:
    actors = max(1, math.floor(cfg.ray.samplers + 1e-9))
    return math.ceil(chunks / actors)


def figures_from_run(run: str, base: Figures = ASSUMED_H100_DIT_XL) -> Figures:
    """Figures fitted to a measured distill (its metrics.jsonl), by inverting the plan's own model:
    stage 0 (unguided, κ = 1) gives the image-step time, the guided stages the guided/unguided ratio,
    the students' training loops the images/s (scaled to 224 px), and what is left of each stage's
    wall time the start-ups: sampler actors (start, load, receive θ) and Ray Train (start, read, validate)."""
    cfg, recs = _run_records(run)
    plan = make_plan(cfg, base)
    samples = {r["stage"]: r for r in recs if r.get("event") == "sample" and r.get("chunks")}
    trains = [r for r in recs if r.get("event") in ("student", "reference") and r.get("loop_s")]
    if 0 not in samples or not any(s > 0 for s in samples) or not trains:
        raise UserError("--from-run", f"{run} has no timings of an unguided stage 0, a guided stage and a training",
                        "calibrate on a distill with λ > 0, at least one stage, run by this version")
    g = min(cfg.ray.gpus_per_sampler or 1.0, 1.0)

    def chunk_s(r: dict) -> float:  # one round of chunks, the plan's unit of sampling time
        return (r["wall_s"] - r["setup_s"]) / _rounds(r["chunks"], cfg) * g

    s0 = plan.stages[0]
    step_s = chunk_s(samples[0]) / (s0.chunk_slots * s0.unguided_steps)
    ratios = []
    for st in plan.stages[1:]:
        if st.stage in samples and st.guided_steps:
            per_image_steps = chunk_s(samples[st.stage]) / (st.chunk_slots * st.candidates * step_s)
            ratios.append((per_image_steps - st.unguided_steps) / st.guided_steps)
    if not ratios:
        raise UserError("--from-run", f"{run} has no guided stage timings", "calibrate on a distill with λ > 0")
    fitted: dict[str, list[float]] = {}
    for r in trains:  # per GPU (or CPU worker), scaled to the plan's 224 px
        arch = (cfg.student if r["event"] == "student" else cfg.reference).arch
        per_worker = r["epochs"] * r["train_images"] / r["loop_s"] / cfg.ray.train_workers
        fitted.setdefault("convnet" if arch.startswith("convnet") else arch, []).append(
            per_worker * (cfg.data.image_size / REFERENCE_RESOLUTION) ** 2)
    rates = {**base.train_images_per_s, **{f: sum(v) / len(v) for f, v in fitted.items()}}
    setup = [r["setup_s"] for r in samples.values()]
    train_setup = [r["wall_s"] - r["loop_s"] for r in trains if "wall_s" in r] or [base.train_overhead_s]
    device = "GPU" if cfg.ray.gpus_per_sampler > 0 else "CPU"
    return Figures(image_step_s=step_s, guided_ratio=sum(ratios) / len(ratios), with_cfg=cfg.generator.cfg_scale != 1.0,
                   train_images_per_s=rates, stage_overhead_s=sum(setup) / len(setup),
                   train_overhead_s=sum(train_setup) / len(train_setup),
                   source=f"fitted to the measured run {run} ({device}, {cfg.ray.samplers} sampler actor(s))")


def compare_with_run(plan: RunPlan, run: str) -> tuple[str, float]:
    """The plan against a measured run of the same config, per stage and in total; returns (table,
    relative error of the total wall time). The run's sampler count is the 'GPU' count."""
    cfg, recs = _run_records(run)
    gpus = max(1, math.floor(cfg.ray.samplers * (cfg.ray.gpus_per_sampler or 1.0) + 1e-9))
    samples = {r["stage"]: r["wall_s"] for r in recs if r.get("event") == "sample"}
    trains = {r["stage"]: r["wall_s"] for r in recs if r.get("event") == "student" and "wall_s" in r}
    ref = next((r["wall_s"] for r in recs if r.get("event") == "reference" and "wall_s" in r), None)
    if len(samples) != len(plan.stages):
        raise UserError("--compare", f"{run} has sampling timings for {len(samples)} of {len(plan.stages)} stages",
                        "compare with a run that sampled every stage in one go (not resumed)")
    rows = [["stage", "predicted s", "measured s", "error"]]
    pred_total = meas_total = 0.0
    if plan.reference_in_run and ref is not None:
        p, m = plan.reference_wall_s(), ref
        rows.append(["θ*", f"{p:.1f}", f"{m:.1f}", f"{(p - m) / m:+.0%}"])
        pred_total, meas_total = pred_total + p, meas_total + m
    for s in plan.stages:
        p = plan.stage_wall_s(s, gpus)
        m = samples[s.stage] + trains.get(s.stage, 0.0)
        rows.append([str(s.stage), f"{p:.1f}", f"{m:.1f}", f"{(p - m) / m:+.0%}"])
        pred_total, meas_total = pred_total + p, meas_total + m
    err = (pred_total - meas_total) / meas_total
    rows.append(["total", f"{pred_total:.1f}", f"{meas_total:.1f}", f"{err:+.0%}"])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)
    return f"plan vs the measured run {run} ({gpus} sampler actor(s)):\n{table}", err


def plan_line(cfg: Config, run) -> str:
    """The run's size in one line, stated before sampling starts: images × κ × steps = image-steps, from
    the same per-stage plan as `lgd-ray plan`, which prints GPU-hours and wall time."""
    import copy

    from ..core.students import list_students

    c = copy.deepcopy(cfg)
    c.data.classes = list(run.class_ids)  # the resolved classes: a folder's own list needs no data.classes
    # only the sampling counts are read: any training figure will do, for every student family
    rates = {name: 1.0 for name in ("convnet", *list_students())}
    plan = make_plan(c, replace(ASSUMED_H100_DIT_XL, train_images_per_s=rates))
    sampled = [s for s in plan.stages if s.sample_gpu_s > 0]  # a seed_source's stage 0 is copied, not sampled
    images = sum(s.slots for s in plan.stages)
    image_steps = round(sum(s.slots * (s.unguided_image_steps + s.guided_image_steps) for s in sampled))
    guided = round(sum(s.slots * s.guided_image_steps for s in sampled))
    seed, rest = plan.stages[0], plan.stages[1:]
    seed_sampled = seed.sample_gpu_s > 0
    terms = [f"{seed.slots:,} seed images"] if seed_sampled else []
    if rest:
        terms.append(f"{len(rest)} stage{'s' if len(rest) > 1 else ''} × {rest[0].slots:,} images × "
                     f"{rest[0].candidates:,} candidates")
    expr = f"({' + '.join(terms)})" if len(terms) > 1 else terms[0] if terms else "0 images"
    copied = f", {seed.slots:,} seed images copied from distill.seed_source" if not seed_sampled else ""
    cfg_passes = "; CFG: 2 denoiser passes each" if cfg.generator.cfg_scale != 1.0 else ""
    return (f"plan: {expr} × {cfg.generator.num_steps} steps = {image_steps:,} image-steps ({guided:,} guided"
            f"{cfg_passes}) for {images:,} images{copied}, in {sum(s.chunks for s in sampled):,} chunks over "
            f"{cfg.ray.samplers} samplers; `lgd-ray plan` gives the GPU-hours")
