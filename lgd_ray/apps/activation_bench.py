"""`lgd-ray bench --memory`: activation bytes of one guided step, and what VAE checkpointing buys.

Counted on any device (core/activation_bytes.py: bytes saved for the backward do not depend on the device), so a
CPU run sizes GPU batches; the max batch on an 80 GB H100 is derived from those counts, not measured.
The recompute overhead of checkpointing is timed (a ratio, so CPU timing is indicative only).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..core.activation_bytes import StepMemory, step_memory
from ..core.batching import max_batch
from ..core.generator import create_generator
from ..core.sampler import SampleSettings, guided_step
from ..core.students import build_student
from ..engine.store import OutputDir

GIB = 2**30
H100_FREE_BYTES = 79 * GIB  # an 80 GB H100 as torch.cuda.mem_get_info reports it free after the CUDA context
# Decision rule for sampler checkpointing of the VAE decoder: on when it cuts the step's per-image
# bytes by more than this factor at less than this much extra decoder compute.
MIN_MEMORY_FACTOR, MAX_DECODER_OVERHEAD = 2.0, 0.35


@dataclass
class MemorySpec:
    arch: str = "dit-micro-vae"
    num_classes: int = 10  # of the generator
    image_size: int = 16  # generator images (latent models: the decoded size)
    channels: int = 3
    student: str = "convnet2-w8"  # jobs: convnet6 (θ_i and θ*)
    student_size: int = 16  # jobs: 224
    student_classes: int = 10
    cfg_scale: float = 4.0
    k: int = 3
    batches: tuple[int, int] = (1, 2)
    timing_batch: int = 1
    repeats: int = 2  # timed decoder runs per setting, after one warm-up


def jobs_spec(arch: str) -> MemorySpec:
    """What the ImageNet-subset jobs run: 1000-class latent DiT, ConvNet-6 at 224 px, CFG 4."""
    return MemorySpec(arch=arch, num_classes=1000, image_size=256, student="convnet6", student_size=224)


def _models(spec: MemorySpec):
    gen = create_generator(spec.arch, spec.num_classes, spec.image_size, spec.channels)
    gen.set_scheduler("ddim", 50)
    nets = [build_student(spec.student, spec.student_classes, spec.student_size, 3 if gen.vae else spec.channels,
                          seed=i).eval().requires_grad_(False) for i in (1, 2)]
    return gen, nets[0], nets[1]


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def checkpointing_overhead(gen, student, reference, s: SampleSettings, batch: int, repeats: int) -> dict:
    """Extra time of the decoder's forward+backward with checkpointing, and its share of a guided step.

    Off and on alternate (best of `repeats` each, after a warm-up of both) so that load from other
    processes hits both alike; the whole step is timed once, without checkpointing, as the denominator.
    """
    z = torch.randn(batch, *gen.latent_shape)
    labels = torch.zeros(batch, dtype=torch.long)

    def decoder():
        with torch.enable_grad():
            zz = z.clone().requires_grad_(True)
            torch.autograd.grad(gen.decode(zz).sum(), zz)

    best = {False: float("inf"), True: float("inf")}
    for i in range(repeats + 1):
        for on in (False, True):
            gen.set_vae_checkpointing(on)
            t = _seconds(decoder)
            best[on] = min(best[on], t) if i > 0 else best[on]  # round 0 is the warm-up
    step = replace(s, vae_checkpointing=False)
    t_step = _seconds(lambda: guided_step(gen, z, gen.scheduler.timesteps[0], labels, labels, step, student, reference))
    extra = best[True] - best[False]
    return {"decoder_s_without": best[False], "decoder_s_with": best[True], "decoder_overhead": extra / best[False],
            "step_s_without": t_step, "step_overhead": extra / t_step, "timing_batch": batch}


def _figures(m: StepMemory, k: int, recompute_per_image: int = 0) -> dict:
    """Per-image bytes at the backward's peak: what the forward kept, plus (checkpointing) the largest
    block the backward rematerialises while everything else is still held."""
    params = sum(m.parameters.values())
    per_image, fixed = m.total("per_image") + recompute_per_image, m.total("fixed")
    return {"parameters": m.parameters, "fixed": m.by_component("fixed"), "per_image": m.by_component("per_image"),
            "per_image_detail": m.per_image, "recompute_per_image": recompute_per_image,
            "per_image_total": per_image, "fixed_total": fixed,
            "h100_80gb_derived_max_batch": max_batch(H100_FREE_BYTES - params, fixed, per_image, k, cap=10**6)}


def run_memory_bench(spec: MemorySpec, out: str | None = None) -> dict:
    torch.manual_seed(0)
    gen, student, reference = _models(spec)
    report: dict = {"spec": asdict(spec), "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": {}}
    for dtype in ("fp32", "bf16"):
        s = SampleSettings(num_steps=50, cfg_scale=spec.cfg_scale, lam=0.1, k=spec.k, window=(0, 49),
                           student_size=spec.student_size, autocast=dtype == "bf16")
        t = time.perf_counter()
        plain = step_memory(gen, student, reference, s, spec.batches, vae_checkpointing=False)
        report["runs"][dtype] = {**_figures(plain, spec.k), "seconds": time.perf_counter() - t}
        if gen.vae is not None:
            t = time.perf_counter()
            ckpt = step_memory(gen, student, reference, s, spec.batches, vae_checkpointing=True)
            blocks = [v for label, v in plain.per_image.items() if label.startswith(("vae_decoder/mid", "vae_decoder/up"))]
            report["runs"][f"{dtype}_vae_ckpt"] = {**_figures(ckpt, spec.k, max(blocks)),
                                                   "seconds": time.perf_counter() - t}
    if gen.vae is not None:
        s = SampleSettings(num_steps=50, cfg_scale=spec.cfg_scale, lam=0.1, student_size=spec.student_size)
        timing = checkpointing_overhead(gen, student, reference, s, spec.timing_batch, spec.repeats)
        report["vae_checkpointing"] = {**timing, **decide(report["runs"], timing)}
    if out:
        d = OutputDir(out)
        d.write_text("memory.json", json.dumps(report, indent=1))
        d.write_text("memory.md", format_memory(report))
    return report


def decide(runs: dict, timing: dict) -> dict:
    """The rule for `generator.vae_checkpointing`, applied to the measured figures (bf16: what GPUs run)."""
    factor = runs["bf16"]["per_image_total"] / runs["bf16_vae_ckpt"]["per_image_total"]
    decoder_bytes = (runs["bf16"]["per_image"]["vae_decoder"],
                     runs["bf16_vae_ckpt"]["per_image"]["vae_decoder"] + runs["bf16_vae_ckpt"]["recompute_per_image"])
    return {"memory_factor": factor, "decoder_memory_factor": decoder_bytes[0] / decoder_bytes[1],
            "pays": factor > MIN_MEMORY_FACTOR and timing["decoder_overhead"] < MAX_DECODER_OVERHEAD,
            "rule": f"on if per-image bytes drop > {MIN_MEMORY_FACTOR}x "
                    f"at < {MAX_DECODER_OVERHEAD:.0%} more decoder time"}


def _mib(v: float) -> str:
    return f"{v / 2**20:,.1f}"


def format_memory(r: dict) -> str:
    """Markdown: one row per dtype × checkpointing; MiB per image and fixed, by component."""
    comps = sorted({c for run in r["runs"].values() for c in run["per_image"]})
    lines = [f"Guided step of `{r['spec']['arch']}` (CFG {r['spec']['cfg_scale']}, student {r['spec']['student']} "
             f"at {r['spec']['student_size']} px): bytes saved for the backward, counted at batches "
             f"{tuple(r['spec']['batches'])} on {r['threads']} CPU thread(s), torch {r['torch']}.", "",
             "| run | " + " | ".join(f"{c} MiB/img" for c in comps) + " | recomputed in backward MiB/img | "
             "total MiB/img | fixed MiB | derived max batch, 80 GB H100 |", "|---" * (len(comps) + 5) + "|"]
    for name, run in r["runs"].items():
        cells = [_mib(run["per_image"].get(c, 0)) for c in comps] + [_mib(run["recompute_per_image"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mib(run['per_image_total'])} | "
                     f"{_mib(run['fixed_total'])} | {run['h100_80gb_derived_max_batch']} |")
    params = next(iter(r["runs"].values()))["parameters"]
    lines += ["", "Parameters (MiB, fp32 as stored): " + ", ".join(f"{k} {_mib(v)}" for k, v in params.items())]
    v = r.get("vae_checkpointing")
    if v:
        lines += ["", f"VAE decoder checkpointing: per-image bytes of the step / {v['memory_factor']:.2f} "
                      f"(decoder's own / {v['decoder_memory_factor']:.1f}); decoder forward+backward "
                      f"{v['decoder_s_without']:.2f} s -> {v['decoder_s_with']:.2f} s (+{v['decoder_overhead']:.0%}), "
                      f"+{v['step_overhead']:.0%} of a whole guided step ({v['step_s_without']:.2f} s) "
                      f"at batch {v['timing_batch']}, fp32 on CPU. "
                      f"Rule ({v['rule']}): {'on' if v['pays'] else 'off'}."]
    return "\n".join(lines) + "\n"
